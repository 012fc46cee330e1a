"""What a benchmark ran on: the machine (with its CPU, `flax_lstm.bench.cpu`), the library
versions and the matmul precision; `write_record` keeps them with a measuring tool's results."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from typing import Any

import jax

import flax_lstm as fl
from flax_lstm._kernel.ffi import usable_cpus
from flax_lstm.bench.cpu import cpu_info

__all__ = [
    "machine_info",
    "precision_note",
    "torch_device",
    "torch_waiter",
    "versions",
    "write_record",
]


def versions() -> dict[str, str]:
    """The versions of Python, JAX, flax_lstm and the peers ("not installed" where absent)."""
    out = {"python": platform.python_version(), "jax": jax.__version__, "flax_lstm": fl.__version__}
    for name in ("jaxlib", "flax", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def write_record(path: str | None, reps: int, results: list[dict[str, Any]]) -> None:
    """Write a measuring tool's ``results`` (tools/*.py) to the JSON file ``path``, with this
    machine, the versions and the repetitions; nothing where ``path`` is None."""
    if path is None:
        return
    record = {"machine": machine_info(), "versions": versions(), "reps": reps}
    with open(path, "w") as f:
        json.dump({**record, "results": results}, f, indent=1)
    print(f"wrote {path}")


def torch_device() -> str | None:
    """Where torch runs beside JAX, so that both compute on the same device: ``"cuda"`` on a
    JAX GPU backend when torch sees CUDA (a CUDA build of torch with ``JAX_PLATFORMS=cpu``
    stays on the CPU), ``"cpu"`` on JAX's CPU backend, else None. Needs torch installed."""
    import torch

    backend = jax.default_backend()
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu" if backend == "cpu" else None


def torch_waiter(device: str) -> Callable[[], None]:
    """What waits for torch's queued work on ``device`` (a `torch_device`) to finish, so that a
    timed call includes it: CUDA runs asynchronously, the CPU does not."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def precision_note() -> str:
    """The float32 matmul precision the libraries run at on this backend."""
    if jax.default_backend() == "gpu":
        return "float32 with TF32 allowed for every library (DESIGN.md's protocol)"
    return "full float32"


def machine_info() -> dict[str, Any]:
    """Platform, processor, CPU count (the machine's, and those this process may run on: fewer
    under ``taskset`` or a container's CPU set), JAX backend and devices, and the CPU's model,
    family, `flax_lstm.bench.cpu.ISA_FLAGS` and cache sizes (`flax_lstm.bench.cpu.cpu_info`)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": usable_cpus(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
        **cpu_info(),
    }

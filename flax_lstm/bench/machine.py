"""What a benchmark ran on: the machine (with its CPU, `flax_lstm.bench.cpu`), the library
versions and the matmul precision."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax

import flax_lstm as fl
from flax_lstm.bench.cpu import cpu_info

__all__ = ["machine_info", "precision_note", "versions"]


def versions() -> dict[str, str]:
    """The versions of Python, JAX, flax_lstm and the peers ("not installed" where absent)."""
    out = {"python": platform.python_version(), "jax": jax.__version__, "flax_lstm": fl.__version__}
    for name in ("jaxlib", "flax", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def precision_note() -> str:
    """The float32 matmul precision the libraries run at on this backend."""
    if jax.default_backend() == "gpu":
        return "float32 with TF32 allowed for every library (DESIGN.md's protocol)"
    return "full float32"


def _cpus_allowed() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count()


def machine_info() -> dict[str, Any]:
    """Platform, processor, CPU count (the machine's, and those this process may run on: fewer
    under ``taskset`` or a container's CPU set), JAX backend and devices, and the CPU's model,
    family, `flax_lstm.bench.cpu.ISA_FLAGS` and cache sizes (`flax_lstm.bench.cpu.cpu_info`)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": _cpus_allowed(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
        **cpu_info(),
    }

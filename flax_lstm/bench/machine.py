"""What a benchmark ran on: the machine, the library versions, and a large-GEMM yardstick."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

import flax_lstm as fl

__all__ = ["machine_info", "precision_note", "reference_gemm_gflops", "versions"]


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


def machine_info() -> dict[str, Any]:
    """Platform, processor, CPU count and model, JAX backend and devices."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else ""
    except OSError:
        pass
    return info


def reference_gemm_gflops(
    n: int | None = None, reps: int = 5, dtype: str = "float32"
) -> dict[str, float]:
    """Rate of one large ``n×n`` GEMM in JAX on the default device (operands in ``dtype``,
    float32 result): the yardstick for the GFLOP/s column (n defaults to 2048 on a CPU and
    8192 on an accelerator)."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    for _ in range(2):
        f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"n": float(n), "gflops": 2 * n**3 / statistics.median(times) / 1e9}

"""The yardstick of the GFLOP/s column: the best large GEMM this machine runs.

A GEMM's rate differs between libraries on the same CPU: torch's oneDNN/MKL may use AMX tiles
for bfloat16 or a better-tuned float32 kernel than XLA's. Measuring XLA alone made "percent
of peak" read high on such machines, so `best_gemm` times both, XLA's and (when torch is
installed) torch's, and the faster one is the yardstick; the JSON keeps both rates and says
which won.

Example (a small GEMM, XLA only):
  >>> from flax_lstm.bench import yardstick
  >>> ref = yardstick.best_gemm("float32", n=64, reps=1, libraries=("xla",))
  >>> ref["best"], ref["n"], ref["gflops"] == ref["gflops_by_library"]["xla"]
  ('xla', 64.0, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from flax_lstm.bench.machine import torch_device, torch_waiter

__all__ = ["GEMM_LIBRARIES", "best_gemm", "reference_gemm_gflops", "torch_gemm_gflops"]

GEMM_LIBRARIES = ("xla", "torch")


def _default_n() -> int:
    return 2048 if jax.default_backend() == "cpu" else 8192


def _median_seconds(call: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_gemm_gflops(
    n: int | None = None, reps: int = 5, dtype: str = "float32"
) -> dict[str, float]:
    """Rate of one ``n×n`` GEMM in XLA (``jnp.matmul``) on the default device, operands in
    ``dtype`` and a float32 result; ``{"n": n, "gflops": rate}``. ``n`` defaults to 2048 on a
    CPU and 8192 on an accelerator."""
    n = n or _default_n()
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    seconds = _median_seconds(lambda: f(a, a).block_until_ready(), reps)
    return {"n": float(n), "gflops": 2 * n**3 / seconds / 1e9}


def torch_gemm_gflops(n: int | None = None, reps: int = 5, dtype: str = "float32") -> float | None:
    """Rate of one ``n×n`` GEMM in torch (``torch.mm``, operands and result in ``dtype``) on the
    device JAX computes on: the CPU, or CUDA on a JAX GPU backend; None when torch is not
    installed or has no such device."""
    try:
        import torch
    except ImportError:
        return None
    device = torch_device()
    if device is None:
        return None
    sync = torch_waiter(device)
    n = n or _default_n()
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(
        device, getattr(torch, dtype)
    )

    def call() -> None:
        with torch.no_grad():
            torch.mm(a, a)
        sync()

    return 2 * n**3 / _median_seconds(call, reps) / 1e9


def best_gemm(
    dtype: str = "float32",
    n: int | None = None,
    reps: int = 5,
    libraries: Sequence[str] = GEMM_LIBRARIES,
) -> dict[str, Any]:
    """The faster ``n×n`` GEMM of ``libraries`` (XLA's and torch's by default) in ``dtype``:
    ``{"n", "gflops" (the faster rate, the yardstick), "best" (its library),
    "gflops_by_library" ({library: rate}; a library that cannot run here is left out)}``.

    XLA is timed first, so that torch's OpenMP threads, still spinning after torch's calls,
    do not take a core from it."""
    unknown = set(libraries) - set(GEMM_LIBRARIES)
    if unknown or not libraries:
        raise ValueError(
            f"libraries must be a non-empty subset of {GEMM_LIBRARIES}, got {libraries}"
        )
    n = n or _default_n()
    rates: dict[str, float] = {}
    if "xla" in libraries:
        rates["xla"] = reference_gemm_gflops(n, reps, dtype)["gflops"]
    if "torch" in libraries:
        rate = torch_gemm_gflops(n, reps, dtype)
        if rate is not None:
            rates["torch"] = rate
    if not rates:
        raise RuntimeError(f"none of {tuple(libraries)} can run a GEMM here (torch not installed?)")
    best = max(rates, key=rates.__getitem__)
    return {"n": float(n), "gflops": rates[best], "best": best, "gflops_by_library": rates}

"""What the tests of the compiled CPU kernel share, stated once: the skip mark of the tests
that need it (`needs_kernel`), and which of its calls a function runs (`kernel_calls`).

A test needs the kernel where it runs the kernel's calls or reads what they report; it skips,
with the reason, on a backend other than the CPU and where the kernel is not built here (no
compiler, or ``FLAX_LSTM_CPU_KERNEL=0``).
"""

from __future__ import annotations

import re

import jax
import pytest

from flax_lstm import kernel

ON_CPU = jax.default_backend() == "cpu"


def why_no_kernel() -> str | None:
    """Why this process cannot run the float32 CPU kernel, or None if it can."""
    if not ON_CPU:
        return f"the kernel is for the CPU backend, not {jax.default_backend()}"
    error = kernel.build_error()
    return None if error is None else f"no CPU kernel here: {error}"


_WHY = why_no_kernel()
needs_kernel = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def kernel_calls(f, *args) -> set[str]:
    """The kernel's calls that ``f(*args)`` makes, read from its jaxpr: their FFI targets less
    the ``flax_lstm_cpu_`` prefix (``"forward"``, ``"backward_bf16"``, ``"weight_grads"``, …)."""
    return set(re.findall(r"flax_lstm_cpu_(\w+)", str(jax.make_jaxpr(f)(*args))))

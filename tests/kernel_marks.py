"""The skip mark of the tests that need the compiled CPU kernel, stated once.

A test needs the kernel where it runs the kernel's calls or reads what they report; it skips,
with the reason, on a backend other than the CPU and where the kernel is not built here (no
compiler, or ``FLAX_LSTM_CPU_KERNEL=0``). Tests of the kernel's own modules mark the whole
module the same way (``pytestmark = needs_kernel``).
"""

from __future__ import annotations

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

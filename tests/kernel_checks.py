"""What the tests of the compiled CPU kernel share, stated once: the skip mark of the tests
that need it (`needs_kernel`), the same for its bfloat16 variant (`bf16_kernel`,
`require_bf16_kernel`), the flags of a test build (`cxxflags`), and which of its calls a
function runs (`kernel_calls`).

A test needs the kernel where it runs the kernel's calls or reads what they report; it skips,
with the reason, on a backend other than the CPU and where the kernel is not built here (no
compiler, or ``FLAX_LSTM_CPU_KERNEL=0``). A test of the bfloat16 kernel is marked `bf16_kernel`
and also skips where the CPU has no AVX512_BF16; there tests/test_kernel_bf16_emulated.py runs
the marked tests again, in a build whose vdpbf16ps is done in software.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
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


bf16_kernel = pytest.mark.bf16_kernel
# The flags of the test builds that do in software what the CPU may lack
# (flax_lstm/_kernel/config.h): vdpbf16ps, and the AMX tile instructions.
BF16_EMULATE = "-DFLAX_LSTM_BF16_EMULATE=1"
AMX_EMULATE = "-DFLAX_LSTM_AMX_EMULATE=1"


def require_bf16_kernel() -> None:
    """Skip the calling test (marked `bf16_kernel`) where this process has no bfloat16 kernel,
    saying why and where it runs instead."""
    if not kernel.available(jnp.bfloat16):
        pytest.skip(
            f"no bfloat16 kernel here: {kernel.build_error(jnp.bfloat16)}; "
            "tests/test_kernel_bf16_emulated.py runs it on the emulated one"
        )


def cxxflags(*flags: str) -> str:
    """``FLAX_LSTM_CXXFLAGS`` for a test build: this process's own (the emulated bfloat16
    kernel's, in the run of tests/test_kernel_bf16_emulated.py) and ``flags``."""
    return " ".join([*os.environ.get("FLAX_LSTM_CXXFLAGS", "").split(), *flags])


def kernel_calls(f, *args) -> set[str]:
    """The kernel's calls that ``f(*args)`` makes, read from its jaxpr: their FFI targets less
    the ``flax_lstm_cpu_`` prefix (``"forward"``, ``"backward_bf16"``, ``"weight_grads"``, …)."""
    return set(re.findall(r"flax_lstm_cpu_(\w+)", str(jax.make_jaxpr(f)(*args))))

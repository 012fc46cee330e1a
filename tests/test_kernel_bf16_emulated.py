"""The bfloat16 kernel's tests on a CPU without AVX512_BF16, on a build that emulates it.

The library builds the bfloat16 kernel only for CPUs with AVX512_BF16 (`vdpbf16ps`), so on an
AVX2 machine the tests marked ``bf16_kernel`` skip. This test runs them there again, in a
fresh pytest whose kernel is built with ``-DFLAX_LSTM_BF16_EMULATE=1``
(flax_lstm/_kernel/config.h): `vdpbf16ps` done in software on vectors of 16 floats, as
AVX-512's, and every other part of the bfloat16 kernel as it is built for such a CPU (the
packed pairs of K-steps, its forward and backward calls, the AMX tile path on emulated tiles).
Where the CPU has AVX512_BF16 the marked tests ran natively, and this one skips.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import pytest
from kernel_checks import BF16_EMULATE, cxxflags, needs_kernel
from python_process import run
from test_kernel_amx import NO_AMX

from flax_lstm import kernel
from flax_lstm._kernel import build

TESTS = Path(__file__).parent


@needs_kernel
def test_bf16_kernel_tests_pass_on_the_emulated_kernel(tmp_path):
    if kernel.available(jnp.bfloat16):
        pytest.skip("this CPU runs the bfloat16 kernel: its tests ran natively")
    if "avx2" not in build.cpu_identity().split():
        pytest.skip("the emulated build is for x86-64 CPUs with AVX2, and this one has none")
    proc = run(
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-m",
        "bf16_kernel",
        "-p",
        "no:cacheprovider",
        str(TESTS),
        timeout=1800,
        check=False,
        FLAX_LSTM_CXXFLAGS=cxxflags(BF16_EMULATE),
        FLAX_LSTM_CACHE_DIR=str(tmp_path / "cache"),
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0, out[-2000:]
    # The one thing the emulation leaves out: AMX's hardware tiles (emulated tiles ran).
    reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", out, re.MULTILINE)
    assert set(reasons) <= {NO_AMX}, reasons

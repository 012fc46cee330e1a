"""The kernel's source compiles for the x86-64 instruction sets that this machine may lack.

The library compiles the kernel with ``-march=native`` where it runs, so a test run builds only
its own CPU's variant: on an AVX2 machine the AVX-512 micro-kernel, the bfloat16 kernel
(vdpbf16ps) and its AMX tile path are never compiled, let alone run, and a change that breaks
them would pass here and fail on the first Zen 4 or Xeon that builds it. Each variant is
compiled here for a ``-march`` that selects it (``-O0``, an object file: seconds), and checked
for the kernel's feature macros it compiles with (config.h: ``FLAX_LSTM_BF16``,
``FLAX_LSTM_AMX``) and the FFI symbols that the Python side looks up. Running them: natively on
their CPUs, and the bfloat16 kernel's tests on the emulated build elsewhere
(tests/test_kernel_bf16_emulated.py); the AMX hardware path only on a CPU with AMX-BF16.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jax
import pytest
from kernel_checks import AMX_EMULATE, BF16_EMULATE

from flax_lstm._kernel import build


@dataclass(frozen=True)
class Variant:
    """A build of the kernel: its flags, the feature macros it must define (absent: undefined)
    and whether it has the bfloat16 handlers."""

    name: str
    flags: tuple[str, ...]
    macros: dict[str, str]
    bf16: bool


VARIANTS = (
    Variant("portable", ("-march=x86-64",), {}, bf16=False),  # FLAX_LSTM_ARCH=none
    Variant("avx2", ("-march=x86-64-v3",), {}, bf16=False),  # AMD Zen 2 and 3
    Variant("avx512", ("-march=x86-64-v4",), {}, bf16=False),
    # AVX512_BF16 without AMX in -march, the tile code through target attributes (Zen 4, 5)
    Variant("bf16", ("-march=cooperlake",), {"FLAX_LSTM_BF16": "1", "FLAX_LSTM_AMX": "1"}, True),
    Variant("amx", ("-march=sapphirerapids",), {"FLAX_LSTM_BF16": "1", "FLAX_LSTM_AMX": "1"}, True),
    Variant(  # the tests' build on AVX2 CPUs (tests/test_kernel_bf16_emulated.py)
        "bf16_emulated",
        ("-march=x86-64-v3", BF16_EMULATE),
        {"FLAX_LSTM_BF16": "2", "FLAX_LSTM_AMX": "1"},
        bf16=True,
    ),
    Variant(
        "amx_emulated",
        ("-march=sapphirerapids", AMX_EMULATE),
        {"FLAX_LSTM_BF16": "1", "FLAX_LSTM_AMX": "2"},
        bf16=True,
    ),
)

_CXX = build.compiler()
_WHY = (
    f"compiles x86-64 code with the host compiler, not on {platform.machine()}"
    if platform.machine().lower() not in ("x86_64", "amd64")
    else "no C++ compiler"
    if _CXX is None
    else "no nm to list an object's symbols"
    if shutil.which("nm") is None
    else None
)
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _flags(variant: Variant) -> list[str]:
    return [build.STD, "-O0", "-pthread", *variant.flags]


def _feature_macros(flags: list[str]) -> dict[str, str]:
    """The kernel's own feature macros (``FLAX_LSTM_BF16``, ``FLAX_LSTM_AMX``) and their values,
    as config.h defines them with ``flags``."""
    assert _CXX is not None
    cmd = [_CXX, *flags, "-isystem", jax.ffi.include_dir(), "-dM", "-E", str(build.SOURCE)]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    words = [line.split() for line in lines]
    return {
        w[1]: w[2] for w in words if len(w) == 3 and w[1] in ("FLAX_LSTM_BF16", "FLAX_LSTM_AMX")
    }


@dataclass(frozen=True)
class Built:
    """What compiling a variant gave: why it was not compiled, or the compiler's errors, or the
    kernel's feature macros and the object's symbols."""

    skipped: str | None = None
    failed: str | None = None
    macros: dict[str, str] = field(default_factory=dict)
    symbols: frozenset[str] = frozenset()


def _compile(variant: Variant, out: Path) -> Built:
    assert _CXX is not None
    probe = [_CXX, *variant.flags, "-E", "-x", "c++", os.devnull]
    if subprocess.run(probe, capture_output=True).returncode:
        return Built(skipped=f"{_CXX} does not know {' '.join(variant.flags)}")
    cmd = build.compile_command(_CXX, [*_flags(variant), "-c"], build.SOURCE, out)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return Built(failed=f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    nm = subprocess.run(["nm", "-g", "--defined-only", str(out)], capture_output=True, text=True)
    symbols = frozenset(line.split()[-1] for line in nm.stdout.splitlines() if line.strip())
    return Built(macros=_feature_macros(_flags(variant)), symbols=symbols)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Built]:
    """Every variant compiled, side by side (the builds are independent)."""
    folder = tmp_path_factory.mktemp("isas")
    with ThreadPoolExecutor() as pool:
        jobs = {v.name: pool.submit(_compile, v, folder / f"{v.name}.o") for v in VARIANTS}
        return {name: job.result() for name, job in jobs.items()}


def _expected_symbols(variant: Variant) -> set[str]:
    """The handlers the Python side looks up in a build of this variant, and what it reports."""
    symbols = {symbol for _, symbol in build.TARGETS["float32"]}
    symbols |= {symbol for _, symbol in build.TRANSPOSE.values()}
    symbols |= {build.WEIGHT_GRADS[1], build.INPUT_GRAD[1], build.AMX_SYMBOL}
    if variant.bf16:
        symbols |= {symbol for _, symbol in build.TARGETS["bfloat16"]}
    return symbols


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_the_kernel_compiles_for(variant, builds):
    built = builds[variant.name]
    if built.skipped:
        pytest.skip(built.skipped)
    assert built.failed is None, built.failed
    assert built.macros == variant.macros
    expected = _expected_symbols(variant)
    assert expected <= built.symbols
    ours = {s for s in built.symbols if s.startswith("FlaxLstm")}
    extra = ours - expected - {"FlaxLstmStolenItems", "FlaxLstmAmxDots"}
    assert not extra, f"symbols that no test expects: {sorted(extra)}"
    assert ("FlaxLstmAmxDots" in ours) == (built.macros.get("FLAX_LSTM_AMX") == "2")

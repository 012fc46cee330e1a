"""The user's view of the compiled CPU kernel, `flax_lstm.kernel`: whether it is built and why
not, what it falls back to, and that its FFI bindings are not part of it (they are private, in
`flax_lstm._kernel.ffi`, tested in tests/test_kernel_ffi.py)."""

from __future__ import annotations

import subprocess

import jax
import jax.numpy as jnp
import pytest
import python_process

from flax_lstm import kernel
from flax_lstm._kernel import build as kernel_build

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the kernel is for the CPU backend"
)


def test_public_names_are_the_users_view():
    assert sorted(kernel.__all__) == ["available", "build_error", "export_checks", "info"]
    for binding in ("forward", "backward", "weight_grads", "input_grad", "transposed_copy"):
        assert not hasattr(kernel, binding), binding


def test_kernel_builds_on_this_machine():
    """CI has a C++ compiler: a kernel that fails to build must fail here, not fall back."""
    assert kernel.build_error() is None
    assert kernel.available()


def test_bfloat16_kernel_builds_where_the_cpu_has_it():
    """On a CPU with AVX512_BF16 (CI's) the bfloat16 kernel must build, not fall back."""
    if "avx512_bf16" in kernel_build.cpu_identity().split():
        assert kernel.build_error(jnp.bfloat16) is None
    else:
        assert kernel.build_error(jnp.bfloat16) == kernel_build.NO_BF16


def test_info_reports_the_build():
    state = kernel.info()
    assert state["available"] == kernel.available() and state["threads"] >= 1
    assert state["bfloat16"] == (kernel.build_error(jnp.bfloat16) is None)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return python_process.run("-c", code, check=False, **env)


def test_without_a_compiler_the_scan_path_runs_with_a_warning(tmp_path):
    code = (
        "import warnings, jax, jax.numpy as jnp, flax_lstm as fl\n"
        "from flax_lstm import kernel\n"
        "cfg = fl.LSTMConfig(3, 64)\n"  # large enough for the kernel by default
        "p = fl.init_params(jax.random.key(0), cfg)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out, _ = fl.lstm(p, jnp.ones((16, 1, 3)), config=cfg)\n"
        "print(out.shape, kernel.available(), any('C++ compiler' in str(x.message) for x in w))\n"
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _run_python(code, CXX="", PATH=str(empty), FLAX_LSTM_CACHE_DIR=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(16,", "1,", "64)", "False", "True"]


def test_disabled_by_environment():
    code = (
        "import flax_lstm as fl, jax, jax.numpy as jnp\n"
        "from flax_lstm import kernel\n"
        "cfg = fl.LSTMConfig(3, 4)\n"
        "p = fl.init_params(jax.random.key(0), cfg)\n"
        "print(kernel.available(), kernel.build_error())\n"
        "fl.lstm(p, jnp.ones((2, 1, 3)), config=cfg, impl='kernel')\n"
    )
    proc = _run_python(code, FLAX_LSTM_CPU_KERNEL="0")
    assert proc.stdout.startswith("False disabled by FLAX_LSTM_CPU_KERNEL")
    assert proc.returncode != 0 and "RuntimeError: recurrence='kernel'" in proc.stderr

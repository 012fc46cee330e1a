"""The CPU kernel's AMX path for bfloat16 (issue 23): the step GEMMs on AMX tiles against the
lax.scan path, as tests/test_kernel_ffi.py checks the vdpbf16ps path.

Each check runs in a fresh process (the library reads ``FLAX_LSTM_AMX`` and checks the CPU
once per process) with its own cache folder. Where the CPU has no AMX-BF16, the tile path runs
in a test build whose tile instructions are done in software (``-DFLAX_LSTM_AMX_EMULATE=1``):
the same packing, tiling, K tails and gathering of ragged rows as on AMX, only the tile
instructions differ. The hardware check runs only on CPUs with AMX-BF16.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from kernel_checks import AMX_EMULATE, bf16_kernel, cxxflags, kernel_calls, require_bf16_kernel
from python_process import run
from torch_ref import Case, make_inputs, make_torch

import flax_lstm as fl
from flax_lstm import cli, kernel
from flax_lstm._kernel import build

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the kernel is for the CPU backend"
)

NO_AMX = "this CPU has no AMX-BF16 (amx_bf16 flag): the AMX path was not executed"


def _lengths(n: int, t: int) -> tuple[int, ...]:
    """Ragged lengths for n sequences of at most t steps: the longest t, some 0."""
    return tuple(t - (i * 5) % (t + 1) for i in range(n))


# Row blocks of the tile GEMM are 32 rows (two tile rows of 16): batches of 1, 3, 12, 17 and
# 40 reach a partial tile row alone (12: a step GEMM of 8 to 15 rows, on the tiles), one whole
# and one partial, and a whole block and a partial one. Its K blocks are 32: input sizes 1, 7,
# 9, 33 and hidden sizes 5, 24, 40, 70 leave K tails (forward K = I and H, backward K = 4H: 96
# and 160 are whole), 32 and 64 none at all. Batches of at most 4 with more than 64 steps hoist
# the input projection in blocks of 64 steps (GEMMs of up to 256 rows). seq_lengths take the
# rows through Product::rows.
CASES = [
    Case(input_size=7, hidden_size=40, seq_len=6, batch=17),
    Case(input_size=9, hidden_size=24, seq_len=5, batch=12, with_hx=True),
    Case(input_size=33, hidden_size=70, seq_len=5, batch=40, bidirectional=True, with_hx=True),
    Case(input_size=32, hidden_size=64, seq_len=4, batch=32, num_layers=2),
    Case(input_size=1, hidden_size=5, seq_len=130, batch=3, with_hx=True),
    Case(input_size=7, hidden_size=40, seq_len=70, batch=None, bidirectional=True),
    Case(input_size=33, hidden_size=40, seq_len=12, batch=40, lengths=_lengths(40, 12)),
    Case(
        input_size=7,
        hidden_size=20,
        seq_len=9,
        batch=17,
        num_layers=2,
        bidirectional=True,
        with_hx=True,
        lengths=_lengths(17, 9),
    ),
    Case(
        input_size=11,
        hidden_size=70,
        seq_len=140,
        batch=3,
        bidirectional=True,
        with_hx=True,
        lengths=(140, 0, 65),
    ),
]


def _runs_bf16_kernel(case: Case) -> bool:
    """Whether the gradient of a bfloat16 call runs the bfloat16 kernel, forward and backward."""
    cfg = case.config()
    params = fl.from_torch_state_dict(make_torch(case).state_dict(), cfg)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    x = jnp.asarray(make_inputs(case)["x"], jnp.bfloat16)
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)

    def loss(p):
        out = fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl="kernel")[0]
        return out.astype(jnp.float32).sum()

    return {"forward_bf16", "backward_bf16"} <= kernel_calls(jax.grad(loss), params)


def _tile_products() -> int:
    """The emulated tile products done so far in this process (0 without the emulation)."""
    lib = ctypes.CDLL(str(build.LIBRARY[0]))
    return lib.FlaxLstmAmxDots() if hasattr(lib, "FlaxLstmAmxDots") else 0


def compare_cases(which: str) -> None:
    """Run in the fresh process: every case of CASES (``which``: "all", or "some" for the
    first two) through the bfloat16 kernel and the scan path, compared as
    tests/test_kernel_ffi.py compares them; prints a JSON line with info()'s amx entries and,
    per case, the emulated tile products it did."""
    from test_kernel_ffi import _bf16_close, _kernel_and_scan

    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py sets it
    state = kernel.info()
    assert state["bfloat16"], state
    products = {}
    for i, case in enumerate(CASES if which == "all" else CASES[:2]):
        assert _runs_bf16_kernel(case), case
        before = _tile_products()
        fast, scan = _kernel_and_scan(case, jnp.bfloat16)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
            _bf16_close(a, b)
        products[i] = _tile_products() - before
    print(json.dumps({"amx": state["amx"], "reason": state["amx_reason"], "products": products}))


def _compare_in_fresh_process(cache: Path, which: str = "all", **env: str) -> dict:
    tests = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {tests!r}); import test_kernel_amx; "
        f"test_kernel_amx.compare_cases({which!r})"
    )
    proc = run("-c", code, timeout=900, FLAX_LSTM_CACHE_DIR=str(cache), **env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_amx() -> bool:
    return "amx_bf16" in build.cpu_identity().split()


@pytest.fixture(scope="module")
def emulated_cache(tmp_path_factory) -> Path:
    """One cache folder for the emulated build, shared by the tests that use it."""
    return tmp_path_factory.mktemp("amx_emulated")


@bf16_kernel
def test_emulated_tiles_equal_scan_path(emulated_cache):
    """Every case on the emulated tiles: outputs, states and gradients as the scan path's, and
    each case did tile products (the AMX path ran, not vdpbf16ps)."""
    require_bf16_kernel()
    result = _compare_in_fresh_process(
        emulated_cache, FLAX_LSTM_CXXFLAGS=cxxflags(AMX_EMULATE), FLAX_LSTM_NUM_THREADS="2"
    )
    assert result["amx"] == "emulated" and result["reason"] is None
    assert len(result["products"]) == len(CASES)
    assert all(n > 0 for n in result["products"].values()), result["products"]


@bf16_kernel
def test_amx_disabled_runs_vdpbf16ps(emulated_cache):
    """FLAX_LSTM_AMX=0 turns the tile path off in a build that has it: the same results, no
    tile product, and info says why."""
    require_bf16_kernel()
    result = _compare_in_fresh_process(
        emulated_cache, "some", FLAX_LSTM_CXXFLAGS=cxxflags(AMX_EMULATE), FLAX_LSTM_AMX="0"
    )
    assert result["amx"] is False and result["reason"] == "disabled by FLAX_LSTM_AMX"
    assert set(result["products"].values()) == {0}


@bf16_kernel
@pytest.mark.skipif(not _has_amx(), reason=NO_AMX)
@pytest.mark.parametrize("amx_env", ["1", "0"])
def test_amx_tiles_equal_scan_path(amx_env, tmp_path):
    """On a CPU with AMX-BF16: every case on the hardware tiles, and with FLAX_LSTM_AMX=0 on
    vdpbf16ps, both within the bfloat16 tolerance of the scan path."""
    require_bf16_kernel()
    result = _compare_in_fresh_process(
        tmp_path, "all" if amx_env == "1" else "some", FLAX_LSTM_AMX=amx_env
    )
    if amx_env == "1":
        assert result["amx"] is True and result["reason"] is None
    else:
        assert result["amx"] is False and result["reason"] == "disabled by FLAX_LSTM_AMX"


def test_info_reports_amx():
    state = kernel.info()
    if not state["bfloat16"]:
        assert state["amx"] is False and state["amx_reason"]
        return
    assert state["amx"] in (True, False, "emulated")
    assert (state["amx_reason"] is None) == (state["amx"] is not False)
    if not _has_amx() and state["amx"] is False:
        assert state["amx_reason"] in (
            build.AMX_REASONS[0],
            build.AMX_REASONS[-1],
            build.AMX_REASONS[-3],
        )


def test_kernel_command_reports_amx(capsys):
    status = cli.main(["kernel"])
    captured = capsys.readouterr()
    state = json.loads(captured.out.strip().splitlines()[-1])
    if status != 0:
        pytest.skip(f"no kernel here: {state['error']}")
    assert "amx" in state and "amx_reason" in state
    line = next(x for x in captured.err.splitlines() if "AMX tiles for bfloat16" in x)
    expected = {True: "yes", "emulated": "emulated", False: f"no ({state['amx_reason']})"}
    assert expected[state["amx"]] in line


def test_kernel_command_without_kernel(monkeypatch):
    """Without the kernel, amx is False and says why (the kernel's own reason)."""
    monkeypatch.setenv("FLAX_LSTM_CPU_KERNEL", "0")
    state = kernel.info()
    assert state["amx"] is False and "FLAX_LSTM_CPU_KERNEL" in state["amx_reason"]

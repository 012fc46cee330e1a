"""The compiled CPU kernel through its private bindings (`flax_lstm._kernel.ffi`): parity with
torch and with the scan path, its helper calls (transposed copy, ragged weight gradients) and
their derivatives.

The shapes reach the kernel's vector body and row blocks (hidden sizes past one vector,
batches past one 8-row block), with several thread counts. Where the kernel applies is
`flax_lstm.plan`'s (tests/test_plan.py), building it tests/test_kernel_build.py, the user's
view `flax_lstm.kernel` tests/test_kernel.py.
"""

from __future__ import annotations

import dataclasses
import os
import re

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from kernel_checks import bf16_kernel, kernel_calls, require_bf16_kernel
from torch_ref import Case, compare, make_inputs, make_torch

import flax_lstm as fl
from flax_lstm._kernel import ffi, tuning

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the kernel is for the CPU backend"
)


def _uses_kernel(case: Case, **kwargs) -> bool:
    cfg = case.config()
    params = fl.from_torch_state_dict(make_torch(case).state_dict(), cfg)
    x = jnp.asarray(make_inputs(case)["x"])
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)
    loss = lambda p: fl.lstm(p, x, config=cfg, seq_lengths=lengths, **kwargs)[0].sum()  # noqa: E731
    return {"forward", "backward"} <= kernel_calls(jax.grad(loss), params)


# Hidden sizes around one vector (16 floats with AVX-512, 8 without) and batches around one
# block of 8 (or 6) rows reach every branch of the GEMM and the gate arithmetic.
KERNEL_CASES = [
    Case(input_size=20, hidden_size=37, seq_len=9, batch=19, num_layers=2, bidirectional=True),
    Case(input_size=16, hidden_size=64, seq_len=6, batch=9, with_hx=True),
    Case(input_size=5, hidden_size=33, seq_len=7, batch=8, lengths=(7, 1, 3, 1, 7, 2, 5, 6)),
    Case(
        input_size=7,
        hidden_size=48,
        seq_len=8,
        batch=5,
        num_layers=2,
        bidirectional=True,
        batch_first=True,
        with_hx=True,
        lengths=(8, 1, 4, 2, 6),
    ),
    Case(input_size=3, hidden_size=17, seq_len=1, batch=1, bias=False),
    Case(input_size=12, hidden_size=40, seq_len=5, batch=None, bidirectional=True),
    # Batches of at most 4: the input projection in blocks of 64 steps (here three, the last
    # one partial; bidirectional layers gather their rows) and each step's chunks in fixed
    # runs, one per thread (5 chunks of 16 units at H=80: runs of unequal length).
    Case(
        input_size=24,
        hidden_size=50,
        seq_len=150,
        batch=2,
        num_layers=2,
        bidirectional=True,
        lengths=(150, 70),
    ),
    Case(input_size=9, hidden_size=80, seq_len=130, batch=None, with_hx=True),
    # The backward's chunks of 16 units where they share a step more evenly than chunks of 32
    # (at least 8 rows) by a sixth: here on 2 threads, and above at H37 and H33 on 3.
    Case(input_size=6, hidden_size=96, seq_len=4, batch=9),
]


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=range(len(KERNEL_CASES)))
def test_kernel_parity_with_torch(case, threads, monkeypatch):
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()  # the thread count is read when a function is traced
    assert _uses_kernel(case, impl="kernel")
    compare(case, jit=True, impl="kernel")


@st.composite
def kernel_cases(draw):
    batch = draw(st.one_of(st.none(), st.integers(1, 20)))
    seq_len = draw(st.integers(1, 9))
    lengths = None
    if batch is not None and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch)))
    return Case(
        input_size=draw(st.integers(1, 40)),
        hidden_size=draw(st.integers(1, 72)),
        num_layers=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        seq_len=seq_len,
        batch=batch,
        with_hx=draw(st.booleans()),
        lengths=lengths,
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_cases(), st.sampled_from(["1", "2"]))
def test_kernel_random_configurations(case, threads):
    old = os.environ.get("FLAX_LSTM_NUM_THREADS")
    os.environ["FLAX_LSTM_NUM_THREADS"] = threads
    try:
        jax.clear_caches()
        compare(case, jit=True, impl="kernel")
    finally:
        if old is None:
            del os.environ["FLAX_LSTM_NUM_THREADS"]
        else:
            os.environ["FLAX_LSTM_NUM_THREADS"] = old


# Ragged batches: the kernel takes the rows longest first and runs each step on the rows
# still running. Many different lengths (T among them), both directions, batches past one
# 8-row block and of at most 4 (the hoisted input projection, whose blocks past the longest
# sequence are skipped).
RAGGED_CASES = [
    Case(
        input_size=13,
        hidden_size=40,
        seq_len=70,
        batch=13,
        bidirectional=True,
        with_hx=True,
        lengths=(70, 1, 2, 69, 35, 70, 3, 17, 9, 64, 65, 33, 8),
    ),
    Case(input_size=9, hidden_size=24, seq_len=150, batch=4, lengths=(150, 5, 66, 129)),
]


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("case", RAGGED_CASES, ids=range(len(RAGGED_CASES)))
def test_ragged_parity_with_torch_packed(case, threads, monkeypatch):
    """Against torch's packed LSTM (pack_padded_sequence, enforce_sorted=False)."""
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()
    assert _uses_kernel(case, impl="kernel")
    compare(case, jit=True, impl="kernel")


# torch rejects a length of 0; the scan path defines it (the state stays h_0, c_0).
SCAN_CASES = [
    *KERNEL_CASES[:4],
    *RAGGED_CASES,
    Case(
        input_size=10,
        hidden_size=36,
        seq_len=40,
        batch=11,
        bidirectional=True,
        with_hx=True,
        lengths=(0, 40, 1, 39, 0, 20, 2, 40, 7, 33, 12),
    ),
    # Every sequence ends before T, and the input projection's last blocks run no row.
    Case(
        input_size=8,
        hidden_size=20,
        seq_len=140,
        batch=3,
        bidirectional=True,
        with_hx=True,
        lengths=(60, 0, 3),
    ),
    Case(input_size=5, hidden_size=33, seq_len=7, batch=9, lengths=(7, 0, 3, 1, 7, 2, 0, 6, 5)),
    Case(
        input_size=6,
        hidden_size=20,
        seq_len=4,
        batch=3,
        num_layers=2,
        bidirectional=True,
        with_hx=True,
        lengths=(0, 4, 2),
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


def _kernel_and_scan(case: Case, dtype=jnp.float32):
    """Value and gradients (w.r.t. params, x, hx) of a loss over every output and per-step
    state, with the kernel and on the scan path: ``(fast, scan)``. Weights and input are cast
    to ``dtype``; h_0 and c_0 stay float32, as the caller gives them."""
    cfg = case.config()
    params = fl.from_torch_state_dict(make_torch(case).state_dict(), cfg)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    inp = make_inputs(case)
    x = jnp.asarray(inp["x"], dtype)
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)
    hx = (jnp.asarray(inp["h0"]), jnp.asarray(inp["c0"])) if case.with_hx else None

    def run(impl):
        def loss(p, x, hx):
            out, (h, c), states = fl.lstm(
                p,
                x,
                hx,
                config=cfg,
                seq_lengths=lengths,
                return_all_states=True,
                impl=impl,
            )
            o32, h32, hs32 = (a.astype(jnp.float32) for a in (out, h, states.h))
            total = (o32 * inp["w_out"]).sum() + (h32 * inp["w_h"]).sum() + (c * inp["w_c"]).sum()
            return total + (hs32**2).sum() + (states.c * 0.5).sum(), (out, h, c, states)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, x, hx)

    return run("kernel"), run("scan")


@pytest.mark.parametrize("case", SCAN_CASES, ids=range(len(SCAN_CASES)))
def test_kernel_equals_scan_path(case):
    """Every output and gradient, per-step states included, against the lax.scan path."""
    fast, scan = _kernel_and_scan(case)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", [SCAN_CASES[-1], KERNEL_CASES[-1]], ids=["bi", "unbatched"])
def test_small_batches_with_more_runs_than_threads(case, monkeypatch):
    """A batch of at most 4 splits each step into one fixed run of chunks per requested thread.
    Eight requested on this 2-core machine: most runs have no thread of their own and are
    taken by whichever thread is free, and the result must not change."""
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", "8")
    jax.clear_caches()
    fast, scan = _kernel_and_scan(case)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("small_batch", [0, 16])
def test_small_batch_setting_changes_the_scheme_not_the_result(small_batch, monkeypatch):
    """The largest batch of the small-batch scheme is the calls' ``small_batch`` attribute,
    ``FLAX_LSTM_SMALL_BATCH`` when set (`flax_lstm._kernel.tuning`): 0 runs a batch of 3 on the
    general scheme, 16 runs a batch of 8 on the small-batch one, and both equal the scan path."""
    monkeypatch.setenv("FLAX_LSTM_SMALL_BATCH", str(small_batch))
    case = dataclasses.replace(SCAN_CASES[-1], batch=3 if small_batch == 0 else 8, lengths=None)
    cfg, x = case.config(), jnp.zeros((case.seq_len, case.batch, case.input_size))
    params = fl.init_params(jax.random.key(0), cfg)
    call = jax.jit(lambda p, x: fl.lstm(p, x, config=cfg, impl="kernel")[0])
    assert f"small_batch = {small_batch}" in call.lower(params, x).as_text()
    fast, scan = _kernel_and_scan(case)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_a_small_call_runs_on_one_thread_a_direction(monkeypatch):
    """Each of the kernel's calls in a gradient, the recurrence's and the weight and input
    gradients', is given one thread a direction below `tuning.min_split_work`, and its usual
    threads from there on; ``FLAX_LSTM_MIN_SPLIT_WORK`` moves the threshold."""
    monkeypatch.delenv("FLAX_LSTM_NUM_THREADS", raising=False)
    monkeypatch.setattr(ffi, "usable_cpus", lambda: 8)

    def threads(steps, batch, hidden, bidirectional=False, inputs=None):
        inputs = inputs or hidden
        cfg = fl.LSTMConfig(input_size=inputs, hidden_size=hidden, bidirectional=bidirectional)
        params, x = fl.init_params(jax.random.key(0), cfg), jnp.ones((steps, batch, inputs))
        loss = lambda p, x: fl.lstm(p, x, config=cfg, impl="kernel")[0].sum()  # noqa: E731
        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
        return set(re.findall(r"threads = (\d+) : i64", text))

    assert threads(8, 4, 64) == {"1"}  # 2^17 < MIN_SPLIT_WORK
    assert threads(8, 4, 64, bidirectional=True) == {"2"}
    assert threads(32, 8, 64) == {"4", "8"}  # 2^20: 4 by units, 8 for the gradients
    assert "1" not in threads(8, 4, 64, inputs=8 * 64)  # 2^17·9/2: the inputs count
    assert threads(4, 8, 64) == {"1"}  # 2^17
    monkeypatch.setenv("FLAX_LSTM_MIN_SPLIT_WORK", "0")  # every layer's units shared
    assert "1" not in threads(4, 8, 64)
    monkeypatch.setenv("FLAX_LSTM_MIN_SPLIT_WORK", str((1 << 20) + 1))
    assert threads(32, 8, 64) == {"1"}


def test_a_changed_setting_traces_anew(monkeypatch):
    """The kernel's threads, small-batch size and split work are read as its calls are traced;
    the plan holds them (`Plan.kernel_settings`), so a call traced after a change does not reuse
    the inner computation compiled with the old ones."""
    cfg = fl.LSTMConfig(input_size=3, hidden_size=32)
    params, x = fl.init_params(jax.random.key(0), cfg), jnp.ones((5, 6, 3))

    def lowered():
        return jax.jit(lambda p, x: fl.lstm(p, x, config=cfg, impl="kernel")[0]).lower(params, x)

    monkeypatch.setenv("FLAX_LSTM_SMALL_BATCH", "4")
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", "2")
    assert re.search(r"small_batch = 4 : i64, threads = 2", lowered().as_text())
    monkeypatch.setenv("FLAX_LSTM_SMALL_BATCH", "8")
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", "1")
    assert re.search(r"small_batch = 8 : i64, threads = 1", lowered().as_text())
    # 5 steps × 6 sequences × 32·35/2 = 16800: one thread below the split work, two from it
    monkeypatch.delenv("FLAX_LSTM_NUM_THREADS")
    monkeypatch.setattr(ffi, "usable_cpus", lambda: 2)
    monkeypatch.setenv("FLAX_LSTM_MIN_SPLIT_WORK", "16801")
    assert re.search(r"threads = 1 : i64", lowered().as_text())
    monkeypatch.setenv("FLAX_LSTM_MIN_SPLIT_WORK", "16800")
    assert re.search(r"threads = 2 : i64", lowered().as_text())


def test_threads_per_layer(monkeypatch):
    """`ffi.num_threads`: every usable CPU, at most one per 16 units of each direction and at
    least one per direction; an inference forward of fewer than `ffi.MIN_FORWARD_SPLIT` units
    of rows a step counts one direction; ``FLAX_LSTM_NUM_THREADS`` overrides it all."""
    monkeypatch.delenv("FLAX_LSTM_NUM_THREADS", raising=False)
    monkeypatch.setattr(ffi, "usable_cpus", lambda: 8)
    assert ffi.num_threads() == 8  # the weight gradients: not split by units
    assert [ffi.num_threads(h) for h in (8, 31, 32, 48, 200)] == [1, 1, 2, 3, 8]
    assert [ffi.num_threads(h, 2) for h in (8, 31, 32, 48)] == [2, 2, 4, 6]
    assert ffi.num_threads(24, 2, rows=10) == 1  # 240 units of rows: one thread
    assert ffi.num_threads(24, 2, rows=11) == 2
    assert ffi.num_threads(64, 2, rows=1) == 4  # wide enough to split anyway
    # A call of less work than MIN_SPLIT_WORK (T·N·H²): one thread a direction, whatever its
    # units, the weight and input gradients (hidden None) too.
    monkeypatch.delenv("FLAX_LSTM_MIN_SPLIT_WORK", raising=False)
    split = tuning.MIN_SPLIT_WORK
    small, (t,) = split - 1, jax.export.symbolic_shape("t")
    assert [ffi.num_threads(h, 1, work=small) for h in (None, 64, 512)] == [1, 1, 1]
    assert [ffi.num_threads(h, 2, work=small) for h in (None, 512)] == [2, 2]
    assert ffi.num_threads(24, 2, rows=10, work=small) == 1
    assert ffi.num_threads(512, work=split) == 8
    assert ffi.num_threads(None, 2, work=split) == 8
    assert ffi.call_work(4, 8, 64, 64) == 4 * 8 * 64 * 64  # as many inputs as units: T·N·H²
    assert ffi.call_work(4, 8, 64, 192) == 2 * 4 * 8 * 64 * 64
    assert ffi.call_work(t, 8, 64, 64) is None  # symbolic: large
    monkeypatch.setattr(ffi, "usable_cpus", lambda: 1)
    assert ffi.num_threads(512, 2) == 1
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", "3")
    assert ffi.num_threads(8, 2, rows=1) == 3


@pytest.mark.parametrize("value", ["-1", "four", "2.5", "1e6"])
@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ("FLAX_LSTM_SMALL_BATCH", tuning.small_batch),
        ("FLAX_LSTM_MIN_SPLIT_WORK", tuning.min_split_work),
    ],
)
def test_a_kernel_setting_must_be_a_count(env, setting, value, monkeypatch):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=f"{env} must be a non-negative integer.*{value!r}"):
        setting()


def _bf16_close(a, b):
    """Equal to within two bfloat16 roundings (2**-7) of the larger of |b| and 1."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(float(np.abs(b).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(a, b, rtol=2**-7, atol=2**-7 * scale)


@bf16_kernel
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("case", SCAN_CASES, ids=range(len(SCAN_CASES)))
def test_bfloat16_kernel_equals_scan_path(case, threads, monkeypatch):
    """bfloat16 compute: x, h and the weights in bfloat16 with float32 sums, gates and cell
    state, as the lax.scan path computes it; outputs, states and every gradient."""
    require_bf16_kernel()
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()
    fast, scan = _kernel_and_scan(case, jnp.bfloat16)
    assert jax.tree.map(lambda a: a.dtype, fast) == jax.tree.map(lambda a: a.dtype, scan)
    assert fast[0][1][0].dtype == jnp.bfloat16  # the output stays in the compute dtype
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        _bf16_close(a, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(70, 130), (1, 5), (64, 64), (129, 3)])
def test_transposed_copy(shape, dtype):
    a = jax.random.normal(jax.random.key(0), shape).astype(dtype)
    got = jax.jit(ffi.transposed_copy)(a)
    assert got.dtype == dtype and got.shape == shape[::-1]
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(a, np.float32).T)
    t = jnp.ones(shape, dtype)
    _, tangent = jax.jvp(ffi.transposed_copy, (a,), (t,))
    np.testing.assert_array_equal(np.asarray(tangent, np.float32), np.ones(shape[::-1]))
    grad = jax.grad(lambda a: (ffi.transposed_copy(a).astype(jnp.float32) ** 2).sum())(a)
    np.testing.assert_allclose(np.asarray(grad, np.float32), 2 * np.asarray(a, np.float32))


def _weight_grads_reference(dz, x, hs, h0, w_ih, mask):
    """dx, dW_ih, dW_hh as GEMMs over every step, in float64 (dx zero where masked)."""
    dz, x, hs, h0, w_ih = (np.asarray(a, np.float64) for a in (dz, x, hs, h0, w_ih))
    h_prev = np.concatenate([h0[None], hs[:-1]])
    m = np.asarray(mask)[:, None, :, None]
    dx = np.einsum("tdng,dgi->tdni", dz, w_ih) * m
    flat = lambda a, d: a[:, d].reshape(-1, a.shape[-1])  # noqa: E731
    dw_ih = np.stack([flat(dz, d).T @ flat(x, d) for d in range(dz.shape[1])])
    dw_hh = np.stack([flat(dz, d).T @ flat(h_prev, d) for d in range(dz.shape[1])])
    return dx, dw_ih, dw_hh


@jax.jit
def _ragged_grads(dz, x, hs, h0, w_ih, mask):
    return (ffi.input_grad(dz, w_ih, mask), *ffi.weight_grads(dz, x, hs, h0, mask))


@pytest.mark.parametrize(
    "t, d, n, i, h, which",
    [
        (37, 2, 11, 70, 37, "prefix"),  # panels with tails in x and h, two directions
        (9, 1, 7, 3, 5, "random"),  # a mask that is no prefix
        (6, 2, 3, 4, 8, "none"),  # no valid step at all: zero gradients
        (120, 1, 40, 256, 256, "prefix"),  # more valid steps than one packed superblock
        # 96 gate rows: with AVX-512, blocks of 64 rows on one thread, of 48 on two, of 16 on eight
        (50, 1, 16, 12, 24, "prefix"),
    ],
)
def test_ragged_weight_grads(t, d, n, i, h, which, monkeypatch):
    """`ffi.input_grad` and `ffi.weight_grads` equal the GEMMs over every step (dz is zero
    at masked steps), bitwise the same for any number of threads (each sum is taken in one
    order)."""
    rng = np.random.default_rng(t * n)
    if which == "prefix":
        mask = np.arange(t)[:, None] < rng.integers(0, t + 1, n)[None, :]
    else:
        mask = rng.random((t, n)) < (0.6 if which == "random" else 0.0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    dz = normal(t, d, n, 4 * h) * mask[:, None, :, None]
    args = (dz, normal(t, d, n, i), normal(t, d, n, h), normal(d, n, h), normal(d, 4 * h, i))
    results = []
    for threads in ("1", "2", "8"):
        monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
        jax.clear_caches()
        results.append(_ragged_grads(*args, jnp.asarray(mask)))
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            np.testing.assert_array_equal(a, b)
    for got, want in zip(results[0], _weight_grads_reference(*args, mask), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_float32_weight_grads_come_from_the_kernel_unless_rows_are_few():
    """In float32 the weight and input gradients come from the kernel's calls: with
    seq_lengths always, padded where the rows (T·N) outnumber the columns (I + H); a padded
    call with fewer rows keeps XLA's direct GEMMs, and bfloat16 XLA's GEMMs."""
    cfg = fl.LSTMConfig(3, 16)
    params = fl.init_params(jax.random.key(0), cfg)

    def calls(x, params=params, **kwargs):
        loss = lambda p: fl.lstm(p, x, config=cfg, impl="kernel", **kwargs)[0].sum()  # noqa: E731
        return kernel_calls(jax.grad(loss), params)

    both = {"weight_grads", "input_grad"}
    x = jnp.ones((10, 4, 3))  # 40 rows, 19 columns
    assert both <= calls(x, seq_lengths=jnp.array([10, 3, 0, 7]))  # ragged
    assert both <= calls(x)  # padded
    assert "weight_grads" not in calls(jnp.ones((19, 1, 3)))  # 19 rows
    assert "weight_grads" in calls(jnp.ones((20, 1, 3)))
    if fl.kernel.available(jnp.bfloat16):
        bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
        assert not both & calls(x.astype(jnp.bfloat16), bf16)
    # Where nothing needs the input's gradient, its call is left out of the compiled program.
    for lengths in (jnp.array([10, 3, 0, 7]), None):
        loss = lambda p: fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl="kernel")[0].sum()  # noqa: B023, E731
        hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
        assert "flax_lstm_cpu_weight_grads" in hlo and "flax_lstm_cpu_input_grad" not in hlo


@pytest.mark.parametrize("bidirectional", [False, True])
def test_xla_weight_grads_equal_the_kernel_librarys(bidirectional):
    """``Implementation(weight_grads="xla")``: a padded float32 batch takes XLA's GEMMs for the
    weight and input gradients instead of the kernel library's calls, with the same gradients
    up to rounding; a ragged batch keeps the kernel's (over its valid steps)."""
    cfg = fl.LSTMConfig(5, 16, num_layers=2, bidirectional=bidirectional)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (12, 6, 5))

    def grads(gemms, lengths=None):
        impl = fl.Implementation(recurrence="kernel", weight_grads=gemms)
        loss = lambda p, x: fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl=impl)[0].sum()  # noqa: E731
        fn = jax.grad(loss, argnums=(0, 1))
        return "weight_grads" in kernel_calls(fn, params, x), fn(params, x)

    (kernels, want), (xlas, got) = grads("kernel"), grads("xla")
    assert kernels and not xlas
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=1e-5)
    assert grads("xla", jnp.array([12, 3, 0, 7, 12, 1]))[0]


def test_kernel_check_grads():
    from jax.test_util import check_grads

    cfg = fl.LSTMConfig(4, 20, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (5, 9, 4))
    lengths = jnp.array([5, 2, 0, 4, 5, 1, 3, 5, 2])

    def f(params, x):
        out, (h, c) = fl.lstm(params, x, config=cfg, seq_lengths=lengths, impl="kernel")
        return out.sum() + (h * c).sum()

    # float32 finite differences: step and tolerances sized to float32 rounding.
    check_grads(f, (params, x), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=bf16_kernel)])
def test_second_derivatives_through_the_kernel(dtype):
    """Reverse-over-reverse (a Hessian-vector product) runs and equals the scan path's: the
    kernel's calls are differentiated as the lax.scan path they replace."""
    if dtype == jnp.bfloat16:
        require_bf16_kernel()
    cfg = fl.LSTMConfig(3, 20, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (6, 5, 3))
    lengths = jnp.array([6, 2, 0, 4, 5])

    def hvp_norm(impl):
        def f(params, x):
            out, (h, c) = fl.lstm(
                params, x, config=cfg, seq_lengths=lengths, dtype=dtype, impl=impl
            )
            f32 = jnp.float32
            return jnp.sin(out.astype(f32)).sum() + (h.astype(f32) * c).sum()

        def grad_norm(params, x):
            g = jax.grad(f, argnums=(0, 1))(params, x)
            return sum((a.astype(jnp.float32) ** 2).sum() for a in jax.tree.leaves(g))

        return jax.jit(jax.grad(grad_norm, argnums=(0, 1)))(params, x)

    fast, scan = hvp_norm("kernel"), hvp_norm("scan")
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        if dtype == jnp.float32:
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
        else:
            _bf16_close(a, b)


def test_kernel_under_vmap():
    cfg = fl.LSTMConfig(3, 24, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 5, 3))
    lengths = jnp.array([[6, 1, 3, 0, 2], [4, 4, 4, 4, 4], [1, 2, 3, 4, 5]])

    def one(x, n):
        return fl.lstm(params, x, config=cfg, seq_lengths=n, impl="kernel")

    batched = jax.vmap(one)(xs, lengths)
    for i in range(3):
        single = one(xs[i], lengths[i])
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-6)
    grads = jax.grad(lambda x: jax.vmap(one)(x, lengths)[0].sum())(xs)
    assert grads.shape == xs.shape and bool(jnp.isfinite(grads).all())


def test_packed_weights_reuse_memory_between_calls():
    """A call's packed weights and scratch come from blocks that earlier calls gave back
    (buffers.h, BlockCache), not fresh pages: one step of a bidirectional layer at H512 packs
    16 MiB, 4,096 pages that some processes faulted in on every call, at 4× the call's time."""
    resource = pytest.importorskip("resource", reason="page faults are counted with getrusage")
    config = fl.LSTMConfig(input_size=512, hidden_size=512, bidirectional=True)
    params = fl.init_params(jax.random.key(0), config)
    x = jnp.ones((1, 1, 512))
    step = jax.jit(lambda p, x: fl.lstm(p, x, config=config, impl="kernel")[0])
    for _ in range(3):
        step(params, x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    calls = 10
    for _ in range(calls):
        step(params, x).block_until_ready()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls
    assert faults < 400, f"{faults:.0f} page faults a call"

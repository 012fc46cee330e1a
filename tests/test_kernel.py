"""The compiled CPU kernel (`flax_lstm.kernel`): parity with torch and with the scan path.

The rest of the suite runs through the kernel wherever it applies on CPU (float32, no
projection); these tests add the shapes that reach its vector body and row blocks (hidden
sizes past one vector, batches past one 8-row block), several thread counts, and what
happens where it does not apply or cannot be built.
"""

from __future__ import annotations

import os
import subprocess

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_process
from hypothesis import HealthCheck, given, settings
from torch_ref import Case, compare, make_inputs, make_torch

import flax_lstm as fl
from flax_lstm import kernel
from flax_lstm._kernel import build as kernel_build

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the kernel is for the CPU backend"
)


def _uses_kernel(case: Case, **kwargs) -> bool:
    cfg = case.config()
    params = fl.from_torch_state_dict(make_torch(case).state_dict(), cfg)
    x = jnp.asarray(make_inputs(case)["x"])
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)
    jaxpr = jax.make_jaxpr(
        jax.grad(lambda p: fl.lstm(p, x, config=cfg, seq_lengths=lengths, **kwargs)[0].sum())
    )(params)
    return "flax_lstm_cpu_forward" in str(jaxpr) and "flax_lstm_cpu_backward" in str(jaxpr)


def test_kernel_builds_on_this_machine():
    """CI has a C++ compiler: a kernel that fails to build must fail here, not fall back."""
    assert kernel.build_error() is None
    assert kernel.available()


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


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("batch", [3, 10])
def test_mask_that_is_no_prefix(batch, threads, monkeypatch):
    """run_layer takes any (T, N) mask: one with valid steps after masked ones keeps every row
    running in the kernel and masks step by step, as the scan does."""
    from flax_lstm.plan import Plan
    from flax_lstm.recurrence import LayerWeights, run_layer

    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()
    t, d, i, h = 9, 2, 6, 20
    ks = jax.random.split(jax.random.key(batch), 6)
    x = jax.random.normal(ks[0], (t, d, batch, i))
    w_ih = jax.random.normal(ks[1], (d, 4 * h, i)) * 0.3
    w_hh = jax.random.normal(ks[2], (d, 4 * h, h)) * 0.3
    b = jax.random.normal(ks[3], (d, 4 * h)) * 0.1
    h0 = jax.random.normal(ks[4], (d, batch, h))
    c0 = jax.random.normal(ks[5], (d, batch, h))
    mask = jax.random.bernoulli(jax.random.key(7), 0.6, (t, batch))

    def run(kernel):
        plan = Plan(
            platform="cpu",
            recurrence="kernel" if kernel else "scan",
            backward="custom",
            unroll=1,
            hoist_input=False,
            fuse_directions=True,
        )

        def loss(x, w_ih, b, w_hh, h0, c0):
            weights = LayerWeights(w_ih, b, w_hh, None)
            hs, cs = run_layer(x, weights, h0, c0, mask, None, plan=plan)
            return (hs**2).sum() + cs.sum(), (hs, cs)

        return jax.jit(jax.value_and_grad(loss, argnums=range(6), has_aux=True))(
            x, w_ih, b, w_hh, h0, c0
        )

    for a, b_ in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False)), strict=True):
        np.testing.assert_allclose(a, b_, atol=2e-5, rtol=2e-5)


def test_bfloat16_kernel_builds_where_the_cpu_has_it():
    """On a CPU with AVX512_BF16 (CI's) the bfloat16 kernel must build, not fall back."""
    if "avx512_bf16" in kernel_build.cpu_identity().split():
        assert kernel.build_error(jnp.bfloat16) is None
    else:
        assert kernel.build_error(jnp.bfloat16) == kernel_build.NO_BF16


def _require_bf16_kernel():
    if not kernel.available(jnp.bfloat16):
        pytest.skip(f"no bfloat16 kernel here: {kernel.build_error(jnp.bfloat16)}")


def _bf16_close(a, b):
    """Equal to within two bfloat16 roundings (2**-7) of the larger of |b| and 1."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(float(np.abs(b).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(a, b, rtol=2**-7, atol=2**-7 * scale)


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("case", SCAN_CASES, ids=range(len(SCAN_CASES)))
def test_bfloat16_kernel_equals_scan_path(case, threads, monkeypatch):
    """bfloat16 compute: x, h and the weights in bfloat16 with float32 sums, gates and cell
    state, as the lax.scan path computes it; outputs, states and every gradient."""
    _require_bf16_kernel()
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()
    fast, scan = _kernel_and_scan(case, jnp.bfloat16)
    assert jax.tree.map(lambda a: a.dtype, fast) == jax.tree.map(lambda a: a.dtype, scan)
    assert fast[0][1][0].dtype == jnp.bfloat16  # the output stays in the compute dtype
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(scan), strict=True):
        _bf16_close(a, b)


def test_bfloat16_uses_the_kernel_by_default():
    _require_bf16_kernel()
    case = KERNEL_CASES[0]
    assert _uses_kernel(case, dtype=jnp.bfloat16)
    cfg = case.config()
    params = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)
    x = jnp.ones((case.seq_len, case.batch, case.input_size), jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(lambda p: fl.lstm(p, x, config=cfg)[0])(params))
    assert "flax_lstm_cpu_forward_bf16" in jaxpr


def test_bfloat16_without_the_instructions_runs_the_scan(monkeypatch):
    """A kernel built for a CPU without AVX512_BF16 has only the float32 entry points."""
    monkeypatch.setattr(kernel_build, "load", lambda: frozenset({"float32"}))
    case = KERNEL_CASES[0]
    assert not _uses_kernel(case, dtype=jnp.bfloat16)
    assert _uses_kernel(case)  # float32 still runs the kernel
    cfg = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(RuntimeError, match=r"recurrence='kernel'.*AVX512_BF16"):
        fl.lstm(params, jnp.ones((2, 1, 3)), config=cfg, dtype=jnp.bfloat16, impl="kernel")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(70, 130), (1, 5), (64, 64), (129, 3)])
def test_transposed_copy(shape, dtype):
    a = jax.random.normal(jax.random.key(0), shape).astype(dtype)
    got = jax.jit(kernel.transposed_copy)(a)
    assert got.dtype == dtype and got.shape == shape[::-1]
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(a, np.float32).T)
    t = jnp.ones(shape, dtype)
    _, tangent = jax.jvp(kernel.transposed_copy, (a,), (t,))
    np.testing.assert_array_equal(np.asarray(tangent, np.float32), np.ones(shape[::-1]))
    grad = jax.grad(lambda a: (kernel.transposed_copy(a).astype(jnp.float32) ** 2).sum())(a)
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
    return (kernel.input_grad(dz, w_ih, mask), *kernel.weight_grads(dz, x, hs, h0, mask))


@pytest.mark.parametrize(
    "t, d, n, i, h, which",
    [
        (37, 2, 11, 70, 37, "prefix"),  # panels with tails in x and h, two directions
        (9, 1, 7, 3, 5, "random"),  # a mask that is no prefix
        (6, 2, 3, 4, 8, "none"),  # no valid step at all: zero gradients
        (120, 1, 40, 256, 256, "prefix"),  # more valid steps than one packed superblock
    ],
)
def test_ragged_weight_grads(t, d, n, i, h, which, monkeypatch):
    """`kernel.input_grad` and `kernel.weight_grads` equal the GEMMs over every step (dz is zero
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


def test_ragged_float32_uses_the_kernel_weight_grads():
    """With seq_lengths in float32 the weight and input gradients come from the kernel's
    weight-gradient call; a padded batch keeps XLA's GEMMs."""
    cfg = fl.LSTMConfig(3, 16)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jnp.ones((10, 4, 3))

    def jaxpr(**kwargs):
        loss = lambda p: fl.lstm(p, x, config=cfg, impl="kernel", **kwargs)[0].sum()  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(params))

    ragged = jaxpr(seq_lengths=jnp.array([10, 3, 0, 7]))
    assert "flax_lstm_cpu_weight_grads" in ragged and "flax_lstm_cpu_input_grad" in ragged
    assert "flax_lstm_cpu_weight_grads" not in jaxpr()
    # Where nothing needs the input's gradient, its call is left out of the compiled program.
    lengths = jnp.array([10, 3, 0, 7])
    loss = lambda p: fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl="kernel")[0].sum()  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert "flax_lstm_cpu_weight_grads" in hlo and "flax_lstm_cpu_input_grad" not in hlo


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_second_derivatives_through_the_kernel(dtype):
    """Reverse-over-reverse (a Hessian-vector product) runs and equals the scan path's: the
    kernel's calls are differentiated as the lax.scan path they replace."""
    if dtype == jnp.bfloat16:
        _require_bf16_kernel()
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


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"dtype": jnp.float16}, "dtype float16"),
        ({"impl": fl.Implementation(recurrence="kernel", backward="remat")}, "backward='remat'"),
        (
            {"impl": fl.Implementation(recurrence="kernel", backward="autodiff")},
            "backward='autodiff'",
        ),
    ],
)
def test_kernel_requested_where_it_does_not_apply(kwargs, what):
    cfg = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), cfg)
    kwargs = {"impl": "kernel", **kwargs}
    with pytest.raises(ValueError, match=f"recurrence='kernel'.*{what}"):
        fl.lstm(params, jnp.ones((2, 1, 3)), config=cfg, **kwargs)


def test_kernel_requested_with_projection_or_recurrent_dropout():
    cfg = fl.LSTMConfig(3, 4, proj_size=2)
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="proj_size"):
        fl.lstm(params, jnp.ones((2, 1, 3)), config=cfg, impl="kernel")
    cfg = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        fl.lstm(
            params,
            jnp.ones((2, 1, 3)),
            config=cfg,
            impl="kernel",
            dropout_key=jax.random.key(1),
            recurrent_dropout=0.5,
        )


def test_default_falls_back_where_it_does_not_apply():
    case = Case(proj_size=2, input_size=3, hidden_size=20, batch=4)
    assert not _uses_kernel(case)
    assert not _uses_kernel(Case(), impl="scan")
    assert _uses_kernel(Case())  # 6 steps × 3 sequences
    # Under 16 steps × sequences the per-call packing of the weights costs more than it saves.
    assert not _uses_kernel(Case(seq_len=5, batch=3))
    assert not _uses_kernel(Case(seq_len=1, batch=None))
    assert _uses_kernel(Case(seq_len=1, batch=None), impl="kernel")


def test_failed_build_reports_the_compiler_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_LSTM_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernel_build, "SOURCE", bad)
    with pytest.raises(RuntimeError, match="failed"):
        kernel_build.build(kernel_build.compiler())
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return python_process.run("-c", code, check=False, **env)


def test_without_a_compiler_the_scan_path_runs_with_a_warning(tmp_path):
    code = (
        "import warnings, jax, jax.numpy as jnp, flax_lstm as fl\n"
        "from flax_lstm import kernel\n"
        "cfg = fl.LSTMConfig(3, 4)\n"
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
    assert proc.stdout.split() == ["(16,", "1,", "4)", "False", "True"]


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


def test_modules_pass_impl_through():
    """``impl`` of the NNX and Linen modules reaches `fl.lstm`: same numbers both ways."""
    from flax import nnx

    x = jax.random.normal(jax.random.key(1), (2, 12, 3))  # batch-first, 24 steps x sequences
    outs = {}
    for flag in (True, False):
        impl = "kernel" if flag else fl.Implementation(recurrence="scan")
        model = fl.nnx.LSTM(3, 20, num_layers=2, batch_first=True, impl=impl, rngs=nnx.Rngs(0))
        jaxpr = str(jax.make_jaxpr(lambda x, model=model: model(x)[0])(x))
        assert ("flax_lstm_cpu_forward" in jaxpr) == flag
        outs[("nnx", flag)] = model(x)[0]
        module = fl.linen.LSTM(20, num_layers=2, batch_first=True, impl=impl)
        variables = module.init(jax.random.key(0), x)
        jaxpr = str(jax.make_jaxpr(lambda x, v=variables, m=module: m.apply(v, x)[0])(x))
        assert ("flax_lstm_cpu_forward" in jaxpr) == flag
        outs[("linen", flag)] = module.apply(variables, x)[0]
    for kind in ("nnx", "linen"):
        np.testing.assert_allclose(outs[(kind, True)], outs[(kind, False)], atol=1e-6, rtol=1e-6)

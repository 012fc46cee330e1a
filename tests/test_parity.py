"""Parity with torch.nn.LSTM: outputs, final states and every gradient, same weights."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from torch_ref import Case, case_id, compare, make_inputs, make_torch

import flax_lstm as fl

CASES = [
    Case(),
    Case(num_layers=2),
    Case(num_layers=3, bidirectional=True),
    Case(bidirectional=True, with_hx=True),
    Case(bias=False, num_layers=2, with_hx=True),
    Case(batch_first=True, bidirectional=True),
    Case(batch=None),
    Case(batch=None, num_layers=2, bidirectional=True, with_hx=True, proj_size=2),
    Case(proj_size=3),
    Case(proj_size=2, num_layers=2, bidirectional=True, with_hx=True),
    Case(lengths=(6, 2, 4)),
    Case(lengths=(6, 1, 3), bidirectional=True, num_layers=2, with_hx=True),
    Case(lengths=(2, 6, 5), batch_first=True, bidirectional=True, proj_size=2),
    Case(lengths=(3, 3, 6), bias=False, num_layers=3, proj_size=4, with_hx=True),
    Case(input_size=1, hidden_size=1, seq_len=1, batch=1),
    Case(input_size=16, hidden_size=32, seq_len=20, batch=4, num_layers=2, bidirectional=True),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_jit(case):
    compare(case, jit=True)


# One step: the scan multiplies the weights as stored (`flax_lstm.cell.weight_matmul`), where
# longer calls take a transposed copy.
SINGLE_STEPS = [
    Case(seq_len=1),
    Case(seq_len=1, batch=None, with_hx=True),
    Case(seq_len=1, num_layers=2, bidirectional=True, proj_size=2, with_hx=True),
    Case(seq_len=1, batch_first=True, bias=False, proj_size=3, lengths=(1, 1, 1)),
]


@pytest.mark.parametrize("case", SINGLE_STEPS, ids=case_id)
def test_parity_single_step_on_the_scan(case):
    compare(case, impl="scan")


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_parity_eager(case):
    compare(case, jit=False)


@pytest.mark.parametrize("case", [CASES[2], CASES[11], CASES[13]], ids=case_id)
def test_parity_autodiff_backward(case):
    """The plain-autodiff path (backward="autodiff") matches torch as well."""
    compare(case, impl=fl.Implementation(backward="autodiff"))


@pytest.mark.parametrize("hoist_input", [True, False])
@pytest.mark.parametrize("case", [CASES[3], CASES[12], CASES[13]], ids=case_id)
def test_parity_remat_and_unroll(case, hoist_input):
    impl = fl.Implementation(
        backward="remat", unroll=3, hoist_input=hoist_input, fuse_directions=hoist_input
    )
    compare(case, impl=impl)


@pytest.mark.parametrize("case", [CASES[7], CASES[11], CASES[13]], ids=case_id)
def test_parity_other_input_projection(case):
    """The paths this backend does not use by default (on CPU: hoisted input GEMM, both
    directions in one scan; on GPU: in-loop input projection, one scan per direction)."""
    on_cpu = jax.default_backend() == "cpu"
    compare(case, impl=fl.Implementation(hoist_input=on_cpu, fuse_directions=on_cpu))


@st.composite
def cases(draw):
    batch = draw(st.one_of(st.none(), st.integers(1, 4)))
    seq_len = draw(st.integers(1, 7))
    lengths = None
    if batch is not None and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch)))
    hidden = draw(st.integers(1, 6))
    return Case(
        input_size=draw(st.integers(1, 5)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)),
        seq_len=seq_len,
        batch=batch,
        with_hx=draw(st.booleans()),
        lengths=lengths,
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_parity_random_configurations(case):
    compare(case, jit=True)


def test_jit_equals_eager():
    case = Case(num_layers=2, bidirectional=True, lengths=(6, 3, 1), proj_size=2)
    cfg = case.config()
    params = fl.from_torch_state_dict(make_torch(case).state_dict(), cfg)
    x = jnp.asarray(make_inputs(case)["x"])
    lengths = jnp.asarray(case.lengths)
    eager = fl.lstm(params, x, config=cfg, seq_lengths=lengths)
    jitted = jax.jit(fl.lstm, static_argnames="config")(params, x, config=cfg, seq_lengths=lengths)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_vmap_over_extra_batch():
    case = Case(num_layers=2, bidirectional=True, proj_size=2, with_hx=True)
    cfg = case.config()
    params = fl.init_params(jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((4, 6, 3, 3)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((4, 4, 3, 2)), jnp.float32)
    c0 = jnp.asarray(rng.standard_normal((4, 4, 3, 5)), jnp.float32)
    lengths = jnp.asarray(rng.integers(1, 7, size=(4, 3)))

    def one(x, h, c, n):
        return fl.lstm(params, x, (h, c), config=cfg, seq_lengths=n)

    batched = jax.vmap(one)(xs, h0, c0, lengths)
    for i in range(4):
        single = one(xs[i], h0[i], c0[i], lengths[i])
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-6)


def test_traced_out_of_range_lengths_are_clamped():
    """Under jit lengths cannot be checked; they are clamped to [0, L] (documented)."""
    cfg = fl.LSTMConfig(3, 4, bidirectional=True)
    params = fl.init_params(jax.random.key(1), cfg)
    x = jax.random.normal(jax.random.key(2), (5, 2, 3))
    f = jax.jit(lambda n: fl.lstm(params, x, config=cfg, seq_lengths=n))
    for a, b in zip(
        jax.tree.leaves(f(jnp.array([9, -2]))), jax.tree.leaves(f(jnp.array([5, 0]))), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_zero_length_returns_initial_state():
    cfg = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(1), cfg)
    x = jax.random.normal(jax.random.key(2), (5, 2, 3))
    h0 = jax.random.normal(jax.random.key(3), (4, 2, 4))
    c0 = jax.random.normal(jax.random.key(4), (4, 2, 4))
    out, (h, c) = fl.lstm(params, x, (h0, c0), config=cfg, seq_lengths=jnp.array([0, 5]))
    np.testing.assert_array_equal(out[:, 0], 0)
    np.testing.assert_array_equal(h[:, 0], h0[:, 0])
    np.testing.assert_array_equal(c[:, 0], c0[:, 0])


def test_nan_in_padding_does_not_leak():
    """Values past a sequence's length never reach the output or any gradient."""
    cfg = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(1), cfg)
    x = jax.random.normal(jax.random.key(2), (5, 2, 3)).at[3:, 1].set(jnp.nan)
    lengths = jnp.array([5, 3])

    def loss(p, x):
        out, (h, c) = fl.lstm(p, x, config=cfg, seq_lengths=lengths)
        return out.sum() + h.sum() + c.sum()

    value, (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(gp))
    assert np.isfinite(gx).all() and (gx[3:, 1] == 0).all()

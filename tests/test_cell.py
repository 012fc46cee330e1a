"""The pure step: torch.nn.LSTMCell parity, scan vs a Python loop, reverse vs flipped input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

import flax_lstm as fl


def _torch_cell_params(cell: torch.nn.LSTMCell) -> dict:
    names = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
    return {names[k]: jnp.asarray(v.detach().numpy()) for k, v in cell.named_parameters()}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_torch_lstmcell(bias, batched, with_state):
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 6, bias=bias)
    rng = np.random.default_rng(0)
    shape = (3,) if batched else ()
    x = rng.standard_normal((*shape, 4)).astype(np.float32)
    state = None
    if with_state:
        state = (
            rng.standard_normal((*shape, 6)).astype(np.float32),
            rng.standard_normal((*shape, 6)).astype(np.float32),
        )
    want_h, want_c = cell(
        torch.tensor(x), None if state is None else tuple(map(torch.tensor, state))
    )
    h, c = fl.lstm_cell(_torch_cell_params(cell), x, state)
    np.testing.assert_allclose(h, want_h.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(c, want_c.detach().numpy(), atol=1e-6)


def test_cell_gradients_match_torch():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 6)
    rng = np.random.default_rng(1)
    x, h, c = (rng.standard_normal((3, n)).astype(np.float32) for n in (4, 6, 6))
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h, c))
    hh, cc = cell(tx, (th, tc))
    (hh.sum() * 2 + (cc * cc).sum()).backward()

    def loss(p, x, h, c):
        hh, cc = fl.lstm_cell(p, x, (h, c))
        return hh.sum() * 2 + (cc * cc).sum()

    gp, gx, gh, gc = jax.grad(loss, argnums=(0, 1, 2, 3))(_torch_cell_params(cell), x, h, c)
    np.testing.assert_allclose(gx, tx.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(gh, th.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(gc, tc.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(gp["w_hh"], cell.weight_hh.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_equals_python_loop_over_cell(proj_size, bidirectional):
    """`lstm` equals a plain Python loop of `lstm_cell` over time, layers and directions."""
    cfg = fl.LSTMConfig(3, 5, num_layers=2, bidirectional=bidirectional, proj_size=proj_size)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (7, 2, 3))
    out, (h_n, c_n) = fl.lstm(params, x, config=cfg)

    layer_in, hs, cs = x, [], []
    for k in range(cfg.num_layers):
        outs = []
        for d in range(cfg.num_directions):
            p = fl.cell_params(params, k, d)
            state = None
            steps = range(7) if d == 0 else reversed(range(7))
            ys = [None] * 7
            for t in steps:
                state = fl.lstm_cell(p, layer_in[t], state)
                ys[t] = state.h
            outs.append(jnp.stack(ys))
            hs.append(state.h)
            cs.append(state.c)
        layer_in = jnp.concatenate(outs, axis=-1)
    np.testing.assert_allclose(out, layer_in, atol=1e-6)
    np.testing.assert_allclose(h_n, jnp.stack(hs), atol=1e-6)
    np.testing.assert_allclose(c_n, jnp.stack(cs), atol=1e-6)


def test_reverse_direction_equals_forward_on_flipped_input():
    cfg = fl.LSTMConfig(3, 4, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg)
    fwd_cfg = fl.LSTMConfig(3, 4)
    reverse_only = [{k: v[1:] for k, v in params[0].items()}]
    x = jax.random.normal(jax.random.key(1), (6, 2, 3))
    out, (h_n, c_n) = fl.lstm(params, x, config=cfg)
    out_r, (h_r, c_r) = fl.lstm(reverse_only, x[::-1], config=fwd_cfg)
    np.testing.assert_allclose(out[..., 4:], out_r[::-1], atol=1e-6)
    np.testing.assert_allclose(h_n[1], h_r[0], atol=1e-6)
    np.testing.assert_allclose(c_n[1], c_r[0], atol=1e-6)


def test_reverse_with_lengths_equals_flipping_each_sequence():
    cfg = fl.LSTMConfig(3, 4, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg)
    fwd_cfg = fl.LSTMConfig(3, 4)
    reverse_only = [{k: v[1:] for k, v in params[0].items()}]
    x = jax.random.normal(jax.random.key(1), (6, 2, 3))
    out, (h_n, _) = fl.lstm(params, x, config=cfg, seq_lengths=jnp.array([6, 4]))
    for b, n in enumerate([6, 4]):
        out_r, (h_r, _) = fl.lstm(reverse_only, x[:n, b][::-1], config=fwd_cfg)
        np.testing.assert_allclose(out[:n, b, 4:], out_r[::-1], atol=1e-6)
        np.testing.assert_allclose(h_n[1, b], h_r[0], atol=1e-6)


@pytest.mark.parametrize("proj_size", [0, 2])
def test_custom_vjp_equals_autodiff(proj_size):
    cfg = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True, proj_size=proj_size)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (6, 3, 3))
    lengths = jnp.array([6, 2, 4])

    def loss(p, x, **kw):
        out, (h, c), states = fl.lstm(
            p,
            x,
            config=cfg,
            seq_lengths=lengths,
            return_all_states=True,
            dropout_key=jax.random.key(3),
            recurrent_dropout=0.3,
            **kw,
        )
        return (
            jnp.sin(out).sum()
            + (h**2).sum()
            + c.sum()
            + jnp.cos(states.c).sum()
            + (states.h**3).sum()
        )

    got = jax.grad(loss, argnums=(0, 1))(params, x)
    autodiff = fl.Implementation(backward="autodiff")
    want = jax.grad(loss, argnums=(0, 1))(params, x, impl=autodiff)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backward", ["custom", "remat"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_check_grads(backward, proj_size):
    """Numerical gradient check of the hand-written backward, in float64 on small shapes."""
    with jax.enable_x64(True):
        cfg = fl.LSTMConfig(2, 3, num_layers=2, bidirectional=True, proj_size=proj_size)
        params = fl.init_params(jax.random.key(0), cfg, dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 2, 2), jnp.float64)
        h0 = jax.random.normal(jax.random.key(2), (4, 2, cfg.output_size), jnp.float64)
        c0 = jax.random.normal(jax.random.key(3), (4, 2, 3), jnp.float64)

        def f(p, x, h0, c0):
            out, (h, c) = fl.lstm(
                p,
                x,
                (h0, c0),
                config=cfg,
                seq_lengths=jnp.array([4, 3]),
                impl=fl.Implementation(backward=backward),
            )
            return jnp.sin(out).sum() + (h * c[..., : h.shape[-1]]).sum()

        check_grads(f, (params, x, h0, c0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
        # Reverse-over-reverse: the backward is itself differentiable.
        check_grads(
            lambda x: jax.grad(f, argnums=1)(params, x, h0, c0).sum(),
            (x,),
            order=1,
            modes=["rev"],
            atol=1e-5,
            rtol=1e-5,
        )

"""Flax's RNN cell protocol on `flax_lstm.nnx.LSTMCell` and `flax_lstm.linen.LSTMCell`
(`flax_lstm._flax_cell`): Flax's own wrappers (``nnx.RNN``, ``nnx.Bidirectional``,
``nnx.scan``, ``nn.RNN``, ``nn.Bidirectional``, ``nn.scan``) run the cells and give the
results of `flax_lstm.lstm` and ``torch.nn.LSTM`` on the same weights; torch's call stays."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import flax_lstm as fl

TOL = 1e-5
N, L, IN, H = 3, 6, 4, 5
LENGTHS = np.array([6, 2, 4])


def _x(shape=(N, L, IN), seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _torch_lstm(bidirectional=False):
    torch.manual_seed(0)
    return torch.nn.LSTM(IN, H, batch_first=True, bidirectional=bidirectional)


def _direction_state_dict(torch_lstm, suffix=""):
    """The torch.nn.LSTMCell state dict of one direction of a one-layer torch.nn.LSTM."""
    sd = torch_lstm.state_dict()
    return {
        name: sd[f"{name}_l0{suffix}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }


def _torch_forward(torch_lstm, x, lengths=None):
    """torch's output (N, L, D·H), zero past each length, and h_n (D, N, H)."""
    with torch.no_grad():
        if lengths is None:
            out, (h_n, _) = torch_lstm(torch.from_numpy(x))
            return out.numpy(), h_n.numpy()
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        out, (h_n, _) = torch_lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
        return out.numpy(), h_n.numpy()


def _valid(out, lengths):
    """``out`` (N, L, F) with the steps past each length zeroed (Flax's RNN runs on)."""
    return np.where(np.arange(L)[None, :, None] < lengths[:, None, None], out, 0)


def _lstm(cell_params, x, **kwargs):
    """`flax_lstm.lstm` with one layer of the given cells' params (one dict per direction)."""
    layer = {k: jnp.stack([p[k] for p in cell_params]) for k in cell_params[0]}
    config = fl.LSTMConfig(IN, H, batch_first=True, bidirectional=len(cell_params) == 2)
    return fl.lstm([layer], x, config=config, **kwargs)


# ---- NNX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_nnx_rnn_equals_lstm_and_torch(lengths):
    torch_lstm = _torch_lstm()
    cell = fl.nnx.LSTMCell.from_torch(_direction_state_dict(torch_lstm))
    x = _x()
    carry, out = nnx.RNN(cell, return_carry=True)(x, seq_lengths=lengths)
    assert isinstance(carry, fl.LSTMCarry)
    want, (h_n, c_n) = _lstm([cell.cell_params()], x, seq_lengths=lengths)
    torch_out, torch_h = _torch_forward(torch_lstm, x, lengths)
    if lengths is not None:
        out = _valid(out, lengths)
    np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
    np.testing.assert_allclose(out, torch_out, atol=TOL, rtol=0)
    np.testing.assert_allclose(carry.h, h_n[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(carry.c, c_n[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(carry.h, torch_h[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_nnx_bidirectional_equals_lstm_and_torch(lengths):
    torch_lstm = _torch_lstm(bidirectional=True)
    forward = fl.nnx.LSTMCell.from_torch(_direction_state_dict(torch_lstm))
    backward = fl.nnx.LSTMCell.from_torch(_direction_state_dict(torch_lstm, "_reverse"))
    layer = nnx.Bidirectional(nnx.RNN(forward), nnx.RNN(backward))
    x = _x()
    out = layer(x, seq_lengths=lengths)
    want, _ = _lstm([forward.cell_params(), backward.cell_params()], x, seq_lengths=lengths)
    if lengths is not None:
        out = _valid(out, lengths)
    np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
    np.testing.assert_allclose(out, _torch_forward(torch_lstm, x, lengths)[0], atol=TOL, rtol=0)


def test_nnx_scan_equals_lstm_cell_step_by_step():
    cell = fl.nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
    x = _x((L, N, IN))  # time-major for the scan

    @nnx.scan(in_axes=(nnx.Carry, None, 0), out_axes=(nnx.Carry, 0))
    def run(carry, cell, x_t):
        return cell(carry, x_t)

    carry, ys = run(cell.initialize_carry(x.shape[1:]), cell, x)
    state = None
    for t in range(L):  # torch's call, one step at a time
        state = fl.lstm_cell(cell.cell_params(), x[t], state)
        np.testing.assert_allclose(ys[t], state.h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(carry.h, state.h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(carry.c, state.c, atol=1e-6, rtol=0)


def test_nnx_plain_tuple_carry_and_initial_state():
    """A ``(c, h)`` tuple as the carry (Flax's own cells' type) stays a tuple; a nonzero one
    equals `flax_lstm.lstm` with ``hx = (h, c)``."""
    cell = fl.nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
    x, h0, c0 = _x(), _x((N, H), 1), _x((N, H), 2)
    carry, out = nnx.RNN(cell, return_carry=True)(x, initial_carry=(c0, h0))
    assert type(carry) is tuple
    want, (h_n, c_n) = _lstm([cell.cell_params()], x, hx=(h0[None], c0[None]))
    np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
    np.testing.assert_allclose(carry[0], c_n[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(carry[1], h_n[0], atol=TOL, rtol=0)


def test_nnx_batch_axes_and_unbatched():
    """Flax's convention: every axis before the features is a batch axis; none is unbatched."""
    cell = fl.nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
    x = _x((2, N, L, IN))
    out = nnx.RNN(cell)(x)
    assert out.shape == (2, N, L, H)
    np.testing.assert_allclose(out[1], nnx.RNN(cell)(x[1]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[1, 2], nnx.RNN(cell)(x[1, 2]), atol=1e-6, rtol=0)


def test_nnx_carry_dtypes_hold_through_the_scan():
    """bfloat16 compute: ``h`` in bfloat16, ``c`` in float32, as `flax_lstm.lstm_cell`."""
    cell = fl.nnx.LSTMCell(IN, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((N, IN))
    assert (carry.c.dtype, carry.h.dtype) == (jnp.float32, jnp.bfloat16)
    carry, out = nnx.RNN(cell, return_carry=True)(_x())
    assert (carry.c.dtype, carry.h.dtype, out.dtype) == (jnp.float32, jnp.bfloat16, jnp.bfloat16)


def test_torch_call_and_flax_call_agree():
    cell = fl.nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
    x, h0, c0 = _x((N, IN)), _x((N, H), 1), _x((N, H), 2)
    h, c = cell(x, (h0, c0))  # torch's call
    carry, y = cell(fl.LSTMCarry(c0, h0), x)  # Flax's call
    np.testing.assert_array_equal(carry.h, h)
    np.testing.assert_array_equal(carry.c, c)
    np.testing.assert_array_equal(y, h)
    assert cell.num_feature_axes == 1 and isinstance(cell, nnx.RNNCellBase)


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_a_state_in_the_wrong_call_is_a_type_error(kind):
    x, h, c = _x((N, IN)), _x((N, H), 1), _x((N, H), 2)
    if kind == "nnx":
        call = fl.nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
    else:
        cell = fl.linen.LSTMCell(H)
        variables = cell.init(jax.random.key(0), x)

        def call(*args):
            return cell.apply(variables, *args)

    with pytest.raises(TypeError, match=r"LSTMState \(h, c\) as the carry"):
        call(fl.LSTMState(h, c), x)
    with pytest.raises(TypeError, match=r"got an LSTMCarry \(c, h\)"):
        call(x, fl.LSTMCarry(c, h))
    with pytest.raises(TypeError, match="needs x"):
        call((c, h))
    with pytest.raises(TypeError, match=r"a pair \(c, h\)"):
        call((c, h, h), x)


# ---- Linen --------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_linen_rnn_equals_lstm_and_torch(lengths):
    torch_lstm = _torch_lstm()
    cell, variables = fl.linen.LSTMCell.from_torch(_direction_state_dict(torch_lstm))
    rnn = nn.RNN(cell, return_carry=True)
    x = _x()
    assert jax.tree.map(jnp.shape, rnn.init(jax.random.key(0), x)["params"]["cell"]) == (
        jax.tree.map(jnp.shape, variables["params"])
    )
    carry, out = rnn.apply({"params": {"cell": variables["params"]}}, x, seq_lengths=lengths)
    want, (h_n, c_n) = _lstm([variables["params"]], x, seq_lengths=lengths)
    if lengths is not None:
        out = _valid(out, lengths)
    np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
    np.testing.assert_allclose(out, _torch_forward(torch_lstm, x, lengths)[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(carry.h, h_n[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(carry.c, c_n[0], atol=TOL, rtol=0)


def test_linen_bidirectional_equals_lstm_and_torch():
    torch_lstm = _torch_lstm(bidirectional=True)
    _, fwd = fl.linen.LSTMCell.from_torch(_direction_state_dict(torch_lstm))
    _, bwd = fl.linen.LSTMCell.from_torch(_direction_state_dict(torch_lstm, "_reverse"))
    layer = nn.Bidirectional(nn.RNN(fl.linen.LSTMCell(H)), nn.RNN(fl.linen.LSTMCell(H)))
    x = _x()
    variables = layer.init(jax.random.key(0), x)
    names = sorted(variables["params"])  # forward_rnn, backward_rnn
    assert names == ["backward_rnn", "forward_rnn"]
    params = {"forward_rnn": {"cell": fwd["params"]}, "backward_rnn": {"cell": bwd["params"]}}
    out = layer.apply({"params": params}, x, seq_lengths=LENGTHS)
    want, _ = _lstm([fwd["params"], bwd["params"]], x, seq_lengths=LENGTHS)
    np.testing.assert_allclose(_valid(out, LENGTHS), want, atol=TOL, rtol=0)
    torch_out = _torch_forward(torch_lstm, x, LENGTHS)[0]
    np.testing.assert_allclose(_valid(out, LENGTHS), torch_out, atol=TOL, rtol=0)


def test_linen_scan_equals_lstm_cell_step_by_step():
    cell = fl.linen.LSTMCell(H)
    x = _x((L, N, IN))
    scanned = nn.scan(
        fl.linen.LSTMCell,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=0,
        out_axes=0,
    )(H)
    carry = cell.initialize_carry(jax.random.key(1), x.shape[1:])
    variables = scanned.init(jax.random.key(0), carry, x)
    carry, ys = scanned.apply(variables, carry, x)
    state = None
    for t in range(L):
        state = cell.apply(variables, x[t], state)  # torch's call, one step at a time
        np.testing.assert_allclose(ys[t], state.h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(carry.c, state.c, atol=1e-6, rtol=0)
    assert cell.num_feature_axes == 1 and isinstance(cell, nn.RNNCellBase)

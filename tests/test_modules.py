"""What the NNX and Linen modules share, tested once for both (`module_kinds` adapter):
constructor and call errors, recurrent dropout, learnable initial state, per-step states, and
the cell stepped by hand against the LSTM. Kind-specific tests: test_nnx.py, test_linen.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import module_kinds as mk
import numpy as np
import pytest
import torch
from module_kinds import KINDS
from torch_ref import same_error

import flax_lstm as fl
from flax_lstm import streaming

_lstm = jax.jit(fl.lstm, static_argnames=("config", "recurrent_dropout"))


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 0},
        {"num_layers": 0},
        {"proj_size": 4},
        {"proj_size": -1},
        {"dropout": 1.5},
        {"dropout": -0.5},
        {"hidden_size": 4.0},
        {"num_layers": 2.0},
        {"bias": "yes"},
        {"bidirectional": 3},
    ],
)
def test_constructor_errors_match_config(kind, kwargs):
    args = {"hidden_size": 4, **kwargs}
    same_error(
        lambda: mk.construct(kind, 3, **args),
        lambda: fl.LSTMConfig(input_size=3, **args),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "call",
    [
        {"x": np.ones((5, 2, 4), np.float32)},  # input size differs from the params'
        {"x": np.ones((2, 5, 2, 3), np.float32)},  # wrong rank
        {"x": np.ones((5, 2, 3), np.int32)},  # not floating
        {"hx": (np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))},  # wrong layer count
        {"hx": (np.zeros((2, 2, 4)), np.zeros((2, 2, 5)))},  # wrong hidden size
        {"hx": np.zeros((2, 2, 4))},  # not a pair
        {"seq_lengths": np.array([5, 6])},  # longer than the input
        {"seq_lengths": np.array([5])},  # wrong batch
        {"seq_lengths": np.array([1.0, 2.0])},  # not integers
        {"seq_lengths": np.array([-1, 2])},  # negative
    ],
)
@pytest.mark.parametrize("learnable", [False, True])
def test_call_errors_match_functional(kind, call, learnable):
    """With a learnable initial state too: the module broadcasts it before `fl.lstm` checks."""
    made = mk.make_lstm(kind, 3, 4, 2, learnable_initial_state=learnable)
    x = call.get("x", np.ones((5, 2, 3), np.float32))
    kwargs = {k: v for k, v in call.items() if k != "x"}
    hx = kwargs.pop("hx", None)
    same_error(
        lambda: mk.call_eagerly(made, x, hx, **kwargs),
        lambda: fl.lstm(mk.lstm_params(made), x, hx, config=mk.config(made), **kwargs),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_dropout(kind):
    made = mk.make_lstm(kind, 3, 4, 2, recurrent_dropout=0.4)
    x = _x((5, 2, 3))
    params, config = mk.lstm_params(made), mk.config(made)
    plain = _lstm(params, x, config=config)[0]
    np.testing.assert_array_equal(mk.call(made, x)[0], plain)  # off when deterministic
    key = jax.random.key(3)
    out, (_, c) = mk.call(made, x, train=True, key=key)
    np.testing.assert_array_equal(out, mk.call(made, x, train=True, key=key)[0])
    assert not np.allclose(out, plain, atol=1e-4)
    if kind == "nnx":  # the key given to an NNX call is the key the core gets
        want = _lstm(params, x, config=config, dropout_key=key, recurrent_dropout=0.4)
        np.testing.assert_array_equal(out, want[0])
        np.testing.assert_array_equal(c, want[1][1])
        made.module.eval()  # and model.eval() turns it off: torch parity
        np.testing.assert_array_equal(
            mk.nnx_call(made.module, x, None, None, None, None, False)[0], plain
        )
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"recurrent_dropout must be in \[0, 1\)"):
            mk.construct(kind, 3, 4, recurrent_dropout=rate)


@pytest.mark.parametrize("kind", KINDS)
def test_learnable_initial_state(kind):
    made = mk.make_lstm(kind, 3, 4, 2, learnable_initial_state=True)
    assert made.module.learnable_initial_state
    params = mk.params_of(made)
    assert params["h0"].shape == (2, 4) and params["c0"].shape == (2, 4)
    assert not params["h0"].any() and not params["c0"].any()  # initialised to zeros
    x = _x((5, 2, 3))
    zero = _lstm(mk.lstm_params(made), x, config=mk.config(made))[0]
    np.testing.assert_array_equal(mk.call(made, x)[0], zero)

    made = mk.set_params(made, h0=_x((2, 4), 1), c0=_x((2, 4), 2))
    h0, c0 = mk.initial_state(made, 2)
    assert h0.shape == (2, 2, 4)
    want = _lstm(mk.lstm_params(made), x, (h0, c0), config=mk.config(made))[0]
    np.testing.assert_array_equal(mk.call(made, x)[0], want)
    np.testing.assert_allclose(mk.call(made, x[:, 0])[0], want[:, 0], atol=1e-6)  # unbatched
    hx = streaming.zero_state(mk.config(made), 2)
    np.testing.assert_array_equal(mk.call(made, x, hx)[0], zero)  # an explicit hx wins

    (_, _), (grads, _) = mk.value_and_grad(made, lambda f, x: (f(x)[0].sum(), None), x)
    g = mk.pure(grads)
    assert np.abs(g["h0"]).sum() > 0 and np.abs(g["c0"]).sum() > 0
    torch_names = list(torch.nn.LSTM(3, 4, 2).state_dict())
    assert list(mk.to_torch_state_dict(made)) == torch_names  # h0, c0 are left out
    assert list(mk.to_torch_state_dict(made, grads)) == torch_names


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("options", "lengths"),
    [({}, None), ({"proj_size": 2}, [5, 3]), ({"batch_first": True}, None)],
    ids=["plain", "proj_size-seq_lengths", "batch_first"],
)
def test_per_step_states(kind, options, lengths):
    made = mk.make_lstm(kind, 3, 4, 2, **options)
    batch_first = options.get("batch_first", False)
    x = _x((2, 5, 3) if batch_first else (5, 2, 3))
    lengths = None if lengths is None else jnp.array(lengths)
    out, (h_n, c_n), states = mk.call(made, x, seq_lengths=lengths, states=True)
    assert isinstance(states, fl.LSTMState)
    h_out = options.get("proj_size", 4)
    if batch_first:
        assert states.h.shape == (2, 5, 2, 4)  # N, L, D·layers, H
        np.testing.assert_array_equal(states.h[:, :, -1], out)
        return
    assert states.h.shape == (5, 2, 2, h_out) and states.c.shape == (5, 2, 2, 4)  # L, D·l, N
    np.testing.assert_array_equal(states.h[:, -1], out)  # the last layer's h is the output
    np.testing.assert_array_equal(states.h[:, 1], out)
    if lengths is None:
        np.testing.assert_array_equal(states.h[-1], h_n)
        np.testing.assert_array_equal(states.c[-1], c_n)
    for n, length in enumerate(np.asarray(lengths if lengths is not None else [5, 5])):
        np.testing.assert_array_equal(states.h[length - 1, :, n], h_n[:, n])
        np.testing.assert_array_equal(states.c[length - 1, :, n], c_n[:, n])
        assert (states.h[length:, :, n] == 0).all()
    np.testing.assert_array_equal(mk.call(made, x, seq_lengths=lengths)[0], out)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_cell_steps_match_the_lstm(kind, num_layers):
    """The LSTMCell stepped by hand equals the LSTM's first layer (same weights)."""
    made = mk.make_lstm(kind, 3, 4, num_layers)
    cell = mk.make_cell(kind, 3, 4, params=fl.cell_params(mk.lstm_params(made)))  # layer 0
    assert jax.tree.map(jnp.shape, mk.cell_params(cell)) == jax.tree.map(
        jnp.shape, mk.cell_params(mk.make_cell(kind, 3, 4))
    )
    x = _x((5, 2, 3))

    @jax.jit
    def unrolled(cell_params, x):
        step = mk.make_cell(kind, 3, 4, params=cell_params)
        h, c = mk.call_cell(step, x[0])
        steps = [h]
        for t in range(1, x.shape[0]):
            h, c = mk.call_cell(step, x[t], (h, c))
            steps.append(h)
        return jnp.stack(steps)

    out, _, states = mk.call(made, x, states=True)
    got = unrolled(mk.cell_params(cell), x)
    np.testing.assert_allclose(got, states.h[:, 0], atol=1e-6, rtol=0)
    if num_layers == 1:  # the output is the first layer's h
        np.testing.assert_allclose(got, out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        mk.construct_cell(kind, 3, 0)

"""flax_lstm.nnx: train/eval dropout, recurrent dropout, learnable initial state, per-step states,
jit trace counts, Orbax checkpoints, and the functional API's errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from torch_ref import same_error

import flax_lstm as fl
from flax_lstm import nnx as fl_nnx
from flax_lstm import streaming


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@nnx.jit(static_argnames=("deterministic", "return_all_states"))
def _call(
    model, x, hx=None, seq_lengths=None, key=None, deterministic=None, return_all_states=False
):
    """The model's forward, jitted once per module configuration across the tests."""
    return model(
        x,
        hx,
        seq_lengths=seq_lengths,
        deterministic=deterministic,
        rngs=key,
        return_all_states=return_all_states,
    )


_lstm = jax.jit(fl.lstm, static_argnames=("config", "recurrent_dropout"))


def test_train_dropout_is_random_eval_equals_torch():
    torch.manual_seed(0)
    torch_lstm = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval()
    model = fl_nnx.LSTM.from_torch(torch_lstm, rngs=nnx.Rngs(0))
    x = _x((5, 2, 3))
    with torch.no_grad():
        want = torch_lstm(torch.from_numpy(x))[0].numpy()

    assert not model.deterministic  # a fresh module trains, as torch's does
    count = int(model.rngs.count[...])
    out1, _ = _call(model, x)
    out2, _ = _call(model, x)
    assert int(model.rngs.count[...]) == count + 2  # one key from the module's stream per call
    assert not np.allclose(out1, want, atol=1e-3)  # dropout changes the output
    assert not np.allclose(out1, out2, atol=1e-3)  # and draws a fresh mask every call

    model.eval()
    assert model.deterministic
    out3, _ = _call(model, x)
    np.testing.assert_array_equal(out3, _call(model, x)[0])
    np.testing.assert_allclose(out3, want, atol=1e-5, rtol=0)
    assert int(model.rngs.count[...]) == count + 2  # eval draws no key

    model.train()
    assert not np.allclose(_call(model, x)[0], out3, atol=1e-3)
    # The per-call override and nnx.view give the eval result without changing the module.
    np.testing.assert_array_equal(_call(model, x, deterministic=True)[0], out3)
    np.testing.assert_array_equal(_call(nnx.view(model, deterministic=True), x)[0], out3)
    assert not model.deterministic

    # A key passed to the call replaces the module's stream; it is what the core gets.
    key = jax.random.key(7)
    a = _call(model, x, key=key)[0]
    np.testing.assert_array_equal(a, _call(model, x, key=key)[0])
    np.testing.assert_array_equal(
        a, _lstm(model.lstm_params(), x, config=model.config, dropout_key=key)[0]
    )


def test_no_dropout_stream_needed_without_dropout():
    model = fl_nnx.LSTM(3, 4, rngs=nnx.Rngs(params=0))
    assert model.rngs is None
    with pytest.raises(ValueError, match="'dropout'"):
        fl_nnx.LSTM(3, 4, 2, dropout=0.5, rngs=nnx.Rngs(params=0))


def test_recurrent_dropout():
    model = fl_nnx.LSTM(3, 4, 2, recurrent_dropout=0.4, rngs=nnx.Rngs(0))
    x = _x((5, 2, 3))
    key = jax.random.key(3)
    out, (_, c) = _call(model, x, key=key)
    want = _lstm(
        model.lstm_params(), x, config=model.config, dropout_key=key, recurrent_dropout=0.4
    )
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(c, want[1][1])
    plain = _lstm(model.lstm_params(), x, config=model.config)[0]
    assert not np.allclose(out, plain, atol=1e-4)
    model.eval()
    np.testing.assert_array_equal(_call(model, x)[0], plain)  # off in eval: torch parity
    with pytest.raises(ValueError, match=r"recurrent_dropout must be in \[0, 1\)"):
        fl_nnx.LSTM(3, 4, recurrent_dropout=1.0, rngs=nnx.Rngs(0))


def test_learnable_initial_state():
    model = fl_nnx.LSTM(3, 4, 2, learnable_initial_state=True, rngs=nnx.Rngs(0))
    assert model.learnable_initial_state
    params = nnx.state(model, nnx.Param)
    assert params["h0"][...].shape == (2, 4) and params["c0"][...].shape == (2, 4)
    x = _x((5, 2, 3))
    zero = _lstm(model.lstm_params(), x, config=model.config)[0]
    np.testing.assert_array_equal(_call(model, x)[0], zero)  # initialised to zeros

    model.h0[...] = jnp.asarray(_x((2, 4), 1))
    model.c0[...] = jnp.asarray(_x((2, 4), 2))
    h0, c0 = model.initial_state(2)
    assert h0.shape == (2, 2, 4)
    want = _lstm(model.lstm_params(), x, (h0, c0), config=model.config)[0]
    np.testing.assert_array_equal(_call(model, x)[0], want)
    np.testing.assert_allclose(_call(model, x[:, 0])[0], want[:, 0], atol=1e-6)  # unbatched
    hx = streaming.zero_state(model.config, 2)
    np.testing.assert_array_equal(_call(model, x, hx)[0], zero)  # an explicit hx wins

    grads = nnx.jit(nnx.grad(lambda model: model(x)[0].sum()))(model)
    assert np.abs(grads["h0"][...]).sum() > 0 and np.abs(grads["c0"][...]).sum() > 0
    assert list(model.to_torch_state_dict()) == list(torch.nn.LSTM(3, 4, 2).state_dict())


def test_per_step_states():
    model = fl_nnx.LSTM(3, 4, 2, proj_size=2, rngs=nnx.Rngs(0))
    x = _x((5, 2, 3))
    lengths = jnp.array([5, 3])
    out, (h_n, c_n), states = _call(model, x, seq_lengths=lengths, return_all_states=True)
    assert isinstance(states, fl.LSTMState)
    assert states.h.shape == (5, 2, 2, 2) and states.c.shape == (5, 2, 2, 4)  # L, D·layers, N
    np.testing.assert_array_equal(states.h[:, -1], out)  # the last layer's h is the output
    for n, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(states.h[length - 1, :, n], h_n[:, n])
        np.testing.assert_array_equal(states.c[length - 1, :, n], c_n[:, n])
        assert (states.h[length:, :, n] == 0).all()
    np.testing.assert_array_equal(_call(model, x, seq_lengths=lengths)[0], out)


def test_per_step_states_batch_first():
    model = fl_nnx.LSTM(3, 4, 2, batch_first=True, rngs=nnx.Rngs(0))
    x = _x((2, 5, 3))
    out, _, states = _call(model, x, return_all_states=True)
    assert states.h.shape == (2, 5, 2, 4)  # N, L, D·layers, H
    np.testing.assert_array_equal(states.h[:, :, -1], out)


def test_jit_train_step_traces_once():
    model = fl_nnx.LSTM(3, 4, 2, dropout=0.2, recurrent_dropout=0.1, rngs=nnx.Rngs(0))
    modules = nnx.List([model, nnx.Linear(4, 1, rngs=nnx.Rngs(1))])
    optimizer = nnx.Optimizer(modules, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def train_step(modules, optimizer, x, y):
        def loss_fn(modules):
            lstm, head = modules
            out, _ = lstm(x)
            return jnp.mean((head(out[-1]) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(modules)
        optimizer.update(modules, grads)
        return loss

    losses = [
        float(train_step(modules, optimizer, _x((5, 2, 3), i), _x((2, 1), 10 + i)))
        for i in range(4)
    ]
    assert all(np.isfinite(losses))
    before = model.lstm_params()[0]["w_hh"]
    train_step(modules, optimizer, _x((5, 2, 3), 9), _x((2, 1), 9))
    assert not np.array_equal(model.lstm_params()[0]["w_hh"], before)  # the module was updated


def test_orbax_round_trip(tmp_path):
    def build(seed):
        return fl_nnx.LSTM(3, 4, 2, dropout=0.3, learnable_initial_state=True, rngs=nnx.Rngs(seed))

    model = build(0)
    model.h0[...] = jnp.ones_like(model.h0[...])
    graphdef, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "lstm", state)
    checkpointer.wait_until_finished()
    abstract = nnx.state(nnx.eval_shape(lambda: build(1)))
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "lstm", abstract))
    x = _x((5, 2, 3))
    # Training mode too: the dropout stream (key and count) is part of the state.
    np.testing.assert_array_equal(_call(restored, x)[0], _call(model, x)[0])
    model.eval()
    restored.eval()
    np.testing.assert_array_equal(_call(restored, x)[0], _call(model, x)[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 0},
        {"num_layers": 0},
        {"proj_size": 4},
        {"proj_size": -1},
        {"dropout": 1.5},
        {"hidden_size": 4.0},
        {"bias": "yes"},
    ],
)
def test_constructor_errors_match_config(kwargs):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    same_error(
        lambda: fl_nnx.LSTM(**args, rngs=nnx.Rngs(0)),
        lambda: fl.LSTMConfig(**args),
    )


def test_dropout_warning_with_one_layer():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fl_nnx.LSTM(3, 4, dropout=0.5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "call",
    [
        {"x": np.ones((5, 2, 4), np.float32)},  # wrong input size
        {"x": np.ones((2, 5, 2, 3), np.float32)},  # wrong rank
        {"x": np.ones((5, 2, 3), np.int32)},  # not floating
        {"hx": (np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))},  # wrong layer count
        {"hx": np.zeros((2, 2, 4))},  # not a pair
        {"seq_lengths": np.array([5, 6])},  # longer than the input
        {"seq_lengths": np.array([5])},  # wrong batch
    ],
)
def test_call_errors_match_functional(call):
    model = fl_nnx.LSTM(3, 4, 2, rngs=nnx.Rngs(0))
    x = call.get("x", np.ones((5, 2, 3), np.float32))
    kwargs = {k: v for k, v in call.items() if k != "x"}
    hx = kwargs.pop("hx", None)
    same_error(
        lambda: model(x, hx, **kwargs),
        lambda: fl.lstm(model.lstm_params(), x, hx, config=model.config, **kwargs),
    )


def test_cell_steps_match_the_lstm():
    """nnx.LSTMCell stepped by hand equals nnx.LSTM over the sequence (same weights)."""
    model = fl_nnx.LSTM(3, 4, rngs=nnx.Rngs(0))
    cell = fl_nnx.LSTMCell(3, 4, rngs=nnx.Rngs(1))
    for name, value in fl.cell_params(model.lstm_params()).items():
        getattr(cell, name)[...] = value
    x = _x((5, 2, 3))

    @nnx.jit
    def unrolled(cell, x):
        h, c = cell(x[0])
        steps = [h]
        for t in range(1, x.shape[0]):
            h, c = cell(x[t], (h, c))
            steps.append(h)
        return jnp.stack(steps)

    np.testing.assert_allclose(unrolled(cell, x), _call(model, x)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        fl_nnx.LSTMCell(3, 0, rngs=nnx.Rngs(0))

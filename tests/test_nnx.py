"""flax_lstm.nnx only: train/eval dropout and the module's dropout stream, jit trace counts,
Orbax checkpoints. What NNX and Linen share is tested for both in test_modules.py."""

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

import flax_lstm as fl
from flax_lstm import nnx as fl_nnx


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


def test_dropout_warning_with_one_layer():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fl_nnx.LSTM(3, 4, dropout=0.5, rngs=nnx.Rngs(0))


def _one_device_mesh():
    """A ``model`` mesh axis on this process's first device (metadata only; the sharded
    results on forced CPU devices are tests/test_sharding.py's)."""
    return jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))


def test_partitioning_metadata_keeps_torch_init():
    gate_axis = (None, "model", None)  # (D, 4H, in_k): shard the 4H gate axis
    with jax.set_mesh(_one_device_mesh()):
        model = fl_nnx.LSTM(
            3, 4, 2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(0),
            kernel_init=nnx.with_partitioning(fl.torch_uniform(4), gate_axis),
            recurrent_kernel_metadata={"out_sharding": gate_axis},
            bias_init=nnx.with_partitioning(fl.torch_uniform(4), (None, "model")),
        )  # fmt: skip
        cell = fl_nnx.LSTMCell(
            3, 4, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": ("model", None)},
            recurrent_kernel_init=nnx.with_partitioning(fl.torch_uniform(4), ("model", None)),
        )  # fmt: skip
    specs = nnx.get_partition_spec(nnx.state(model))["layers"]
    P = jax.sharding.PartitionSpec
    for k in range(2):
        assert specs[k]["w_ih"].get_value() == specs[k]["w_hh"].get_value() == P(*gate_axis)
        assert specs[k]["b_ih"].get_value() == specs[k]["b_hh"].get_value() == P(None, "model")
        assert specs[k]["w_hr"].get_value() == P()  # no metadata: replicated
    cell_specs = nnx.get_partition_spec(nnx.state(cell))
    assert cell_specs["w_ih"].get_value() == cell_specs["w_hh"].get_value() == P("model", None)
    assert cell_specs["b_ih"].get_value() == P()
    # The wrapped torch_uniform draws the default's numbers, and the module runs as before.
    plain = fl_nnx.LSTM(3, 4, 2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(0))
    got, want = jax.tree.leaves(model.lstm_params()), jax.tree.leaves(plain.lstm_params())
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    x = _x((5, 2, 3))
    np.testing.assert_array_equal(model(x)[0], plain(x)[0])
    plain_cell = fl_nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(cell(x[0]).h, plain_cell(x[0]).h)


def test_flax_initializers():
    init = nnx.initializers.lecun_normal(in_axis=-1, out_axis=-2, batch_axis=(0,))
    model = fl_nnx.LSTM(
        3, 8, rngs=nnx.Rngs(0), kernel_init=init,
        recurrent_kernel_init=nnx.initializers.orthogonal(column_axis=-2),
        bias_init=nnx.initializers.zeros_init(),
    )  # fmt: skip
    w_hh = np.asarray(model.layers[0]["w_hh"][0])  # (4H, H): orthonormal columns
    np.testing.assert_allclose(w_hh.T @ w_hh, np.eye(8), atol=1e-5)
    assert (model.layers[0]["b_ih"][...] == 0).all()
    assert 0.2 < np.std(model.layers[0]["w_ih"][...]) * np.sqrt(3) < 1.5  # fan-in 3

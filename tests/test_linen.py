"""flax_lstm.linen only: input-size inference, dropout keys, jit trace counts, Orbax
checkpoints, the cell's init. What NNX and Linen share is tested for both in test_modules.py."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch

import flax_lstm as fl
from flax_lstm import linen as fl_linen

_lstm = jax.jit(fl.lstm, static_argnames=("config", "recurrent_dropout"))


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@functools.partial(jax.jit, static_argnames=("module", "deterministic", "return_all_states"))
def _apply(module, variables, x, hx=None, *, deterministic=True, return_all_states=False, key=None):
    """``module.apply``, jitted once per module configuration across the tests."""
    rngs = None if key is None else {"dropout": key}
    return module.apply(
        variables,
        x,
        hx,
        deterministic=deterministic,
        return_all_states=return_all_states,
        rngs=rngs,
    )


BASE = fl_linen.LSTM(4, num_layers=2)
X = _x((5, 2, 3))


@pytest.fixture(scope="module")
def base_vars():
    return BASE.init(jax.random.key(0), X)


def test_init_infers_input_size_and_matches_init_params_layout(base_vars):
    config = BASE.lstm_config(3)
    want = jax.eval_shape(lambda: fl.init_params(jax.random.key(0), config))
    got = BASE.lstm_params(base_vars)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(lambda a: a.shape, want)
    assert all(np.abs(a).max() <= 1 / np.sqrt(4) for a in jax.tree.leaves(got))  # torch's init
    assert sorted(base_vars["params"]) == ["layer_0", "layer_1"]
    module = fl_linen.LSTM(4, num_layers=2, bidirectional=True, proj_size=3)
    variables = jax.eval_shape(module.init, jax.random.key(0), _x((2, 6)))  # unbatched
    assert variables["params"]["layer_0"]["w_ih"].shape == (2, 16, 6)
    assert variables["params"]["layer_1"]["w_ih"].shape == (2, 16, 6)  # D·proj_size
    assert variables["params"]["layer_1"]["w_hr"].shape == (2, 3, 4)


def test_deterministic_equals_torch_and_dropout_keys():
    torch.manual_seed(0)
    torch_lstm = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval()
    module, variables = fl_linen.LSTM.from_torch(torch_lstm)
    with torch.no_grad():
        want = torch_lstm(torch.from_numpy(X))[0].numpy()
    out = _apply(module, variables, X)[0]  # deterministic=True is the default
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)

    def train(key):
        return _apply(module, variables, X, deterministic=False, key=key)[0]

    a, b, c = train(jax.random.key(1)), train(jax.random.key(1)), train(jax.random.key(2))
    np.testing.assert_array_equal(a, b)  # the same key gives the same mask
    assert not np.allclose(a, c, atol=1e-3)  # another key, another mask
    assert not np.allclose(a, out, atol=1e-3)
    with pytest.raises(Exception, match="dropout"):  # no key for dropout: flax says so
        module.apply(variables, X, deterministic=False)


def test_jit_train_step_traces_once():
    module = BASE.clone(dropout=0.2, recurrent_dropout=0.1)
    params = module.init(jax.random.key(0), X)["params"]
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, opt_state, x, y, key):
        def loss_fn(params):
            out, _ = module.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})
            return jnp.mean((out[-1].sum(-1, keepdims=True) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = params
    for i in range(4):
        params, opt_state, loss = train_step(
            params, opt_state, _x((5, 2, 3), i), _x((2, 1), 10 + i), jax.random.key(i)
        )
        assert np.isfinite(loss)
    assert not np.array_equal(params["layer_0"]["w_hh"], start["layer_0"]["w_hh"])


def test_orbax_round_trip(tmp_path, base_vars):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "lstm", base_vars)
    checkpointer.wait_until_finished()
    abstract = jax.eval_shape(BASE.init, jax.random.key(1), X)
    restored = checkpointer.restore(tmp_path / "lstm", abstract)
    np.testing.assert_array_equal(_apply(BASE, restored, X)[0], _apply(BASE, base_vars, X)[0])


def test_dropout_warning_at_init():
    module = fl_linen.LSTM(4, dropout=0.5)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        module.init(jax.random.key(0), _x((2, 3)))


def test_init_with_invalid_input_gives_the_functional_error():
    module = fl_linen.LSTM(4)
    with pytest.raises(ValueError, match="input must be 3-D"):
        module.init(jax.random.key(0), np.ones((3,), np.float32))


def _random_draws(fn, *args):
    """How many ``random_bits`` ops the program of ``fn(*args)`` runs (nested calls included)."""

    def count(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "random_bits"
            n += sum(count(v.jaxpr) for v in eqn.params.values() if hasattr(v, "consts"))
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_init_draws_each_parameter_once_with_torch_init(bias):
    cell = fl_linen.LSTMCell(8, bias=bias)
    key, x = jax.random.key(0), X[0]
    params = cell.init(key, x)["params"]
    assert list(params) == (["w_ih", "w_hh", "b_ih", "b_hh"] if bias else ["w_ih", "w_hh"])
    one = _random_draws(lambda k: jax.random.uniform(k, (32, 3), jnp.float32, -1, 1), key)
    assert _random_draws(cell.init, key, x) == len(params) * one
    for name, value in params.items():  # torch's U(-1/√H, 1/√H), a different draw each
        assert 0.3 * 1 / np.sqrt(8) < np.abs(value).max() <= 1 / np.sqrt(8), name
    values = [np.asarray(v[:32]).ravel()[:32] for v in params.values()]
    assert len({v.tobytes() for v in values}) == len(values)


def test_partitioned_boxes_apply_and_convert():
    """``nn.with_partitioning`` initializers store ``nn.Partitioned`` boxes; the module applies
    them, reads its input size through them and converts them to torch."""
    import flax.linen as nn

    gate_axis = (None, "model", None)  # (D, 4H, in_k): shard the 4H gate axis
    module = fl_linen.LSTM(
        4, num_layers=2,
        kernel_init=nn.with_partitioning(fl.torch_uniform(4), gate_axis),
        recurrent_kernel_init=nn.with_partitioning(fl.torch_uniform(4), gate_axis),
        bias_init=nn.with_partitioning(fl.torch_uniform(4), (None, "model")),
    )  # fmt: skip
    variables = module.init(jax.random.key(0), X)
    specs = nn.get_partition_spec(variables)["params"]
    P = jax.sharding.PartitionSpec
    assert specs["layer_1"]["w_hh"] == P(*gate_axis) and specs["layer_1"]["b_hh"] == P(
        None, "model"
    )
    plain = BASE.init(jax.random.key(0), X)  # the same numbers as the default initializers
    for a, b in zip(jax.tree.leaves(nn.meta.unbox(variables)), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(module.apply(variables, X)[0], BASE.apply(plain, X)[0])
    sd = module.to_torch_state_dict(variables)
    np.testing.assert_array_equal(
        sd["weight_hh_l1"], BASE.to_torch_state_dict(plain)["weight_hh_l1"]
    )

    cell = fl_linen.LSTMCell(
        4, kernel_init=nn.with_partitioning(fl.torch_uniform(4), ("model", None))
    )
    cell_vars = cell.init(jax.random.key(0), X[0])
    assert nn.get_partition_spec(cell_vars)["params"]["w_ih"] == P("model", None)
    plain_cell = fl_linen.LSTMCell(4).init(jax.random.key(0), X[0])
    np.testing.assert_array_equal(cell.apply(cell_vars, X[0]).h, cell.apply(plain_cell, X[0]).h)
    assert list(cell.to_torch_state_dict(cell_vars)) == [
        "weight_ih",
        "weight_hh",
        "bias_ih",
        "bias_hh",
    ]

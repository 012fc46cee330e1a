"""LSTMConfig: torch's validation, hashability, derived sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import flax_lstm as fl


def test_hashable_and_static_under_jit():
    cfg = fl.LSTMConfig(3, 4, num_layers=2)
    assert hash(cfg) == hash(fl.LSTMConfig(3, 4, num_layers=2))
    params = fl.init_params(jax.random.key(0), cfg)
    f = jax.jit(fl.lstm, static_argnames="config")
    out, _ = f(params, jnp.ones((2, 1, 3)), config=cfg)
    assert out.shape == (2, 1, 4)


def test_numpy_ints_are_normalised():
    cfg = fl.LSTMConfig(np.int64(3), np.int32(4))
    assert type(cfg.input_size) is int and cfg == fl.LSTMConfig(3, 4)


def test_derived_sizes():
    cfg = fl.LSTMConfig(3, 8, num_layers=3, bidirectional=True, proj_size=2)
    assert (cfg.num_directions, cfg.output_size) == (2, 2)
    assert [cfg.layer_input_size(k) for k in range(3)] == [3, 4, 4]
    _, (h_n, c_n) = torch.nn.LSTM(3, 8, num_layers=3, bidirectional=True)(torch.zeros(1, 1, 3))
    assert cfg.num_states == 6 == h_n.shape[0] == c_n.shape[0]  # torch's D·num_layers


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"hidden_size": 4.0}, TypeError, "hidden_size"),
        ({"hidden_size": "4"}, TypeError, "hidden_size"),
        ({"input_size": True}, TypeError, "input_size"),
        ({"num_layers": 1.5}, TypeError, "num_layers"),
        ({"proj_size": 1.0}, TypeError, "proj_size"),
        ({"bias": "yes"}, TypeError, "bias"),
        ({"hidden_size": 0}, ValueError, "hidden_size"),
        ({"input_size": 0}, ValueError, "input_size"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"dropout": 1.5, "num_layers": 2}, ValueError, "dropout"),
        ({"dropout": -0.1, "num_layers": 2}, ValueError, "dropout"),
        ({"dropout": True, "num_layers": 2}, ValueError, "dropout"),
        ({"proj_size": -1}, ValueError, "proj_size"),
        ({"proj_size": 4}, ValueError, "proj_size"),
    ],
)
def test_validation(kwargs, exc, name):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(exc, match=name):
        fl.LSTMConfig(**args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 4.0},
        {"hidden_size": 0},
        {"num_layers": 0},
        {"dropout": 1.5},
        {"proj_size": -1},
        {"proj_size": 4},
    ],
)
def test_same_exception_type_as_torch(kwargs):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(**args)
    with pytest.raises(Exception) as ours:
        fl.LSTMConfig(**args)
    assert type(ours.value) is type(theirs.value)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fl.LSTMConfig(3, 4, dropout=0.5)


def test_frozen():
    cfg = fl.LSTMConfig(3, 4)
    with pytest.raises(AttributeError):
        cfg.hidden_size = 5

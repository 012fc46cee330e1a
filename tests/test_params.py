"""Initialisation and lossless torch state-dict conversion."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from torch_ref import torch_lstm

import flax_lstm as fl

CONFIGS = [
    fl.LSTMConfig(3, 5),
    fl.LSTMConfig(3, 5, num_layers=3, bidirectional=True),
    fl.LSTMConfig(3, 5, num_layers=2, bias=False, proj_size=2),
    fl.LSTMConfig(3, 5, num_layers=2, bidirectional=True, proj_size=4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_state_dict_names_shapes_and_order_match_torch(cfg):
    sd = fl.to_torch_state_dict(fl.init_params(jax.random.key(0), cfg), cfg)
    want = {k: tuple(v.shape) for k, v in torch_lstm(cfg).state_dict().items()}
    assert list(sd) == list(want)
    assert {k: v.shape for k, v in sd.items()} == want
    # torch loads it strictly.
    torch_lstm(cfg).load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_round_trip_is_lossless(cfg):
    module = torch_lstm(cfg)
    params = fl.from_torch_state_dict(module.state_dict(), cfg)
    back = fl.to_torch_state_dict(params, cfg)
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(back[name], value.numpy())
    again = fl.from_torch_state_dict(back, cfg)  # numpy input too
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_round_trip_keeps_bits():
    cfg = fl.LSTMConfig(3, 4)
    module = torch_lstm(cfg).to(torch.bfloat16)
    params = fl.from_torch_state_dict(module.state_dict(), cfg)
    assert params[0]["w_ih"].dtype == jnp.bfloat16
    sd = fl.to_torch_state_dict(params, cfg)
    assert sd["weight_ih_l0"].dtype == ml_dtypes.bfloat16
    want = module.weight_ih_l0.detach().float().numpy()
    np.testing.assert_array_equal(sd["weight_ih_l0"].astype(np.float32), want)


def test_gradients_convert_to_torch_names():
    cfg = CONFIGS[3]
    params = fl.init_params(jax.random.key(0), cfg)
    grads = jax.grad(lambda p: fl.lstm(p, jnp.ones((2, 1, 3)), config=cfg)[0].sum())(params)
    sd = fl.to_torch_state_dict(grads, cfg)
    assert set(sd) == set(torch_lstm(cfg).state_dict())


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_init_matches_torch_distribution(cfg):
    params = fl.init_params(jax.random.key(0), cfg)
    bound = 1 / math.sqrt(cfg.hidden_size)
    for name, p in fl.to_torch_state_dict(params, cfg).items():
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound, name
    values = np.concatenate([v.ravel() for v in jax.tree.leaves(params)])
    # U(-b, b): mean 0, variance b²/3.
    assert abs(values.mean()) < 0.05 * bound
    assert abs(values.var() - bound**2 / 3) < 0.1 * bound**2 / 3


def test_init_dtype_and_distinct_keys():
    cfg = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(params))
    p = fl.init_params(jax.random.key(0), cfg)
    assert not np.array_equal(p[0]["w_ih"][0], p[0]["w_ih"][1])
    assert not np.array_equal(p[0]["b_ih"], p[0]["b_hh"])


def test_missing_key_is_a_key_error_naming_it():
    cfg = CONFIGS[1]
    sd = torch_lstm(cfg).state_dict()
    del sd["weight_hh_l1_reverse"]
    with pytest.raises(KeyError, match="weight_hh_l1_reverse"):
        fl.from_torch_state_dict(sd, cfg)


def test_extra_key_is_named():
    cfg = CONFIGS[0]
    sd = dict(torch_lstm(cfg).state_dict(), weight_ih_l1=torch.zeros(20, 5))
    with pytest.raises(ValueError, match="weight_ih_l1"):
        fl.from_torch_state_dict(sd, cfg)


def test_misshaped_key_is_named():
    cfg = CONFIGS[0]
    sd = dict(torch_lstm(cfg).state_dict(), bias_hh_l0=torch.zeros(19))
    with pytest.raises(ValueError, match=r"bias_hh_l0.*\(20,\)"):
        fl.from_torch_state_dict(sd, cfg)


def test_config_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM"):
        fl.config_from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM"):
        fl.config_from_torch(torch.nn.Linear(3, 4))


def test_params_that_do_not_match_the_config():
    cfg = fl.LSTMConfig(3, 5, num_layers=2)
    params = fl.init_params(jax.random.key(0), cfg)
    x = jnp.ones((2, 1, 3))
    with pytest.raises(ValueError, match=r"params must be a list of 2"):
        fl.lstm(params[:1], x, config=cfg)
    with pytest.raises(ValueError, match=r"params\[0\].*missing \['w_hr'\]"):
        fl.lstm(params, x, config=fl.LSTMConfig(3, 5, num_layers=2, proj_size=2))
    with pytest.raises(ValueError, match=r"params\[0\]\['w_ih'\] must have shape \(2, 20, 3\)"):
        fl.lstm(params, x, config=fl.LSTMConfig(3, 5, num_layers=2, bidirectional=True))
    bad = [params[0], {k: v for k, v in params[1].items() if k != "b_hh"}]
    with pytest.raises(ValueError, match=r"params\[1\].*missing \['b_hh'\]"):
        fl.lstm(bad, x, config=cfg)
    with pytest.raises(ValueError, match=r"params\[0\]\['w_ih'\] must have shape \(1, 24, 3\)"):
        fl.lstm(params, x, config=fl.LSTMConfig(3, 6, num_layers=2))


def test_key_order_is_the_same_from_init_and_from_torch():
    cfg = CONFIGS[3]
    made = fl.init_params(jax.random.key(0), cfg)
    loaded = fl.from_torch_state_dict(fl.to_torch_state_dict(made, cfg), cfg)
    assert [list(layer) for layer in made] == [list(layer) for layer in loaded]
    assert list(made[0]) == ["w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]

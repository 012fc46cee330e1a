"""Initialisation and lossless torch state-dict conversion."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

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


@contextlib.contextmanager
def _x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_as_tensors_loads_into_torch_and_round_trips_bit_exactly(dtype):
    cfg = CONFIGS[3]
    module = torch_lstm(cfg).to(dtype)
    with _x64():  # float64 stays float64
        params = fl.from_torch_state_dict(module.state_dict(), cfg)
        sd = fl.to_torch_state_dict(params, cfg, as_tensors=True)
        back = fl.from_torch_state_dict(sd, cfg)
    assert list(sd) == list(module.state_dict())
    target = torch_lstm(cfg).to(dtype)
    target.load_state_dict(sd)  # strict: names, shapes
    for name, value in module.state_dict().items():
        assert sd[name].dtype == dtype
        assert torch.equal(target.state_dict()[name], value), name
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_bfloat16_params_to_torch_tensors_and_back_are_bit_identical():
    cfg = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True)
    params = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)
    sd = fl.to_torch_state_dict(params, cfg, as_tensors=True)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    back = fl.from_torch_state_dict(sd, cfg)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a).view(np.int16), np.asarray(b).view(np.int16))


def test_float64_is_kept_with_x64_and_warned_about_without():
    cfg = fl.LSTMConfig(3, 4)
    sd = torch_lstm(cfg).double().state_dict()
    with pytest.warns(UserWarning, match=r"float64.*jax_enable_x64.*dtype="):
        params = fl.from_torch_state_dict(sd, cfg)
    assert params[0]["w_ih"].dtype == jnp.float32
    with pytest.warns(UserWarning, match="float64"):
        fl.from_torch(sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fl.from_torch_state_dict(sd, cfg, dtype=jnp.float32)[0]["w_ih"].dtype == "float32"
        with _x64():
            params = fl.from_torch_state_dict(sd, cfg)
            _, from_module = fl.from_torch(torch_lstm(cfg).double())
    assert params[0]["w_ih"].dtype == jnp.float64 == from_module[0]["w_hh"].dtype
    np.testing.assert_array_equal(params[0]["w_ih"][0], sd["weight_ih_l0"].numpy())


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_config_from_state_dict_reads_the_sizes(cfg):
    dropout = 0.5 if cfg.num_layers > 1 else 0.0
    got = fl.config_from_state_dict(torch_lstm(cfg).state_dict(), batch_first=True, dropout=dropout)
    assert got == dataclasses.replace(cfg, batch_first=True, dropout=dropout)
    numpy_sd = {k: v.numpy() for k, v in torch_lstm(cfg).state_dict().items()}
    assert fl.config_from_state_dict(numpy_sd) == cfg


def test_config_from_state_dict_errors():
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM or its state_dict"):
        fl.config_from_state_dict([1, 2])
    with pytest.raises(KeyError, match="weight_ih_l0"):
        fl.config_from_state_dict({"weight_hh_l0": np.zeros((8, 2))})
    with pytest.raises(ValueError, match=r"\(4H, in\)"):
        fl.config_from_state_dict({"weight_ih_l0": np.zeros((6, 2))})


def test_from_torch_module_or_state_dict():
    module = torch.nn.LSTM(3, 4, 2, batch_first=True, dropout=0.25, bidirectional=True)
    config, params = fl.from_torch(module)
    assert config == fl.config_from_torch(module)
    config_sd, params_sd = fl.from_torch(module.state_dict())
    assert (config_sd.batch_first, config_sd.dropout) == (False, 0.0)  # not in a state dict
    assert config_sd == dataclasses.replace(config, batch_first=False, dropout=0.0)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_sd), strict=True):
        np.testing.assert_array_equal(a, b)
    config, _ = fl.from_torch(module, batch_first=False, dropout=0.0)
    assert (config.batch_first, config.dropout) == (False, 0.0)
    config, params = fl.from_torch(module.state_dict(), batch_first=True, dtype=jnp.bfloat16)
    assert config.batch_first and params[1]["w_ih"].dtype == jnp.bfloat16
    x = np.random.default_rng(0).standard_normal((2, 5, 3), dtype=np.float32)
    _, params = fl.from_torch(module.eval())
    with torch.no_grad():
        want = module(torch.from_numpy(x))[0].numpy()
    got = fl.lstm(params, x, config=fl.config_from_torch(module))[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_conversion_round_trips(bias):
    cell = torch.nn.LSTMCell(3, 5, bias=bias)
    params = fl.cell_params_from_torch(cell)
    assert list(params) == (["w_ih", "w_hh", "b_ih", "b_hh"] if bias else ["w_ih", "w_hh"])
    same = fl.cell_params_from_torch({k: v.numpy() for k, v in cell.state_dict().items()})
    sd = fl.cell_to_torch_state_dict(params)
    assert list(sd) == list(cell.state_dict())
    for name, value in cell.state_dict().items():
        assert sd[name].dtype == np.float32
        np.testing.assert_array_equal(sd[name], value.numpy())
    for name, value in params.items():
        np.testing.assert_array_equal(same[name], value)
    bf16 = fl.cell_params_from_torch(cell, dtype=jnp.bfloat16)
    tensors = fl.cell_to_torch_state_dict(bf16, as_tensors=True)
    target = torch.nn.LSTMCell(3, 5, bias=bias).to(torch.bfloat16)
    target.load_state_dict(tensors)
    back = fl.cell_params_from_torch(target)
    for name, value in bf16.items():
        assert back[name].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(back[name]).view(np.int16), value.view(np.int16))
    x = np.random.default_rng(0).standard_normal((2, 3), dtype=np.float32)
    with torch.no_grad():
        want = cell(torch.from_numpy(x))
    for got, ref in zip(fl.lstm_cell(params, x), want, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-6, rtol=0)


def test_cell_conversion_errors():
    with pytest.raises(ValueError, match=r"LSTMCell state dict: unexpected keys \['bias_hh_l0'"):
        fl.cell_params_from_torch(torch.nn.LSTM(3, 5).state_dict())
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTMCell"):
        fl.cell_params_from_torch(3)
    params = fl.init_cell_params(jax.random.key(0), 3, 5, proj_size=2)
    with pytest.raises(ValueError, match=r"unexpected keys \['w_hr'\]"):
        fl.cell_to_torch_state_dict(params)


def _recording(value):
    """An initializer filling ``value`` that records the shapes and dtypes it is called with."""
    calls = []

    def init(key, shape, dtype=jnp.float32):
        calls.append((tuple(shape), jnp.dtype(dtype)))
        return jnp.full(shape, value, dtype)

    return init, calls


def test_initializers_get_the_stored_shapes_and_replace_torch_init():
    cfg = fl.LSTMConfig(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    kernel, k_calls = _recording(0.5)
    recurrent, r_calls = _recording(-0.25)
    bias, b_calls = _recording(0.0)
    params = fl.init_params(
        jax.random.key(0), cfg, jnp.bfloat16,
        kernel_init=kernel, recurrent_kernel_init=recurrent, bias_init=bias,
    )  # fmt: skip
    bf16 = jnp.dtype(jnp.bfloat16)
    assert k_calls == [((2, 20, 3), bf16), ((2, 20, 4), bf16)]  # (D, 4H, in_k), torch's layout
    assert r_calls == [((2, 20, 2), bf16)] * 2  # (D, 4H, H_out)
    assert b_calls == [((2, 20), bf16)] * 4  # b_ih and b_hh of each layer
    default = fl.init_params(jax.random.key(0), cfg, jnp.bfloat16)
    for layer, torch_layer in zip(params, default, strict=True):
        assert list(layer) == list(torch_layer)  # torch's order
        assert (layer["w_ih"] == 0.5).all() and (layer["w_hh"] == -0.25).all()
        assert (layer["b_ih"] == 0).all() and (layer["b_hh"] == 0).all()
        np.testing.assert_array_equal(layer["w_hr"], torch_layer["w_hr"])  # torch's init
    # Only the replaced initializer changes: the others draw the same numbers from their keys.
    only_kernel = fl.init_params(jax.random.key(0), cfg, kernel_init=kernel)
    same = fl.init_params(jax.random.key(0), cfg)
    np.testing.assert_array_equal(only_kernel[1]["w_hh"], same[1]["w_hh"])
    with pytest.raises(TypeError, match="bias_init must be an initializer"):
        fl.init_params(jax.random.key(0), cfg, bias_init=0.0)


def test_cell_initializers_and_torch_uniform():
    kernel, calls = _recording(1.0)
    p = fl.init_cell_params(jax.random.key(0), 3, 5, kernel_init=kernel)
    assert calls == [((20, 3), jnp.dtype(jnp.float32))]
    assert (p["w_ih"] == 1).all()
    # The default is torch_uniform, drawn from one key per parameter.
    default = fl.init_cell_params(jax.random.key(0), 3, 5)
    keys = jax.random.split(jax.random.key(0), 4)
    np.testing.assert_array_equal(default["w_hh"], fl.torch_uniform(5)(keys[1], (20, 5)))
    np.testing.assert_array_equal(default["w_hh"], p["w_hh"])
    bound = 1 / math.sqrt(5)
    w = fl.torch_uniform(5)(jax.random.key(1), (4000,))
    assert bound * 0.99 < np.abs(w).max() <= bound


def _linen_first_key(key):
    """The key a top-level Linen module's first ``self.make_rng('params')`` returns."""
    import flax.linen as nn

    class Probe(nn.Module):
        @nn.compact
        def __call__(self):
            return self.make_rng("params")

    return Probe().init_with_output(key)[0]


def test_nnx_and_linen_cells_are_init_cell_params_of_one_key():
    """One cell initialisation: both modules call `init_cell_params` with one key: NNX
    ``rngs.params()`` (for ``nnx.Rngs(0)``, ``fold_in(key(0), 0)``), Linen
    ``self.make_rng('params')``."""
    from flax import nnx

    key, x = jax.random.key(0), np.ones((2, 3), np.float32)
    nnx_params = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0)).cell_params()
    linen_params = fl.linen.LSTMCell(5).init(key, x)["params"]
    want_nnx = fl.init_cell_params(jax.random.fold_in(key, 0), 3, 5)
    want_linen = fl.init_cell_params(_linen_first_key(key), 3, 5)
    for got, want in ((nnx_params, want_nnx), (linen_params, want_linen)):
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_nnx_and_linen_lstms_are_init_params_of_one_key():
    from flax import nnx

    key, x = jax.random.key(0), np.ones((4, 3), np.float32)
    cfg = fl.LSTMConfig(3, 5, num_layers=2, bidirectional=True)
    nnx_params = fl.nnx.LSTM(3, 5, 2, bidirectional=True, rngs=nnx.Rngs(0)).lstm_params()
    module = fl.linen.LSTM(5, 2, bidirectional=True)
    linen_params = module.lstm_params(module.init(key, x))
    for got, k in ((nnx_params, jax.random.fold_in(key, 0)), (linen_params, _linen_first_key(key))):
        want = fl.init_params(k, cfg)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)

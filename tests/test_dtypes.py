"""Mixed precision: in the modules ``dtype`` computes, ``param_dtype`` stores, and bfloat16
compute keeps the cell state in float32 and stays within the documented tolerance of float32;
the functional core gives float32's numbers, within each dtype's precision, in every dtype,
feature and implementation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flax_lstm as fl
from flax_lstm import linen as fl_linen
from flax_lstm import nnx as fl_nnx

# Documented in the `dtype` argument of flax_lstm.nnx.LSTM and flax_lstm.linen.LSTM.
BF16_TOL = 1e-2


def _signal(seq_len: int, batch: int, features: int) -> np.ndarray:
    """A real-ish multichannel sequence: noisy sinusoids of different periods and phases."""
    rng = np.random.default_rng(0)
    t = np.arange(seq_len)[:, None, None]
    period = rng.uniform(8, 60, size=(1, batch, features))
    phase = rng.uniform(0, 2 * np.pi, size=(1, batch, features))
    x = 1.5 * np.sin(2 * np.pi * t / period + phase) + 0.3 * rng.standard_normal(
        (seq_len, batch, features)
    )
    return x.astype(np.float32)


@nnx.jit(static_argnames="return_all_states")
def _nnx_call(model, x, return_all_states=False):
    return model(x, return_all_states=return_all_states)


@functools.partial(jax.jit, static_argnames=("module", "return_all_states"))
def _linen_call(module, variables, x, return_all_states=False):
    return module.apply(variables, x, return_all_states=return_all_states)


def test_bfloat16_within_documented_tolerance_of_float32():
    """300 steps, hidden size 256, two layers: bf16 compute vs fp32 with the same weights."""
    x = _signal(300, 4, 16)
    fp32 = fl_nnx.LSTM(16, 256, 2, rngs=nnx.Rngs(0))
    bf16 = fl_nnx.LSTM(16, 256, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))  # same weights
    nnx.update(bf16, nnx.state(fp32))
    out32, (h32, c32) = _nnx_call(fp32, x)
    out16, (h16, c16) = _nnx_call(bf16, x)
    assert (out16.dtype, h16.dtype, c16.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    for a, b in ((out16, out32), (h16, h32), (c16, c32)):
        diff = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
        print(f"bf16 vs fp32 max |difference|: {diff:.3g}")  # shown with -s
        assert diff <= BF16_TOL, diff
    assert float(jnp.max(jnp.abs(out32))) > 0.1  # a non-trivial output, not all ~0


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_dtypes_of_parameters_outputs_and_states(api):
    x = np.ones((4, 2, 3), np.float32)
    if api == "nnx":
        model = fl_nnx.LSTM(3, 5, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        params = model.lstm_params()
        out, (h, c), states = _nnx_call(model, x, return_all_states=True)
    else:
        module = fl_linen.LSTM(5, dtype=jnp.bfloat16)
        variables = module.init(jax.random.key(0), x)
        params = module.lstm_params(variables)
        out, (h, c), states = _linen_call(module, variables, x, return_all_states=True)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}  # storage
    assert out.dtype == h.dtype == states.h.dtype == jnp.bfloat16  # compute dtype
    assert c.dtype == states.c.dtype == jnp.float32  # the cell state stays in float32


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_param_dtype_is_storage_and_default_compute_promotes(api):
    x = np.ones((4, 2, 3), np.float32)
    if api == "nnx":
        model = fl_nnx.LSTM(3, 5, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        params = model.lstm_params()
        out, (h, c) = _nnx_call(model, x)
    else:
        module = fl_linen.LSTM(5, param_dtype=jnp.bfloat16)
        variables = module.init(jax.random.key(0), x)
        params = module.lstm_params(variables)
        out, (h, c) = _linen_call(module, variables, x)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    # dtype=None: the promoted dtype of input and parameters (float32 input -> float32).
    assert out.dtype == h.dtype == c.dtype == jnp.float32


def test_cell_dtypes():
    x = np.ones((2, 3), np.float32)
    cell = fl_nnx.LSTMCell(3, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    h, c = nnx.jit(lambda cell, x: cell(x))(cell, x)
    assert cell.w_ih[...].dtype == jnp.float32
    assert (h.dtype, c.dtype) == (jnp.bfloat16, jnp.float32)
    lcell = fl_linen.LSTMCell(4, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = jax.jit(lcell.init)(jax.random.key(0), x)
    assert variables["params"]["w_hh"].dtype == jnp.bfloat16
    h, c = jax.jit(lcell.apply)(variables, x)
    assert (h.dtype, c.dtype) == (jnp.bfloat16, jnp.float32)


# The functional core in every compute dtype × feature × implementation, forward and gradient
# under jit, against float32 on the scan path. The tolerances, relative to the largest value
# of each output or gradient, are a few roundings of each dtype (about 3x the worst seen).
MATRIX_TOL = {"float32": 1e-5, "float64": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}
FEATURES = {
    "projection": {"proj_size": 16},
    "bidirectional": {"bidirectional": True},
    "seq_lengths": {},
    "all": {"proj_size": 16, "bidirectional": True},
}
IMPLS = {
    "auto": None,  # the kernel where it applies: 8 steps × 128 units reach it
    "scan": "scan",
    "scan+autodiff": fl.Implementation(recurrence="scan", backward="autodiff"),
    "scan+remat": fl.Implementation(recurrence="scan", backward="remat"),
}


@functools.cache
def _matrix_inputs(feature: str):
    """The config and float32 numpy inputs of a case, drawn once (with x64 enabled, jax's
    random numbers would differ)."""
    cfg = fl.LSTMConfig(input_size=4, hidden_size=128, **FEATURES[feature])
    params = jax.tree.map(np.asarray, fl.init_params(jax.random.key(0), cfg))
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 3, 4)))
    width = cfg.num_directions * cfg.output_size
    w_out = np.asarray(jax.random.normal(jax.random.key(2), (8, 3, width)))
    return cfg, params, x, w_out


def _matrix_run(dtype: str, feature: str, impl: str):
    """Outputs and gradients (w.r.t. every weight and the input) of a loss over every output,
    as float32 numpy arrays."""
    cfg, params, x, w_out = _matrix_inputs(feature)
    lengths = jnp.array([8, 3, 6]) if feature in ("seq_lengths", "all") else None
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)  # noqa: E731

    def loss(p, x):
        out, (h, c) = fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl=IMPLS[impl])
        f32 = jnp.float32
        total = (out.astype(f32) * w_out).sum() + (h.astype(f32) ** 2).sum()
        total = total + c.astype(f32).sum()
        return total, (out, h, c)

    (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        cast(params), cast(x)
    )
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}
    assert outs[0].dtype == outs[1].dtype == jnp.dtype(dtype)
    return [np.asarray(a, np.float32) for a in jax.tree.leaves((outs, grads))]


@functools.cache
def _matrix_reference(feature: str):
    return _matrix_run("float32", feature, "scan")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("dtype", list(MATRIX_TOL))
def test_every_dtype_feature_and_implementation_against_float32(dtype, feature, impl):
    want = _matrix_reference(feature)
    if dtype == "float64":
        with jax.enable_x64(True):
            got = _matrix_run(dtype, feature, impl)
    else:
        got = _matrix_run(dtype, feature, impl)
    for a, b in zip(got, want, strict=True):
        scale = max(float(np.abs(b).max()), 1e-3)
        assert np.abs(a - b).max() <= MATRIX_TOL[dtype] * scale, (np.abs(a - b).max(), scale)

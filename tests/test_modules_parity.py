"""The NNX and Linen modules, loaded with ``from_torch``, reproduce torch.nn.LSTM (eval mode).

Forward outputs to 1e-5 and gradients (every parameter, the input, h_0, c_0) to 1e-4, float32,
over the configuration grid of the functional parity tests (``test_parity.CASES``: 1-3 layers,
uni/bidirectional, bias on/off, batch_first, unbatched input, proj_size, with/without hx,
seq_lengths via pack_padded_sequence(enforce_sorted=False)), with torch_ref's reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_parity import CASES
from torch_ref import FWD_TOL, GRAD_TOL, Case, case_id, make_inputs, make_torch, run_torch

from flax_lstm import linen as fl_linen
from flax_lstm import nnx as fl_nnx


def _loss(result, inp):
    out, (h, c) = result
    value = (out * inp["w_out"]).sum() + (h * inp["w_h"]).sum() + (c * inp["w_c"]).sum()
    return value, (out, h, c)


def _hx(case: Case, inp):
    return (jnp.asarray(inp["h0"]), jnp.asarray(inp["c0"])) if case.with_hx else None


def _result(out, h, c, g_params_sd, g_x, g_hx):
    grads = dict(g_params_sd)
    grads["input"] = np.asarray(g_x)
    if g_hx is not None:
        grads["h0"], grads["c0"] = np.asarray(g_hx[0]), np.asarray(g_hx[1])
    return {"output": np.asarray(out), "h_n": np.asarray(h), "c_n": np.asarray(c), "grads": grads}


def run_nnx(module: torch.nn.LSTM, case: Case, inp):
    model = fl_nnx.LSTM.from_torch(module, rngs=nnx.Rngs(0))
    model.eval()
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)

    def loss_fn(model, x, hx):
        return _loss(model(x, hx, seq_lengths=lengths), inp)

    grad_fn = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    (_, (out, h, c)), (g_model, g_x, g_hx) = grad_fn(model, jnp.asarray(inp["x"]), _hx(case, inp))
    return _result(out, h, c, model.to_torch_state_dict(g_model), g_x, g_hx)


def run_linen(module: torch.nn.LSTM, case: Case, inp):
    lstm, variables = fl_linen.LSTM.from_torch(module)
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)

    def loss_fn(params, x, hx):
        return _loss(lstm.apply({"params": params}, x, hx, seq_lengths=lengths), inp)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    (_, (out, h, c)), (g_params, g_x, g_hx) = grad_fn(
        variables["params"], jnp.asarray(inp["x"]), _hx(case, inp)
    )
    return _result(out, h, c, lstm.to_torch_state_dict(g_params), g_x, g_hx)


RUNNERS = {"nnx": run_nnx, "linen": run_linen}
WORST = {"forward": 0.0, "gradient": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\nmodules vs torch, largest |difference|: {WORST}")  # shown with -s


@pytest.mark.parametrize("api", sorted(RUNNERS))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_module_matches_torch(api, case):
    module = make_torch(case).eval()
    inp = make_inputs(case)
    ref = run_torch(module, case, inp)
    got = RUNNERS[api](module, case, inp)
    for key in ("output", "h_n", "c_n"):
        assert got[key].shape == ref[key].shape, key
        np.testing.assert_allclose(got[key], ref[key], atol=FWD_TOL, rtol=FWD_TOL, err_msg=key)
        WORST["forward"] = max(WORST["forward"], float(np.abs(got[key] - ref[key]).max()))
    # Gradients come back under torch's names, in torch's order.
    assert list(got["grads"])[: len(module.state_dict())] == list(module.state_dict())
    assert set(got["grads"]) == set(ref["grads"])
    for key, want in ref["grads"].items():
        np.testing.assert_allclose(
            got["grads"][key], want, atol=GRAD_TOL, rtol=GRAD_TOL, err_msg=f"gradient {key}"
        )
        WORST["gradient"] = max(WORST["gradient"], float(np.abs(got["grads"][key] - want).max()))
    if case.lengths is not None:  # padding is exactly zero, as pad_packed_sequence gives
        out = got["output"] if case.batch_first else got["output"].swapaxes(0, 1)
        for row, length in enumerate(case.lengths):
            assert (out[row, length:] == 0).all()


@pytest.mark.parametrize("api", sorted(RUNNERS))
def test_from_state_dict_equals_from_module(api):
    module = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2, bias=False)
    numpy_sd = {k: v.numpy() for k, v in module.state_dict().items()}
    if api == "nnx":
        a = fl_nnx.LSTM.from_torch(module, rngs=nnx.Rngs(0))
        b = fl_nnx.LSTM.from_torch(numpy_sd, rngs=nnx.Rngs(1))
        assert a.config == b.config
        sds = [a.to_torch_state_dict(), b.to_torch_state_dict()]
    else:
        (ma, va), (mb, vb) = fl_linen.LSTM.from_torch(module), fl_linen.LSTM.from_torch(numpy_sd)
        assert ma == mb
        sds = [ma.to_torch_state_dict(va), mb.to_torch_state_dict(vb)]
    for sd in sds:  # lossless, in torch's order
        assert list(sd) == list(numpy_sd)
        for k, v in numpy_sd.items():
            assert sd[k].dtype == v.dtype
            np.testing.assert_array_equal(sd[k], v)


@pytest.mark.parametrize("api", sorted(RUNNERS))
def test_from_torch_overrides_batch_first_and_dropout(api):
    module = torch.nn.LSTM(3, 4, 2, dropout=0.25)
    if api == "nnx":
        config = fl_nnx.LSTM.from_torch(module, rngs=nnx.Rngs(0), batch_first=True).config
        assert (config.batch_first, config.dropout) == (True, 0.25)
        config = fl_nnx.LSTM.from_torch(module.state_dict(), rngs=nnx.Rngs(0)).config
        assert (config.batch_first, config.dropout) == (False, 0.0)
    else:
        lstm, _ = fl_linen.LSTM.from_torch(module, dropout=0.0)
        assert (lstm.batch_first, lstm.dropout) == (False, 0.0)
        lstm, _ = fl_linen.LSTM.from_torch(module.state_dict(), batch_first=True)
        assert (lstm.batch_first, lstm.dropout) == (True, 0.0)


@pytest.mark.parametrize("api", sorted(RUNNERS))
def test_fresh_module_round_trips_into_torch(api):
    """A module's own (random) weights, exported, make torch.nn.LSTM give its outputs."""
    x = np.random.default_rng(2).standard_normal((6, 2, 3), dtype=np.float32)
    if api == "nnx":
        model = fl_nnx.LSTM(3, 4, 2, bidirectional=True, proj_size=3, rngs=nnx.Rngs(3))
        got = nnx.jit(lambda m, x: m(x)[0])(model, x)
        sd = model.to_torch_state_dict()
    else:
        lstm = fl_linen.LSTM(4, 2, bidirectional=True, proj_size=3)
        variables = jax.jit(lstm.init)(jax.random.key(3), x)
        got = jax.jit(lambda v, x: lstm.apply(v, x)[0])(variables, x)
        sd = lstm.to_torch_state_dict(variables)
    target = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=3)
    target.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
        want = target(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, want, atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("api", sorted(RUNNERS))
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch_lstm_cell(api, bias):
    torch.manual_seed(0)
    cell_t = torch.nn.LSTMCell(3, 4, bias=bias)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3), dtype=np.float32)
    h0 = rng.standard_normal((2, 4), dtype=np.float32)
    c0 = rng.standard_normal((2, 4), dtype=np.float32)
    x_t = torch.tensor(x, requires_grad=True)
    h_t, c_t = cell_t(x_t, (torch.tensor(h0), torch.tensor(c0)))
    (h_t.sum() + (c_t**2).sum()).backward()

    if api == "nnx":
        cell = fl_nnx.LSTMCell.from_torch(cell_t)

        def loss(cell, x):
            h, c = cell(x, (h0, c0))
            return h.sum() + (c**2).sum(), (h, c)

        grad_fn = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, (h, c)), (g_params, g_x) = grad_fn(cell, x)
        g_sd = cell.to_torch_state_dict(g_params)
        sd = cell.to_torch_state_dict()
    else:
        lcell, variables = fl_linen.LSTMCell.from_torch(cell_t.state_dict())

        def loss(params, x):
            h, c = lcell.apply({"params": params}, x, (h0, c0))
            return h.sum() + (c**2).sum(), (h, c)

        grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, (h, c)), (g_params, g_x) = grad_fn(variables["params"], x)
        g_sd = lcell.to_torch_state_dict(g_params)
        sd = lcell.to_torch_state_dict(variables)
    assert list(sd) == list(cell_t.state_dict())
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=FWD_TOL, rtol=0)
    np.testing.assert_allclose(c, c_t.detach().numpy(), atol=FWD_TOL, rtol=0)
    np.testing.assert_allclose(g_x, x_t.grad.numpy(), atol=GRAD_TOL, rtol=0)
    for name, p in cell_t.named_parameters():
        np.testing.assert_allclose(g_sd[name], p.grad.numpy(), atol=GRAD_TOL, rtol=0)

"""The NNX and Linen modules, loaded with ``from_torch``, reproduce torch.nn.LSTM (eval mode).

Forward outputs to 1e-5 and gradients (every parameter, the input, h_0, c_0) to 1e-4, float32,
over the configuration grid of the functional parity tests (``test_parity.CASES``: 1-3 layers,
uni/bidirectional, bias on/off, batch_first, unbatched input, proj_size, with/without hx,
seq_lengths via pack_padded_sequence(enforce_sorted=False)), with torch_ref's reference.
"""

from __future__ import annotations

import jax.numpy as jnp
import module_kinds as mk
import numpy as np
import pytest
import torch
from module_kinds import KINDS
from test_parity import CASES
from torch_ref import FWD_TOL, GRAD_TOL, Case, case_id, make_inputs, make_torch, run_torch


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


def run_module(kind: str, module: torch.nn.LSTM, case: Case, inp):
    made = mk.from_torch(kind, module)
    if kind == "nnx":
        made.module.eval()
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)

    def loss_fn(forward, x, hx):
        return _loss(forward(x, hx, seq_lengths=lengths), inp)

    (_, (out, h, c)), (g_params, g_x, g_hx) = mk.value_and_grad(
        made, loss_fn, jnp.asarray(inp["x"]), _hx(case, inp)
    )
    return _result(out, h, c, mk.to_torch_state_dict(made, g_params), g_x, g_hx)


WORST = {"forward": 0.0, "gradient": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\nmodules vs torch, largest |difference|: {WORST}")  # shown with -s


@pytest.mark.parametrize("api", KINDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_module_matches_torch(api, case):
    module = make_torch(case).eval()
    inp = make_inputs(case)
    ref = run_torch(module, case, inp)
    got = run_module(api, module, case, inp)
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


@pytest.mark.parametrize("api", KINDS)
def test_from_state_dict_equals_from_module(api):
    module = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2, bias=False)
    numpy_sd = {k: v.numpy() for k, v in module.state_dict().items()}
    a, b = mk.from_torch(api, module), mk.from_torch(api, numpy_sd)
    assert mk.config(a) == mk.config(b)
    if api == "linen":
        assert a.module == b.module
    for sd in (mk.to_torch_state_dict(a), mk.to_torch_state_dict(b)):  # lossless, torch's order
        assert list(sd) == list(numpy_sd)
        for k, v in numpy_sd.items():
            assert sd[k].dtype == v.dtype
            np.testing.assert_array_equal(sd[k], v)


@pytest.mark.parametrize("api", KINDS)
def test_from_torch_overrides_batch_first_and_dropout(api):
    module = torch.nn.LSTM(3, 4, 2, dropout=0.25)
    config = mk.config(mk.from_torch(api, module, batch_first=True))
    assert (config.batch_first, config.dropout) == (True, 0.25)
    config = mk.config(mk.from_torch(api, module, dropout=0.0))
    assert (config.batch_first, config.dropout) == (False, 0.0)
    config = mk.config(mk.from_torch(api, module.state_dict()))
    assert (config.batch_first, config.dropout) == (False, 0.0)
    config = mk.config(mk.from_torch(api, module.state_dict(), batch_first=True))
    assert (config.batch_first, config.dropout) == (True, 0.0)


@pytest.mark.parametrize("api", KINDS)
def test_fresh_module_round_trips_into_torch(api):
    """A module's own (random) weights, exported, make torch.nn.LSTM give its outputs."""
    x = np.random.default_rng(2).standard_normal((6, 2, 3), dtype=np.float32)
    made = mk.make_lstm(api, 3, 4, 2, bidirectional=True, proj_size=3)
    got = mk.call(made, x)[0]
    target = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=3)
    target.load_state_dict(mk.to_torch_state_dict(made, as_tensors=True))
    with torch.no_grad():
        want = target(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, want, atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("api", KINDS)
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

    source = cell_t if api == "nnx" else cell_t.state_dict()  # a module and a state dict
    cell = mk.cell_from_torch(api, source)

    def loss(step, x):
        h, c = step(x, (h0, c0))
        return h.sum() + (c**2).sum(), (h, c)

    (_, (h, c)), (g_params, g_x) = mk.value_and_grad(cell, loss, x)
    g_sd = mk.to_torch_state_dict(cell, g_params)
    sd = mk.to_torch_state_dict(cell)
    assert list(sd) == list(cell_t.state_dict())
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=FWD_TOL, rtol=0)
    np.testing.assert_allclose(c, c_t.detach().numpy(), atol=FWD_TOL, rtol=0)
    np.testing.assert_allclose(g_x, x_t.grad.numpy(), atol=GRAD_TOL, rtol=0)
    for name, p in cell_t.named_parameters():
        np.testing.assert_allclose(g_sd[name], p.grad.numpy(), atol=GRAD_TOL, rtol=0)

"""The reference: run a real torch.nn.LSTM on the same weights and inputs, with gradients.

`compare` runs both sides on one configuration and returns the largest absolute differences;
every parity test goes through it, and the worst figures are printed at the end of the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import flax_lstm as fl

WORST: dict[str, float] = {"forward": 0.0, "gradient": 0.0}
FWD_TOL = 1e-5
GRAD_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity configuration."""

    input_size: int = 3
    hidden_size: int = 5
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    proj_size: int = 0
    seq_len: int = 6
    batch: int | None = 3  # None: unbatched input
    with_hx: bool = False
    lengths: tuple[int, ...] | None = None
    seed: int = 0

    def config(self) -> fl.LSTMConfig:
        return fl.LSTMConfig(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.batch_first,
            0.0,
            self.bidirectional,
            self.proj_size,
        )


def case_id(case: Case) -> str:
    """A readable pytest id: the fields that differ from the default case."""
    default = Case()
    changed = (
        f"{f.name}={getattr(case, f.name)}"
        for f in dataclasses.fields(case)
        if getattr(case, f.name) != getattr(default, f.name)
    )
    return "-".join(changed) or "default"


def same_error(call_module, call_functional) -> None:
    """A module call fails exactly as the functional call: same exception type and message."""
    with pytest.raises((ValueError, TypeError, KeyError)) as want:
        call_functional()
    with pytest.raises(want.type) as got:
        call_module()
    assert str(got.value) == str(want.value)


def torch_lstm(cfg: fl.LSTMConfig) -> torch.nn.LSTM:
    """The ``torch.nn.LSTM`` with ``cfg``'s architecture (torch's own initialisation)."""
    return torch.nn.LSTM(
        cfg.input_size,
        cfg.hidden_size,
        cfg.num_layers,
        bias=cfg.bias,
        batch_first=cfg.batch_first,
        dropout=cfg.dropout,
        bidirectional=cfg.bidirectional,
        proj_size=cfg.proj_size,
    )


def make_torch(case: Case) -> torch.nn.LSTM:
    torch.manual_seed(case.seed)
    return torch_lstm(case.config())


def make_inputs(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed + 1)
    cfg = case.config()
    d_l = cfg.num_directions * cfg.num_layers
    bshape = () if case.batch is None else (case.batch,)
    if case.batch is None:
        x_shape = (case.seq_len, case.input_size)
    elif case.batch_first:
        x_shape = (case.batch, case.seq_len, case.input_size)
    else:
        x_shape = (case.seq_len, case.batch, case.input_size)
    x = rng.standard_normal(x_shape).astype(np.float32)
    out = {"x": x}
    if case.with_hx:
        out["h0"] = rng.standard_normal((d_l, *bshape, cfg.output_size)).astype(np.float32)
        out["c0"] = rng.standard_normal((d_l, *bshape, cfg.hidden_size)).astype(np.float32)
    # Random cotangents make every gradient entry matter.
    t_out = (*x_shape[:-1], cfg.num_directions * cfg.output_size)
    out["w_out"] = rng.standard_normal(t_out).astype(np.float32)
    out["w_h"] = rng.standard_normal((d_l, *bshape, cfg.output_size)).astype(np.float32)
    out["w_c"] = rng.standard_normal((d_l, *bshape, cfg.hidden_size)).astype(np.float32)
    return out


def run_torch(module: torch.nn.LSTM, case: Case, inp: dict[str, np.ndarray]) -> dict[str, Any]:
    module.zero_grad()
    x = torch.tensor(inp["x"], requires_grad=True)
    hx = None
    if case.with_hx:
        hx = (
            torch.tensor(inp["h0"], requires_grad=True),
            torch.tensor(inp["c0"], requires_grad=True),
        )
    if case.lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False
        )
        out, (h, c) = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=case.batch_first, total_length=case.seq_len
        )
    else:
        out, (h, c) = module(x, hx)
    loss = (
        (out * torch.tensor(inp["w_out"])).sum()
        + (h * torch.tensor(inp["w_h"])).sum()
        + (c * torch.tensor(inp["w_c"])).sum()
    )
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    grads["input"] = x.grad.numpy()
    if hx is not None:
        grads["h0"], grads["c0"] = hx[0].grad.numpy(), hx[1].grad.numpy()
    return {
        "output": out.detach().numpy(),
        "h_n": h.detach().numpy(),
        "c_n": c.detach().numpy(),
        "grads": grads,
    }


def jax_loss_fn(case: Case, **lstm_kwargs):
    cfg = case.config()

    def loss(params, x, hx, w_out, w_h, w_c, lengths):
        out, (h, c) = fl.lstm(params, x, hx, config=cfg, seq_lengths=lengths, **lstm_kwargs)
        value = (out * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()
        return value, (out, h, c)

    return loss


def run_jax(params, case: Case, inp: dict[str, np.ndarray], *, jit: bool, **lstm_kwargs):
    loss = jax_loss_fn(case, **lstm_kwargs)
    grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    if jit:
        grad_fn = jax.jit(grad_fn)
    hx = (jnp.asarray(inp["h0"]), jnp.asarray(inp["c0"])) if case.with_hx else None
    lengths = None if case.lengths is None else jnp.asarray(case.lengths)
    (_, (out, h, c)), (g_params, g_x, g_hx) = grad_fn(
        params, jnp.asarray(inp["x"]), hx, inp["w_out"], inp["w_h"], inp["w_c"], lengths
    )
    grads = fl.to_torch_state_dict(g_params, case.config())
    grads["input"] = np.asarray(g_x)
    if case.with_hx:
        grads["h0"], grads["c0"] = np.asarray(g_hx[0]), np.asarray(g_hx[1])
    return {"output": np.asarray(out), "h_n": np.asarray(h), "c_n": np.asarray(c), "grads": grads}


def compare(case: Case, *, jit: bool = True, **lstm_kwargs) -> tuple[float, float]:
    """Assert parity with torch for ``case``; return (max forward diff, max gradient diff)."""
    module = make_torch(case)
    inp = make_inputs(case)
    ref = run_torch(module, case, inp)
    params = fl.from_torch_state_dict(module.state_dict(), case.config())
    got = run_jax(params, case, inp, jit=jit, **lstm_kwargs)
    fwd = 0.0
    for key in ("output", "h_n", "c_n"):
        assert got[key].shape == ref[key].shape, (key, got[key].shape, ref[key].shape)
        np.testing.assert_allclose(got[key], ref[key], atol=FWD_TOL, rtol=FWD_TOL, err_msg=key)
        fwd = max(fwd, float(np.abs(got[key] - ref[key]).max()))
    assert set(got["grads"]) == set(ref["grads"])
    grad = 0.0
    for key, want in ref["grads"].items():
        np.testing.assert_allclose(
            got["grads"][key], want, atol=GRAD_TOL, rtol=GRAD_TOL, err_msg=f"gradient {key}"
        )
        grad = max(grad, float(np.abs(got["grads"][key] - want).max()))
    WORST["forward"] = max(WORST["forward"], fwd)
    WORST["gradient"] = max(WORST["gradient"], grad)
    return fwd, grad

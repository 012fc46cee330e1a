"""One LSTM layer over time: the scan of `cell.recurrent_step`, with a hand-written backward.

The input projection is hoisted out of the loop by the caller (one GEMM over all steps and
both directions); only ``h·W_hhᵀ`` stays inside. Both directions of a bidirectional layer
run in the same scan over a leading direction axis D, the reverse direction on input that the
caller has reversed (within each sequence's length).

The backward pass is a `jax.custom_vjp`: a reverse scan computes the gate gradients step by
step, and the weight gradients are then formed after the loop as one large GEMM each, instead
of being accumulated inside the loop as autodiff of `lax.scan` does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from flax_lstm.cell import LSTMState, activate, batched_matmul, matmul_t, recurrent_step

Array = jax.Array

__all__ = ["reverse_sequences", "run_layer"]


def reverse_sequences(x: Array, lengths: Array | None) -> Array:
    """Reverse ``x`` (T, N, …) along time, within each sequence's length when ``lengths``.

    Steps past a sequence's length stay where they are, so the reversal is its own inverse.
    """
    if lengths is None:
        return jnp.flip(x, axis=0)
    t = jnp.arange(x.shape[0])[:, None]
    idx = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=0, mode="clip")


def _select(mask_t: Array | None, new: Array, old: Array) -> Array:
    return new if mask_t is None else jnp.where(mask_t[:, None], new, old)


def _forward_scan(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, save_acts):
    def body(state, xs):
        gx_t, m_t = xs
        new, acts = recurrent_step(w_hh, w_hr, gx_t, state, rmask)
        new = LSTMState(_select(m_t, new.h, state.h), _select(m_t, new.c, state.c))
        return new, (new.h, new.c, acts) if save_acts else (new.h, new.c)

    _, ys = lax.scan(body, LSTMState(h0, c0), (gx, mask), unroll=unroll)
    return ys


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _layer(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, remat):
    return _forward_scan(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, save_acts=False)


def _layer_fwd(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, remat):
    if remat:  # keep only the states; the gates are recomputed from gx in the backward
        hs, cs = _forward_scan(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, save_acts=False)
        saved = gx
    else:
        hs, cs, saved = _forward_scan(gx, w_hh, w_hr, h0, c0, mask, rmask, unroll, True)
    return (hs, cs), (saved, w_hh, w_hr, h0, c0, mask, rmask, hs, cs)


def _layer_bwd(unroll, remat, residuals, cotangents):
    saved, w_hh, w_hr, h0, c0, mask, rmask, hs, cs = residuals
    dhs, dcs = cotangents
    acc = cs.dtype
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, D, N, H_out)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # (T, D, N, H)
    h_in = h_prev if rmask is None else h_prev * rmask  # what multiplied W_hh at each step
    w_hr_acc = None if w_hr is None else w_hr.astype(acc)

    def body(carry, xs):
        dh, dc = carry  # gradients w.r.t. the state after step t, from later steps
        dh_t, dc_t, saved_t, c_t, c_prev_t, h_in_t, m_t = xs
        dh = dh + dh_t.astype(acc)
        dc = dc + dc_t.astype(acc)
        if m_t is None:
            dh_new, dc_new = dh, dc
        else:  # a frozen step passes its gradient through to the previous state unchanged
            m = m_t[:, None]
            dh_new, dc_new = jnp.where(m, dh, 0), jnp.where(m, dc, 0)
        # The activated gates: stored by the forward, or recomputed from gx with remat.
        acts = activate(saved_t + matmul_t(h_in_t, w_hh, acc)) if remat else saved_t
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        dh_cell = dh_new if w_hr is None else batched_matmul(dh_new, w_hr_acc, acc)
        tanh_c = jnp.tanh(c_t.astype(acc))
        dc_total = dc_new + dh_cell * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc_total * g * i * (1 - i),
                dc_total * c_prev_t * f * (1 - f),
                dc_total * i * (1 - g * g),
                dh_cell * tanh_c * o * (1 - o),
            ],
            axis=-1,
        )
        dh_prev = batched_matmul(dz.astype(w_hh.dtype), w_hh, acc)
        if rmask is not None:
            dh_prev = dh_prev * rmask
        dc_prev = dc_total * f
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(m, 0, dh)
            dc_prev = dc_prev + jnp.where(m, 0, dc)
        out = (dz, None) if w_hr is None else (dz, (dh_new, o * tanh_c))
        return (dh_prev, dc_prev), out

    carry0 = (jnp.zeros(h0.shape, acc), jnp.zeros(c0.shape, acc))
    xs = (dhs, dcs, saved, cs, c_prev, h_in if remat else None, mask)
    (dh0, dc0), (dz, proj) = lax.scan(body, carry0, xs, reverse=True, unroll=unroll)

    # Weight gradients as single GEMMs over all steps and the batch.
    dw_hh = jnp.einsum(
        "tdng,tdnp->dgp", dz.astype(w_hh.dtype), h_in.astype(w_hh.dtype), preferred_element_type=acc
    ).astype(w_hh.dtype)
    if w_hr is None:
        dw_hr = None
    else:
        dh_new, h_cell = proj
        dw_hr = jnp.einsum(
            "tdnp,tdnh->dph",
            dh_new.astype(w_hr.dtype),
            h_cell.astype(w_hr.dtype),
            preferred_element_type=acc,
        ).astype(w_hr.dtype)
    drmask = None if rmask is None else jnp.zeros_like(rmask)
    return (dz.astype(acc), dw_hh, dw_hr, dh0.astype(h0.dtype), dc0.astype(c0.dtype), None, drmask)


_layer.defvjp(_layer_fwd, _layer_bwd)


def run_layer(
    gx: Array,
    w_hh: Array,
    w_hr: Array | None,
    h0: Array,
    c0: Array,
    mask: Array | None = None,
    recurrent_mask: Array | None = None,
    *,
    unroll: int = 1,
    remat: bool = False,
    custom_vjp: bool = True,
) -> tuple[Array, Array]:
    """Scan one layer (all its directions at once) over time.

    Args:
      gx: input gates ``x_t·W_ihᵀ + b_ih + b_hh`` for every step, (T, D, N, 4H), in the
        accumulation dtype (float32 for bfloat16 compute). Direction 1 already reversed.
      w_hh: (D, 4H, H_out) in the compute dtype. w_hr: (D, H_out, H) or None.
      h0: (D, N, H_out) compute dtype. c0: (D, N, H) accumulation dtype.
      mask: (T, N) bool, False where a step is past the sequence's length: the state is frozen
        there. None when every step is valid.
      recurrent_mask: (D, N, H_out) multiplier of ``h`` before ``W_hh`` (variational dropout).
      unroll: `lax.scan` unroll factor. remat: recompute the gates in the backward pass instead
        of storing them. custom_vjp: False differentiates the scan with plain autodiff.

    Returns:
      ``(hs, cs)``: the state after every step, (T, D, N, H_out) and (T, D, N, H).
    """
    if custom_vjp:
        return _layer(gx, w_hh, w_hr, h0, c0, mask, recurrent_mask, unroll, remat)
    step = _forward_scan
    if remat:
        step = jax.checkpoint(_forward_scan, static_argnums=(7, 8))
    return step(gx, w_hh, w_hr, h0, c0, mask, recurrent_mask, unroll, False)

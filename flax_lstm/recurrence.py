"""One LSTM layer over time, as its `flax_lstm.plan.Plan` says: the CPU kernel or the scan.

`run_layer` is the only entry: it runs every direction of a layer (the reverse direction
reads input that the caller has reversed within each sequence's length) and differentiates
as the plan's ``backward`` says. The scan itself, forward and reverse, is in
`flax_lstm._scan`, which runs no compiled code; the kernel's bindings in
`flax_lstm._kernel.ffi`, called here only where the plan's ``recurrence`` is ``"kernel"``
(its ``grad_recurrence`` where the call is differentiated: `Plan.differentiated`). The
hand-written backward is a `jax.custom_vjp` over both: the gate gradients come from a reverse
loop (the scan's or the kernel's), and the weight and input gradients after it, as one large
GEMM each (in float32 on the kernel, its `weight_grads` and `input_grad` calls, over the valid
steps only, unless the batch is padded and its rows are few or the plan's ``weight_grads``
says XLA's, `_kernel_weight_grads`; in bfloat16 over the kernel library's `transposed_copy`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from flax_lstm import _scan
from flax_lstm._kernel import ffi
from flax_lstm._scan import LayerWeights
from flax_lstm.plan import Plan

Array = jax.Array

__all__ = ["LayerWeights", "reverse_sequences", "run_layer"]


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


def _scan_plan(plan: Plan) -> Plan:
    """The scan that computes what the kernel does: its derivatives stand in for the kernel's."""
    return dataclasses.replace(plan, recurrence="scan", hoist_input=False, unroll=1)


# The compiled CPU kernel's calls have no derivatives of their own. Where JAX differentiates
# them (second derivatives: the forward and backward of `_layer` are then differentiated), each
# takes the derivative of the lax.scan path that computes the same function.


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7))
def _kernel_forward(x, w, h0, c0, mask, plan, save_acts, all_c):
    del plan  # the scan of the same plan gives the derivatives
    return ffi.forward(x, w.w_ih, w.b, w.w_hh, h0, c0, mask, save_acts=save_acts, all_c=all_c)


@_kernel_forward.defjvp
def _kernel_forward_jvp(plan, save_acts, all_c, primals, tangents):
    mask = primals[4]

    def scan(x, w, h0, c0):
        return _scan.forward(
            x, w, h0, c0, mask, None, _scan_plan(plan), save_acts=save_acts, all_c=all_c
        )

    out = _kernel_forward(*primals, plan, save_acts, all_c)
    return out, jax.jvp(scan, primals[:4], tangents[:4])[1]


def _kernel_weight_grads(x, w, mask, plan: Plan) -> bool:
    """Whether the kernel library takes the weight and input gradients (`ffi.weight_grads`,
    `ffi.input_grad`) instead of XLA's GEMMs: in float32, for a ragged batch (over its valid
    steps only) and for a padded one unless its rows are few enough for XLA's direct GEMM
    (`_scan.few_rows`) or the plan asks for XLA's (``plan.weight_grads``, measured per CPU);
    the kernel's GEMMs read x and h in place, where XLA's copy ``[x, h_prev]`` into fresh
    buffers first (docs/performance/design.md, "Tuning per CPU")."""
    if w.w_hh.dtype != jnp.float32:
        return False
    if mask is not None:
        return True
    steps = x.shape[0] * x.shape[2]
    few = _scan.few_rows(steps, x.shape[-1] + w.w_hh.shape[-1], w.w_hh.dtype)
    return plan.weight_grads == "kernel" and not few


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _kernel_backward(plan, all_c, residuals, cotangents):
    x, w, h0, c0, mask, _, hs, cs, acts = residuals
    dhs, dc_out = cotangents
    gate_grads = ffi.backward(dhs, dc_out, acts, cs, c0, w.w_hh, mask, inputs=x.shape[-1])
    weight_grads = None
    if _kernel_weight_grads(x, w, mask, plan):
        dz = gate_grads[0]
        dw_ih, dw_hh = ffi.weight_grads(dz, x, hs, h0, mask)
        weight_grads = (ffi.input_grad(dz, w.w_ih, mask), dw_ih, dw_hh)
    return _scan.backward(
        plan, all_c, residuals, cotangents, gate_grads, weight_grads, ffi.transposed_copy
    )


@_kernel_backward.defjvp
def _kernel_backward_jvp(plan, all_c, primals, tangents):
    # The kernel's forward saves what the scan's does (no remat): the scan's backward applies.
    scan_backward = functools.partial(_scan.backward, _scan_plan(plan), all_c)
    out = _kernel_backward(plan, all_c, *primals)
    return out, jax.jvp(scan_backward, primals, tangents)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _layer(x, w, h0, c0, mask, rmask, plan, all_c):
    if plan.recurrence == "kernel":
        return _kernel_forward(x, w, h0, c0, mask, plan, False, all_c)[:2]
    return _scan.forward(x, w, h0, c0, mask, rmask, plan, save_acts=False, all_c=all_c)[:2]


def _layer_fwd(x, w, h0, c0, mask, rmask, plan, all_c):
    plan = plan.differentiated  # where the call's own path differs when differentiated
    if plan.recurrence == "kernel":  # the compiled recurrence
        hs, cs, acts = _kernel_forward(x, w, h0, c0, mask, plan, True, True)
    elif plan.backward == "remat":  # keep only the states; the gates are recomputed
        plain = dataclasses.replace(plan, hoist_input=False)
        hs, cs, acts = _scan.forward(x, w, h0, c0, mask, rmask, plain, save_acts=False, all_c=True)
    else:
        hs, cs, acts = _scan.forward(x, w, h0, c0, mask, rmask, plan, save_acts=True, all_c=True)
    c_out = cs if all_c else cs[-1]
    return (hs, c_out), (x, w, h0, c0, mask, rmask, hs, cs, acts)


def _layer_bwd(plan, all_c, residuals, cotangents):
    plan = plan.differentiated
    if plan.recurrence == "kernel":
        return _kernel_backward(plan, all_c, residuals, cotangents)
    return _scan.backward(plan, all_c, residuals, cotangents)


_layer.defvjp(_layer_fwd, _layer_bwd)


def run_layer(
    x: Array,
    weights: LayerWeights,
    h0: Array,
    c0: Array,
    mask: Array | None,
    recurrent_mask: Array | None,
    *,
    plan: Plan,
    all_c: bool = True,
) -> tuple[Array, Array]:
    """Run one layer (all its directions at once) over time, as ``plan`` says.

    Args:
      x: the layer's input per direction, (T, D, N, F), compute dtype; direction 1 already
        reversed in time (within each sequence's length).
      weights: `LayerWeights`: w_ih (D, 4H, F) and w_hh (D, 4H, H_out) in the compute dtype,
        b = ``b_ih + b_hh`` (D, 4H) in the accumulation dtype (float32 for bfloat16) or None,
        w_hr (D, H_out, H) or None.
      h0: (D, N, H_out) compute dtype. c0: (D, N, H) accumulation dtype.
      mask: (T, N) bool, False where a step is past the sequence's length: the state is frozen
        there. None when every step is valid.
      recurrent_mask: (D, N, H_out) multiplier of ``h`` before ``W_hh`` (variational dropout),
        or None.
      plan: the resolved `flax_lstm.plan.Plan` (kernel or scan, backward, scan settings).
      all_c: return the cell state of every step; else only the last one, which saves a
        (T, D, N, H) buffer in inference and its mostly-zero gradient in training.

    Returns:
      ``(hs, cs)``: the state after every step, (T, D, N, H_out) and (T, D, N, H); with
      ``all_c=False`` ``cs`` is the last step's cell state, (D, N, H).
    """
    if plan.backward != "autodiff":
        return _layer(x, weights, h0, c0, mask, recurrent_mask, plan, all_c)
    forward = functools.partial(_scan.forward, plan=plan, save_acts=False, all_c=all_c)
    return forward(x, weights, h0, c0, mask, recurrent_mask)[:2]

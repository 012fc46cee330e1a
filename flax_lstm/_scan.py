"""The `lax.scan` recurrence of one layer: its forward, and the reverse loop of its backward.

Both run over a leading direction axis D (1, or 2 for both directions of a bidirectional layer
in one loop). The input projection ``x·W_ihᵀ`` is either hoisted out of the loop as one GEMM
over all steps (``plan.hoist_input``: the GPU default, where it turns many small GEMMs into
one large one) or computed step by step inside it (the CPU default: there the per-step
operands stay in cache, while the hoisted (L, N, 4H) gates make a round trip through memory;
measured: docs/performance/design.md, "The scan path on CPU").

The backward (`backward`) is the hand-written one of `flax_lstm.recurrence`: a reverse loop
computes the gate gradients ``dz`` step by step, and the gradients of ``W_ih``, ``b``,
``W_hh``, ``W_hr`` and the input are then formed after the loop as one large GEMM (or sum)
each, instead of being accumulated inside the loop as autodiff of `lax.scan` does. With
``plan.backward == "remat"`` the loop recomputes the gates and accumulates the weight
gradients itself, so that nothing of size (L, N, 4H) is kept.

Nothing here runs compiled code: `flax_lstm.recurrence` passes in what the compiled kernel
computed (the gate gradients, a ragged batch's weight gradients) and the transposed copy its
bfloat16 weight gradients take.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax import lax

from flax_lstm.cell import LSTMState, activate, batched_matmul, recurrent_step, weight_matmul
from flax_lstm.plan import Plan

Array = jax.Array
# A row-major transposed copy, (R, …, J) → (J, R, …), for the bfloat16 weight-gradient GEMMs on
# CPU; None: XLA's own transpose.
Transpose = Callable[[Array], Array] | None


class LayerWeights(NamedTuple):
    """One layer's weights, every direction: ``w_ih`` (D, 4H, F) and ``w_hh`` (D, 4H, H_out) in
    the compute dtype; ``b`` = ``b_ih + b_hh`` (D, 4H) in the accumulation dtype, or None;
    ``w_hr`` (D, H_out, H) or None."""

    w_ih: Array
    b: Array | None
    w_hh: Array
    w_hr: Array | None


def _select(mask_t: Array | None, new: Array, old: Array) -> Array:
    return new if mask_t is None else jnp.where(mask_t[:, None], new, old)


@overload
def _t(w: Array) -> Array: ...
@overload
def _t(w: None) -> None: ...
def _t(w: Array | None) -> Array | None:
    return None if w is None else jnp.swapaxes(w, -1, -2)


def dir_matmul(a: Array, w: Array, acc: Any) -> Array:
    """``a[:, d] @ w[d]`` for each direction d: (T, D, N, K), (D, K, M) → (T, D, N, M).

    One GEMM over all steps per direction (D is 1 or 2), written as a contraction of K alone
    with (T, N) kept apart: XLA merges them into one GEMM dimension where that is free, and a
    batch sharded along N stays sharded (an explicit (T·N, K) reshape all-gathers it).
    """
    out = [
        lax.dot_general(a[:, d : d + 1], w[d], (((3,), (0,)), ((), ())), preferred_element_type=acc)
        for d in range(w.shape[0])
    ]
    return out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)


def few_rows(steps: Any, columns: int, dtype: Any) -> bool:
    """Whether a weight gradient over ``steps`` rows (T·N, symbolic under `jax.export`) and
    ``columns`` columns of inputs (I + H) is best taken on CPU as one direct XLA GEMM per
    weight: in float32 when the rows are no more than the columns (measured against the
    copies of `sum_outer` and against the kernel's `weight_grads`:
    docs/performance/design.md, "Tuning per CPU")."""
    return isinstance(steps, int) and steps <= columns and jnp.dtype(dtype) == jnp.float32


def sum_outer(
    a: Array, bs: list[Array], dtype: Any, acc: Any, plan: Plan, transpose: Transpose = None
) -> list[Array]:
    """``Σ_{t,n} a[t,d,n]ᵀ b[t,d,n]`` per direction for each ``b`` in ``bs``.

    (T, D, N, I) and each (T, D, N, J_b) → a list of (D, I, J_b), all contracted over (T, N).

    The (T, N) axes are contracted as two axes, never reshaped into one: with the batch
    sharded along N each device then contracts its own rows and the partial sums are reduced
    once (a (T·N, ·) reshape would all-gather every activation first); unsharded, XLA merges
    the two axes into one GEMM dimension for free.

    On CPU the ``bs`` are concatenated, transposed into a materialised (ΣJ, T, N) copy and
    multiplied as one plain GEMM ``bᵀ·a``: XLA:CPU runs the transposed-operand form
    ``aᵀ·b`` through a slower GEMM and transposes the large ``a`` for each ``b`` (measured:
    docs/performance/design.md). In bfloat16 ``transpose`` makes the copy where given (the
    compiled kernel's plan passes the kernel library's: XLA's own stays a column-major
    layout, and XLA then runs the GEMM in float32). The (ΣJ, I) product is kept as it is
    before it is split and transposed: XLA would otherwise fold the transpose of a single
    ``b``'s product into the dot, and XLA:CPU has no bfloat16 GEMM with float32 output for
    that transposed form (``UNIMPLEMENTED: ... DotThunk``). Elsewhere one GEMM each, and so on
    CPU in float32 when the rows (T·N) are no more than the columns of the ``bs`` (ΣJ): then
    the copies above, of the (ΣJ, I) product most of all, cost more than the GEMM (measured:
    docs/performance/design.md, "Tuning per CPU").
    """
    widths = [b.shape[-1] for b in bs]
    outs: list[list[Array]] = [[] for _ in bs]
    rows = (((0, 1), (0, 1)), ((), ()))  # contract (T, N) of both operands
    direct = few_rows(a.shape[0] * a.shape[2], sum(widths), dtype)
    for d in range(a.shape[1]):
        a3 = a[:, d].astype(dtype)
        if plan.on_cpu and not direct:
            b3 = jnp.concatenate([b[:, d].astype(dtype) for b in bs], axis=-1)  # (T, N, ΣJ)
            if b3.dtype == jnp.bfloat16 and transpose is not None:
                b3t = transpose(b3)
            else:
                b3t = lax.optimization_barrier(jnp.moveaxis(b3, -1, 0))
            g = lax.dot_general(b3t, a3, (((1, 2), (0, 1)), ((), ())), preferred_element_type=acc)
            g = lax.optimization_barrier(g)  # the plain GEMM, not a transposed form (above)
            parts = jnp.split(g, list(itertools.accumulate(widths))[:-1], axis=0)
            for out, part in zip(outs, parts, strict=True):
                out.append(part.T.astype(dtype))
        else:
            for out, b in zip(outs, bs, strict=True):
                g = lax.dot_general(a3, b[:, d].astype(dtype), rows, preferred_element_type=acc)
                out.append(g.astype(dtype))
    return [jnp.stack(out) for out in outs]


def _gates_in(x_or_gx_t, w_ih, b, hoist, acc, stored=False):
    """Input part of the gates at one step: precomputed (hoisted) or ``x_t·W_ihᵀ`` now, from
    ``w_ih`` transposed or, with ``stored``, as stored (`flax_lstm.cell.weight_matmul`)."""
    gx_t = x_or_gx_t if hoist else weight_matmul(x_or_gx_t, w_ih, acc, stored=stored)
    return gx_t if b is None else gx_t + b[:, None, :]


def forward(
    x, w: LayerWeights, h0, c0, mask, rmask, plan: Plan, *, save_acts, all_c
) -> tuple[Array, Array, Array | None]:
    """``(hs, c, acts)`` of one layer: every step's ``h`` (T, D, N, H_out); c is every step's
    cell state when ``all_c``, else only the last (the final carry, which equals the last
    step's since masked steps keep the state); the activated gates when ``save_acts``, else
    None. See `flax_lstm.recurrence.run_layer` for the operands."""
    acc, hoist = c0.dtype, plan.hoist_input
    # Several steps take the weights transposed once, outside the loop; a single step takes
    # them as stored, where that copy costs more than its one product (`weight_matmul`).
    stored = isinstance(x.shape[0], int) and x.shape[0] == 1
    w_ih, w_hh, w_hr = w.w_ih, w.w_hh, w.w_hr
    if not stored:
        w_ih, w_hh, w_hr = _t(w_ih), _t(w_hh), _t(w_hr)
    xs = dir_matmul(x, _t(w.w_ih), acc) if hoist else x

    def body(state, xs_t):
        in_t, m_t = xs_t
        gx_t = _gates_in(in_t, w_ih, w.b, hoist, acc, stored)
        new, acts = recurrent_step(w_hh, w_hr, gx_t, state, rmask, stored=stored)
        new = LSTMState(_select(m_t, new.h, state.h), _select(m_t, new.c, state.c))
        return new, (new.h, new.c if all_c else None, acts if save_acts else None)

    last, (hs, cs, acts) = lax.scan(body, LSTMState(h0, c0), (xs, mask), unroll=plan.unroll)
    return hs, last.c if cs is None else cs, acts  # cs: every step's, with all_c


def _cell_grads(acts_t, dh, dc, c_t, c_prev_t, w_hr_acc, acc):
    """One step back through the cell: ``(dz, dc_prev, h_cell)`` from the gradients ``dh``,
    ``dc`` of the state after the step; ``h_cell`` (before projection) only with ``w_hr``."""
    i, f, g, o = jnp.split(acts_t, 4, axis=-1)
    dh_cell = dh if w_hr_acc is None else batched_matmul(dh, w_hr_acc, acc)
    tanh_c = jnp.tanh(c_t.astype(acc))
    dc_total = dc + dh_cell * o * (1 - tanh_c * tanh_c)
    dz = jnp.concatenate(
        [
            dc_total * g * i * (1 - i),
            dc_total * c_prev_t * f * (1 - f),
            dc_total * i * (1 - g * g),
            dh_cell * tanh_c * o * (1 - o),
        ],
        axis=-1,
    )
    return dz, dc_total * f, None if w_hr_acc is None else o * tanh_c


def _reverse_body(x, w: LayerWeights, rmask, plan: Plan, acc):
    """The body of the reverse loop: carry ``(dh, dc)`` (with remat also the running weight
    gradients), per step the saved or recomputed gates; yields ``dz`` (and, with a projection,
    what its gradient needs), or with remat the input gradient ``dx_t``."""
    remat = plan.backward == "remat"
    w_hr_acc = None if w.w_hr is None else w.w_hr.astype(acc)
    # Transposed once, for recomputing the gates inside the loop (remat; unused, and so
    # dropped by the compiler, otherwise).
    w_ih_t, w_hh_t = _t(w.w_ih), _t(w.w_hh)

    def body(carry, xs):
        dh, dc, *grad_acc = carry
        dh_t, dc_t, saved_t, c_t, c_prev_t, h_in_t, m_t = xs
        dh = dh + dh_t.astype(acc)
        if dc_t is not None:
            dc = dc + dc_t.astype(acc)
        if m_t is None:
            dh_new, dc_new = dh, dc
        else:  # a frozen step passes its gradient through to the previous state unchanged
            m = m_t[:, None]
            dh_new, dc_new = jnp.where(m, dh, 0), jnp.where(m, dc, 0)
        if remat:  # the activated gates, recomputed from x_t; else stored by the forward
            gx_t = _gates_in(saved_t, w_ih_t, w.b, False, acc)
            acts_t = activate(gx_t + batched_matmul(h_in_t, w_hh_t, acc))
        else:
            acts_t = saved_t
        dz, dc_prev, h_cell = _cell_grads(acts_t, dh_new, dc_new, c_t, c_prev_t, w_hr_acc, acc)
        dz_c = dz.astype(w.w_hh.dtype)
        dh_prev = batched_matmul(dz_c, w.w_hh, acc)
        if rmask is not None:
            dh_prev = dh_prev * rmask
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(m, 0, dh)
            dc_prev = dc_prev + jnp.where(m, 0, dc)
        if not remat:
            return (dh_prev, dc_prev), (dz, None if w.w_hr is None else (dh_new, h_cell))
        dz_t = jnp.swapaxes(dz_c, -1, -2)
        g_ih, g_hh, g_b, g_hr = grad_acc
        g_ih = g_ih + batched_matmul(dz_t, saved_t.astype(w.w_hh.dtype), acc)
        g_hh = g_hh + batched_matmul(dz_t, h_in_t.astype(w.w_hh.dtype), acc)
        g_b = g_b + dz.sum(axis=-2)
        if h_cell is not None:  # set exactly with a projection (w_hr)
            g_hr = g_hr + batched_matmul(jnp.swapaxes(dh_new, -1, -2), h_cell, acc)
        dx_t = batched_matmul(dz_c, w.w_ih, acc).astype(x.dtype)
        return (dh_prev, dc_prev, g_ih, g_hh, g_b, g_hr), dx_t

    return body


def _weight_grads(dz, proj, x, h_in, w: LayerWeights, acc, plan: Plan, transpose: Transpose):
    """``(dx, dw_ih, dw_hh, dw_hr)``: every weight gradient, and the input gradient, as one
    GEMM over all steps and sequences from the gate gradients ``dz`` (T, D, N, 4H)."""
    dz_c = dz.astype(w.w_hh.dtype)
    dx = dir_matmul(dz_c, w.w_ih, acc).astype(x.dtype)
    dw_ih, dw_hh = sum_outer(dz_c, [x, h_in], w.w_ih.dtype, acc, plan, transpose)
    dw_hr = None
    if w.w_hr is not None:
        dw_hr = sum_outer(proj[0], [proj[1]], w.w_hr.dtype, acc, plan, transpose)[0]
    return dx, dw_ih, dw_hh, dw_hr


def backward(
    plan: Plan,
    all_c: bool,
    residuals,
    cotangents,
    gate_grads=None,
    weight_grads=None,
    transpose: Transpose = None,
):
    """The cotangents of ``(x, w, h0, c0, mask, rmask)`` of one layer (see
    `flax_lstm.recurrence`). ``gate_grads``: ``(dz, db, dh0, dc0)`` computed elsewhere (the
    compiled kernel's reverse recurrence), which replace the reverse loop; ``weight_grads``:
    ``(dx, dw_ih, dw_hh)`` computed elsewhere (the kernel's, in float32; no projection), which
    replace the GEMMs after it; ``transpose``: see `sum_outer`."""
    x, w, h0, c0, mask, rmask, hs, cs, acts = residuals
    dhs, dc_out = cotangents
    # Only the last cell state is an output unless all_c: its gradient starts the reverse loop
    # instead of a (T, D, N, H) array that is zero but for one step.
    dcs = dc_out if all_c else None
    acc = cs.dtype
    remat = plan.backward == "remat"
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, D, N, H_out)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # (T, D, N, H)
    h_in = h_prev if rmask is None else h_prev * rmask  # what multiplied W_hh at each step
    if gate_grads is not None:
        dz, db, dh0, dc0 = gate_grads
        if weight_grads is None:
            dx, dw_ih, dw_hh, dw_hr = _weight_grads(dz, None, x, h_in, w, acc, plan, transpose)
        else:  # float32, as everything else here (see recurrence._kernel_backward)
            (dx, dw_ih, dw_hh), dw_hr = weight_grads, None
    else:
        dc_last = jnp.zeros(c0.shape, acc) if all_c else dc_out.astype(acc)
        carry0: tuple[Any, ...] = (jnp.zeros(h0.shape, acc), dc_last)
        if remat:
            zeros = lambda a: None if a is None else jnp.zeros(a.shape, acc)  # noqa: E731
            db0 = jnp.zeros(w.w_hh.shape[:2], acc)
            carry0 += (zeros(w.w_ih), zeros(w.w_hh), db0, zeros(w.w_hr))
        xs = (dhs, dcs, x if remat else acts, cs, c_prev, h_in if remat else None, mask)
        body = _reverse_body(x, w, rmask, plan, acc)
        carry, ys = lax.scan(body, carry0, xs, reverse=True, unroll=plan.unroll)
        dh0, dc0 = carry[:2]
        if remat:
            dx, (dw_ih, dw_hh, db, dw_hr) = ys, carry[2:]
            dw_ih, dw_hh = dw_ih.astype(w.w_ih.dtype), dw_hh.astype(w.w_hh.dtype)
            dw_hr = None if w.w_hr is None else dw_hr.astype(w.w_hr.dtype)
        else:
            dz, proj = ys
            dx, dw_ih, dw_hh, dw_hr = _weight_grads(dz, proj, x, h_in, w, acc, plan, transpose)
            db = dz.sum(axis=(0, 2))
    db = None if w.b is None else db.astype(w.b.dtype)
    dw = LayerWeights(dw_ih, db, dw_hh, dw_hr)
    drmask = None if rmask is None else jnp.zeros_like(rmask)
    return (dx, dw, dh0.astype(h0.dtype), dc0.astype(c0.dtype), None, drmask)

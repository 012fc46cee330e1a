"""One LSTM layer over time: the scan of `cell.recurrent_step`, with a hand-written backward.

The scan runs over a leading direction axis D: both directions of a bidirectional layer in
one scan (the GPU default, `fuse_directions`), or one direction per call (the CPU default).
The reverse direction reads input that the caller has reversed within each sequence's length.

The input projection ``x·W_ihᵀ`` is either hoisted out of the loop as one GEMM over all steps
(``hoist_input=True``: the GPU default, where it turns many small GEMMs into one large one)
or computed step by step inside the loop (the CPU default: there the per-step operands stay
in cache, while the hoisted (L, N, 4H) gates make a round trip through memory; measured 57
vs 74-94 ms for the forward of B32 T128 H256 on one core).

The backward pass is a `jax.custom_vjp`: a reverse scan computes the gate gradients step by
step, and the gradients of ``W_ih``, ``b``, ``W_hh``, ``W_hr`` and the input are then formed
after the loop as one large GEMM (or sum) each, instead of being accumulated inside the loop
as autodiff of `lax.scan` does.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from flax_lstm import kernel as cpu_kernel
from flax_lstm.cell import LSTMState, activate, batched_matmul, recurrent_step

Array = jax.Array

__all__ = ["kernel_ineligible", "reverse_sequences", "run_layer"]


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


def _t(w: Array | None) -> Array | None:
    return None if w is None else jnp.swapaxes(w, -1, -2)


def _dir_matmul(a: Array, w: Array, acc) -> Array:
    """``a[:, d] @ w[d]`` for each direction d: (T, D, N, K), (D, K, M) → (T, D, N, M).

    One 2-D GEMM over all steps per direction (D is 1 or 2).
    """
    t, _, n, k = a.shape
    out = [
        jnp.matmul(a[:, d].reshape(t * n, k), w[d], preferred_element_type=acc).reshape(t, n, -1)
        for d in range(w.shape[0])
    ]
    return jnp.stack(out, axis=1)


def _sum_outer(
    a: Array, bs: list[Array], dtype, acc, transposed_copy: bool | None = None
) -> list[Array]:
    """``Σ_{t,n} a[t,d,n]ᵀ b[t,d,n]`` per direction for each ``b`` in ``bs``.

    (T, D, N, I) and each (T, D, N, J_b) → a list of (D, I, J_b), all contracted over (T·N).

    On CPU the ``bs`` are concatenated, transposed into a materialised (ΣJ, T·N) copy and
    multiplied as one plain GEMM ``bᵀ·a``: XLA:CPU runs the transposed-operand form
    ``aᵀ·b`` through a slower GEMM and transposes the large ``a`` for each ``b`` (measured
    36.5 → 24.3 ms for the three gradient GEMMs of B32 T128 H256). In bfloat16 the copy is
    made by the kernel library (`flax_lstm.kernel.transposed_copy`): XLA's own stays a
    column-major layout, and XLA then runs the GEMM in float32 (B32 T128 H256 I128: 18.9 →
    11.2 ms). Elsewhere one GEMM each.
    ``transposed_copy`` forces either form (default: by backend).
    """
    on_cpu = jax.default_backend() == "cpu" if transposed_copy is None else transposed_copy
    widths = [b.shape[-1] for b in bs]
    outs: list[list[Array]] = [[] for _ in bs]
    for d in range(a.shape[1]):
        a2 = a[:, d].reshape(-1, a.shape[-1]).astype(dtype)
        if on_cpu:
            b2 = jnp.concatenate([b[:, d].astype(dtype) for b in bs], axis=-1)
            b2 = b2.reshape(-1, sum(widths))
            if b2.dtype == jnp.bfloat16 and cpu_kernel.available():
                b2t = cpu_kernel.transposed_copy(b2)
            else:
                b2t = lax.optimization_barrier(b2.T)
            g = jnp.matmul(b2t, a2, preferred_element_type=acc)  # (ΣJ, I)
            parts = jnp.split(g, list(itertools.accumulate(widths))[:-1], axis=0)
            for out, part in zip(outs, parts, strict=True):
                out.append(part.T.astype(dtype))
        else:
            for out, b in zip(outs, bs, strict=True):
                b2 = b[:, d].reshape(-1, b.shape[-1]).astype(dtype)
                out.append(jnp.matmul(a2.T, b2, preferred_element_type=acc).astype(dtype))
    return [jnp.stack(out) for out in outs]


def _gates_in(x_or_gx_t, w_ih_t, b, hoist, acc):
    """Input part of the gates at one step: precomputed (hoisted) or ``x_t·W_ihᵀ`` now."""
    gx_t = x_or_gx_t if hoist else batched_matmul(x_or_gx_t, w_ih_t, acc)
    return gx_t if b is None else gx_t + b[:, None, :]


def _forward_scan(x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hoist, unroll, save_acts, all_c):
    """``(hs, c, acts)``: c is every step's cell state when ``all_c``, else only the last (the
    final carry, which equals the last step's since masked steps keep the state); acts or None."""
    acc = c0.dtype
    w_ih_t, w_hh_t, w_hr_t = _t(w_ih), _t(w_hh), _t(w_hr)  # transposed once, outside the loop
    xs = _dir_matmul(x, w_ih_t, acc) if hoist else x

    def body(state, xs_t):
        in_t, m_t = xs_t
        gx_t = _gates_in(in_t, w_ih_t, b, hoist, acc)
        new, acts = recurrent_step(w_hh_t, w_hr_t, gx_t, state, rmask)
        new = LSTMState(_select(m_t, new.h, state.h), _select(m_t, new.c, state.c))
        return new, (new.h, new.c if all_c else None, acts if save_acts else None)

    last, (hs, cs, acts) = lax.scan(body, LSTMState(h0, c0), (xs, mask), unroll=unroll)
    return hs, cs if all_c else last.c, acts


_STATIC = (9, 10, 11, 12, 13)  # hoist, unroll, remat, all_c, kernel


# The compiled CPU kernel's calls have no derivatives of their own. Where JAX differentiates
# them (second derivatives: the forward and backward of `_layer` are then differentiated), each
# takes the derivative of the lax.scan path that computes the same function.


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8))
def _kernel_forward(x, w_ih, b, w_hh, h0, c0, mask, save_acts, all_c):
    return cpu_kernel.forward(x, w_ih, b, w_hh, h0, c0, mask, save_acts=save_acts, all_c=all_c)


@_kernel_forward.defjvp
def _kernel_forward_jvp(save_acts, all_c, primals, tangents):
    mask = primals[6]

    def scan(x, w_ih, b, w_hh, h0, c0):
        return _forward_scan(x, w_ih, b, w_hh, None, h0, c0, mask, None, False, 1, save_acts, all_c)

    out = _kernel_forward(*primals, save_acts, all_c)
    return out, jax.jvp(scan, primals[:6], tangents[:6])[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def _layer(x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hoist, unroll, remat, all_c, kernel):
    if kernel:
        return _kernel_forward(x, w_ih, b, w_hh, h0, c0, mask, False, all_c)[:2]
    args = (x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hoist, unroll)
    return _forward_scan(*args, False, all_c)[:2]


def _layer_fwd(x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hoist, unroll, remat, all_c, kernel):
    args = (x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hoist, unroll)
    if kernel:  # the compiled recurrence (float32 or bfloat16, no projection, rmask or remat)
        hs, cs, acts = _kernel_forward(x, w_ih, b, w_hh, h0, c0, mask, True, True)
    elif remat:  # keep only the states; the gates are recomputed in the backward
        hs, cs, acts = _forward_scan(*args[:-2], False, unroll, False, True)
    else:
        hs, cs, acts = _forward_scan(*args, True, True)
    c_out = cs if all_c else cs[-1]
    return (hs, c_out), (x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hs, cs, acts)


def _layer_bwd(hoist, unroll, remat, all_c, kernel, residuals, cotangents):
    if kernel:
        return _kernel_bwd(hoist, unroll, all_c, residuals, cotangents)
    return _bwd(hoist, unroll, remat, all_c, False, residuals, cotangents)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _kernel_bwd(hoist, unroll, all_c, residuals, cotangents):
    return _bwd(hoist, unroll, False, all_c, True, residuals, cotangents)


@_kernel_bwd.defjvp
def _kernel_bwd_jvp(hoist, unroll, all_c, primals, tangents):
    # The kernel's forward saves what the scan's does (no remat): the scan's backward applies.
    scan_bwd = functools.partial(_bwd, hoist, unroll, False, all_c, False)
    return _kernel_bwd(hoist, unroll, all_c, *primals), jax.jvp(scan_bwd, primals, tangents)[1]


def _bwd(hoist, unroll, remat, all_c, kernel, residuals, cotangents):
    x, w_ih, b, w_hh, w_hr, h0, c0, mask, rmask, hs, cs, acts = residuals
    dhs, dc_out = cotangents
    # Only the last cell state is an output unless all_c: its gradient starts the reverse scan
    # instead of a (T, D, N, H) array that is zero but for one step.
    dcs = dc_out if all_c else None
    acc = cs.dtype
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, D, N, H_out)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # (T, D, N, H)
    h_in = h_prev if rmask is None else h_prev * rmask  # what multiplied W_hh at each step
    w_hr_acc = None if w_hr is None else w_hr.astype(acc)
    if remat:  # weights transposed once, for recomputing the gates inside the loop
        w_ih_t, w_hh_t = _t(w_ih), _t(w_hh)

    def body(carry, xs):
        # dh, dc: gradients w.r.t. the state after step t, from later steps; with remat also
        # the weight gradients, accumulated here so that nothing of size (T, N, 4H) is kept.
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
            gx_t = _gates_in(saved_t, w_ih_t, b, False, acc)
            acts_t = activate(gx_t + batched_matmul(h_in_t, w_hh_t, acc))
        else:
            acts_t = saved_t
        i, f, g, o = jnp.split(acts_t, 4, axis=-1)
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
        dz_c = dz.astype(w_hh.dtype)
        dh_prev = batched_matmul(dz_c, w_hh, acc)
        if rmask is not None:
            dh_prev = dh_prev * rmask
        dc_prev = dc_total * f
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(m, 0, dh)
            dc_prev = dc_prev + jnp.where(m, 0, dc)
        h_cell = None if w_hr is None else o * tanh_c
        if not remat:
            return (dh_prev, dc_prev), (dz, None if w_hr is None else (dh_new, h_cell))
        dz_t = jnp.swapaxes(dz_c, -1, -2)
        g_ih, g_hh, g_b, g_hr = grad_acc
        g_ih = g_ih + batched_matmul(dz_t, saved_t.astype(w_hh.dtype), acc)
        g_hh = g_hh + batched_matmul(dz_t, h_in_t.astype(w_hh.dtype), acc)
        g_b = g_b + dz.sum(axis=-2)
        if w_hr is not None:
            g_hr = g_hr + batched_matmul(jnp.swapaxes(dh_new, -1, -2), h_cell, acc)
        dx_t = batched_matmul(dz_c, w_ih, acc).astype(x.dtype)
        return (dh_prev, dc_prev, g_ih, g_hh, g_b, g_hr), dx_t

    dc_last = jnp.zeros(c0.shape, acc) if all_c else dc_out.astype(acc)
    carry0 = (jnp.zeros(h0.shape, acc), dc_last)
    if remat:
        zeros = lambda w: None if w is None else jnp.zeros(w.shape, acc)  # noqa: E731
        carry0 += (zeros(w_ih), zeros(w_hh), jnp.zeros(w_hh.shape[:2], acc), zeros(w_hr))
    xs = (dhs, dcs, x if remat else acts, cs, c_prev, h_in if remat else None, mask)
    if kernel:  # the same reverse recurrence, compiled: dz for every step, its sum, dh0, dc0
        dz, db, dh0, dc0 = cpu_kernel.backward(
            dhs, dcs if all_c else dc_out, acts, cs, c0, w_hh, mask
        )
        carry, ys = (dh0, dc0), (dz, None)
    else:
        carry, ys = lax.scan(body, carry0, xs, reverse=True, unroll=unroll)
    dh0, dc0 = carry[:2]
    if remat:
        dx = ys
        dw_ih, dw_hh, db, dw_hr = carry[2:]
        dw_ih, dw_hh = dw_ih.astype(w_ih.dtype), dw_hh.astype(w_hh.dtype)
        dw_hr = None if w_hr is None else dw_hr.astype(w_hr.dtype)
    else:
        # Every weight gradient, and the input gradient, as one GEMM over all steps and batch.
        dz, proj = ys
        dz_c = dz.astype(w_hh.dtype)
        dx = _dir_matmul(dz_c, w_ih, acc).astype(x.dtype)
        dw_ih, dw_hh = _sum_outer(dz_c, [x, h_in], w_ih.dtype, acc)
        if not kernel:
            db = dz.sum(axis=(0, 2))
        dw_hr = None if w_hr is None else _sum_outer(proj[0], [proj[1]], w_hr.dtype, acc)[0]
    db = None if b is None else db.astype(b.dtype)
    drmask = None if rmask is None else jnp.zeros_like(rmask)
    return (dx, dw_ih, db, dw_hh, dw_hr, dh0.astype(h0.dtype), dc0.astype(c0.dtype), None, drmask)


_layer.defvjp(_layer_fwd, _layer_bwd)


def kernel_ineligible(
    dtype,
    *,
    projection: bool,
    recurrent_dropout: bool,
    remat: bool,
    custom_vjp: bool,
    empty: bool = False,
) -> str | None:
    """What keeps a layer from the compiled CPU kernel (a phrase), or None if nothing does.

    The one statement of the kernel's reach, for `run_layer` (from its arrays) and
    `flax_lstm.lstm` (from its arguments): it computes in float32 or bfloat16 without
    projection, recurrent dropout or remat, and needs the hand-written backward
    (``custom_vjp``). The backend, whether the kernel could be built and whether this CPU has
    the instructions for bfloat16 are the caller's to check (`flax_lstm.kernel.build_error`).
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.bfloat16):
        return f"dtype {dtype.name} (it computes in float32 or bfloat16)"
    if projection:
        return "proj_size > 0"
    if recurrent_dropout:
        return "recurrent_dropout"
    if remat:
        return "remat=True"
    if not custom_vjp:
        return "custom_vjp=False"
    if empty:
        return "empty operands"
    return None


def run_layer(
    x: Array,
    w_ih: Array,
    b: Array | None,
    w_hh: Array,
    w_hr: Array | None,
    h0: Array,
    c0: Array,
    mask: Array | None = None,
    recurrent_mask: Array | None = None,
    *,
    hoist_input: bool = True,
    unroll: int = 1,
    remat: bool = False,
    custom_vjp: bool = True,
    all_c: bool = True,
    kernel: bool = False,
) -> tuple[Array, Array]:
    """Scan one layer (all its directions at once) over time.

    Args:
      x: the layer's input per direction, (T, D, N, F), compute dtype; direction 1 already
        reversed in time (within each sequence's length).
      w_ih: (D, 4H, F) and w_hh: (D, 4H, H_out), compute dtype; w_hr: (D, H_out, H) or None.
      b: ``b_ih + b_hh``, (D, 4H) in the accumulation dtype (float32 for bfloat16), or None.
      h0: (D, N, H_out) compute dtype. c0: (D, N, H) accumulation dtype.
      mask: (T, N) bool, False where a step is past the sequence's length: the state is frozen
        there. None when every step is valid.
      recurrent_mask: (D, N, H_out) multiplier of ``h`` before ``W_hh`` (variational dropout).
      hoist_input: compute ``x·W_ihᵀ`` for all steps before the loop (else inside it).
      unroll: `lax.scan` unroll factor. remat: recompute the gates in the backward pass instead
        of storing them. custom_vjp: False differentiates the scan with plain autodiff.
      all_c: return the cell state of every step; else only the last one, which saves a
        (T, D, N, H) buffer in inference and its mostly-zero gradient in training.
      kernel: run the recurrence (forward and backward) in the compiled CPU kernel of
        `flax_lstm.kernel` instead of `lax.scan`. Only for float32 (or bfloat16, with a float32
        ``c0``, on CPUs with AVX512_BF16) without ``w_hr`` or
        ``recurrent_mask``, with ``custom_vjp`` and without ``remat`` (`kernel_ineligible`
        says what else is needed); ValueError otherwise.

    Returns:
      ``(hs, cs)``: the state after every step, (T, D, N, H_out) and (T, D, N, H); with
      ``all_c=False`` ``cs`` is the last step's cell state, (D, N, H).
    """
    args = (x, w_ih, b, w_hh, w_hr, h0, c0, mask, recurrent_mask, hoist_input, unroll)
    if kernel:
        mixed = {a.dtype for a in (x, w_ih, w_hh, h0)} != {x.dtype} or c0.dtype != jnp.float32
        why = kernel_ineligible(
            x.dtype,
            projection=w_hr is not None,
            recurrent_dropout=recurrent_mask is not None,
            remat=remat,
            custom_vjp=custom_vjp,
            empty=0 in x.shape or 0 in h0.shape,
        )
        if why is None and mixed:
            why = "x, w_ih, w_hh and h0 of different dtypes, or c0 not float32"
        if why is not None:
            raise ValueError(f"kernel=True: the CPU kernel does not cover {why}")
    if custom_vjp:
        return _layer(*args, remat, all_c, kernel)
    scan = _forward_scan
    if remat:
        scan = jax.checkpoint(_forward_scan, static_argnums=(9, 10, 11, 12))
    return scan(*args, False, all_c)[:2]

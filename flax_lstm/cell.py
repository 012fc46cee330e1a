"""The pure LSTM step: gates, cell update and projection, with `torch.nn.LSTMCell` semantics.

Everything that runs a time step goes through `recurrent_step` (the scan body of
`flax_lstm.recurrence`) or `lstm_cell` (one step for users), which share `gate_update`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flax_lstm import _checks

Array = jax.Array
CellParams = dict[str, Array]

__all__ = ["LSTMState", "lstm_cell"]


class LSTMState(NamedTuple):
    """The recurrent state of an LSTM: ``h`` (hidden/output state) and ``c`` (cell state)."""

    h: Array
    c: Array


def accumulation_dtype(dtype: Any) -> jnp.dtype:
    """Dtype of gates and cell state for compute ``dtype``: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def batched_matmul(a: Array, b: Array, out_dtype: Any) -> Array:
    """``a @ b`` with a leading direction axis on ``b`` (…, K, M) shared by ``a`` (…, N, K): one
    batched dot over the directions (on CPU too: XLA:CPU's batched dot no longer trails the
    same 2-D dots, and a direction's slice of the weights inside a loop would be copied at
    every step; measured: docs/performance/design.md, "Both directions in one loop on CPU")."""
    return jnp.matmul(a, b, preferred_element_type=out_dtype)


def weight_matmul(a: Array, w: Array, out_dtype: Any, *, stored: bool) -> Array:
    """``a·Wᵀ`` for a weight W (…, M, K) and ``a`` (…, N, K), the leading axes shared.

    With ``stored``, ``w`` is W as stored, contracted on its last axis in one dot. Otherwise
    ``w`` is a transposed copy Wᵀ (…, K, M), made once ahead of a loop of many steps: XLA:CPU
    runs a loop's GEMM fastest in that layout, but for a single product it makes the copy
    itself, which costs more than the product (measured: docs/performance/design.md, "One step
    with the weights as stored").
    """
    if not stored:
        return batched_matmul(a, w, out_dtype)
    shared = tuple(range(w.ndim - 2))
    dims = (((a.ndim - 1,), (w.ndim - 1,)), (shared, shared))
    return lax.dot_general(a, w, dims, preferred_element_type=out_dtype)


def sigmoid(x: Array) -> Array:
    """``σ(x)`` as ``0.5·tanh(x/2) + 0.5``: the same function within float rounding.

    XLA:CPU's vectorised tanh runs this faster than ``jax.nn.sigmoid`` (measured:
    docs/performance/design.md, "The scan path on CPU"), and the LSTM evaluates it at every
    step.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def activate(z: Array) -> Array:
    """Gate activations of pre-activations ``z`` (…, 4H), order i, f, g, o: ``[σ, σ, tanh, σ]``."""
    q = z.shape[-1] // 4
    return jnp.concatenate(
        [sigmoid(z[..., : 2 * q]), jnp.tanh(z[..., 2 * q : 3 * q]), sigmoid(z[..., 3 * q :])],
        axis=-1,
    )


def gate_update(z: Array, c: Array) -> tuple[Array, Array, Array]:
    """Apply the gate non-linearities to pre-activations ``z`` (…, 4H) in order i, f, g, o.

    Returns ``(h_cell, c_new, acts)``: ``h_cell = σ(o)·tanh(c_new)`` before any projection,
    ``c_new = σ(f)·c + σ(i)·tanh(g)``, and ``acts = activate(z)``, which the backward pass
    reuses.
    """
    acts = activate(z)
    i, f, g, o = jnp.split(acts, 4, axis=-1)
    c_new = f * c + i * g
    return o * jnp.tanh(c_new), c_new, acts


def recurrent_step(
    w_hh: Array,
    w_hr: Array | None,
    gx_t: Array,
    state: LSTMState,
    recurrent_mask: Array | None = None,
    *,
    stored: bool = False,
) -> tuple[LSTMState, Array]:
    """One step given the precomputed input gates ``gx_t = x_t·W_ihᵀ + b_ih + b_hh``.

    The weights come transposed (``W_hhᵀ``, ``W_hrᵀ``) so that a loop's body holds no
    transpose: XLA:CPU does not hoist one out of a loop, and a transposed copy of ``W_hh`` at
    every step is a large share of the forward's time. A single step takes them as stored
    (``stored``: ``W_hh``, ``W_hr``; see `weight_matmul`).

    Shapes (any leading axes, e.g. a direction axis D, broadcast with the weights):
      w_hh (…, H_out, 4H), w_hr (…, H, H_out) or None (as stored: (…, 4H, H_out) and
      (…, H_out, H)), gx_t (…, N, 4H), state.h (…, N, H_out), state.c (…, N, H),
      recurrent_mask (…, N, H_out) or None.

    Returns the new state and the activated gates (…, N, 4H). ``h`` keeps its dtype and the
    gates and ``c`` are computed in ``gx_t``'s dtype (float32 for bfloat16 compute).
    """
    h = state.h if recurrent_mask is None else state.h * recurrent_mask
    z = gx_t + weight_matmul(h, w_hh, gx_t.dtype, stored=stored)
    h_cell, c_new, acts = gate_update(z, state.c)
    if w_hr is not None:
        h_cell = weight_matmul(h_cell.astype(w_hr.dtype), w_hr, gx_t.dtype, stored=stored)
    return LSTMState(h_cell.astype(state.h.dtype), c_new.astype(state.c.dtype)), acts


def lstm_cell(
    params: CellParams,
    x: Array,
    state: tuple[Array, Array] | None = None,
    *,
    dtype: Any = None,
) -> LSTMState:
    """One LSTM step with `torch.nn.LSTMCell` semantics (plus an optional projection).

    ``gates = x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh`` in order i, f, g, o;
    ``c' = σ(f)⊙c + σ(i)⊙tanh(g)``; ``h' = σ(o)⊙tanh(c')``, then ``h' = h'·W_hrᵀ`` when the
    params carry ``w_hr``.

    Args:
      params: one direction's parameters, ``{'w_ih': (4H, in), 'w_hh': (4H, H_out), 'b_ih':
        (4H,), 'b_hh': (4H,), 'w_hr': (H_out, H)}``; the biases and ``w_hr`` are optional.
        `init_cell_params` makes them and `cell_params` takes them out of `lstm` params.
      x: input, ``(N, in)`` or unbatched ``(in,)``.
      state: ``(h, c)`` with shapes ``(N, H_out)``, ``(N, H)`` (unbatched ``(H_out,)``,
        ``(H,)``); zeros when None.
      dtype: compute dtype; default the promoted dtype of ``x`` and the weights. ``c`` is kept
        in at least float32.

    Returns:
      `LSTMState` ``(h, c)`` with the shapes of the state.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax_lstm as fl
      >>> p = fl.init_cell_params(jax.random.key(0), input_size=3, hidden_size=5)
      >>> h, c = fl.lstm_cell(p, jnp.ones((2, 3)))
      >>> h.shape, c.shape
      ((2, 5), (2, 5))
    """
    _checks.check_cell_params(params)
    w_ih, w_hh = params["w_ih"], params["w_hh"]
    w_hr = params.get("w_hr")
    hidden, out_size, in_size = w_ih.shape[0] // 4, w_hh.shape[1], w_ih.shape[1]
    x = _checks.as_float_array("x", x)
    if x.ndim not in (1, 2) or x.shape[-1] != in_size:
        raise ValueError(f"x must have shape (N, {in_size}) or ({in_size},), got {x.shape}")
    batch_shape = x.shape[:-1]
    cd = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, w_ih)
    acc = accumulation_dtype(cd)
    if state is None:
        h = jnp.zeros((*batch_shape, out_size), cd)
        c = jnp.zeros((*batch_shape, hidden), acc)
    else:
        h, c = _checks.check_pair("state", state)
        _checks.check_shape("state[0] (h)", h, (*batch_shape, out_size))
        _checks.check_shape("state[1] (c)", c, (*batch_shape, hidden))
        h, c = h.astype(cd), c.astype(acc)
    # One step, the weights as stored (`weight_matmul`): also inside a caller's loop, which
    # XLA does not hoist a transposed copy out of.
    gx = weight_matmul(x.astype(cd), w_ih.astype(cd), acc, stored=True)
    if "b_ih" in params:
        gx = gx + (params["b_ih"] + params["b_hh"]).astype(acc)
    w_hr = None if w_hr is None else w_hr.astype(cd)
    state, _ = recurrent_step(w_hh.astype(cd), w_hr, gx, LSTMState(h, c), stored=True)
    return state

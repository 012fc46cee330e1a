"""Streaming: run a long sequence chunk by chunk, carrying ``(h, c)`` from one call to the next.

A unidirectional LSTM is a left-to-right recurrence, so feeding a sequence in chunks and passing
each call's ``(h_n, c_n)`` as the next call's ``hx`` gives the same outputs and final state as
one call over the whole sequence (up to float rounding). With ``seq_lengths``, give each chunk
the lengths that fall inside it (`chunk_lengths`): a sequence that has already ended gets length
0 in later chunks, and a length of 0 passes its state through unchanged, so the final state of
every sequence is still the state at its own last valid step.

A bidirectional LSTM's reverse direction reads the sequence from its end, which a chunk cannot
see: chunked calls are *not* equivalent to one call there.

Between chunks, `reset_state` puts chosen rows of the batch back to the initial state (zeros,
or a module's learnable initial state), e.g. when one stream in the batch starts a new sequence.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import flax_lstm as fl
  >>> from flax_lstm import streaming
  >>> config = fl.LSTMConfig(input_size=3, hidden_size=4)
  >>> params = fl.init_params(jax.random.key(0), config)
  >>> x = jax.random.normal(jax.random.key(1), (12, 2, 3))  # (L, N, input_size)
  >>> full, (h_full, c_full) = fl.lstm(params, x, config=config)
  >>> hx, outs = None, []
  >>> for start in range(0, 12, 5):  # chunks of 5, 5 and 2 steps
  ...     out, hx = fl.lstm(params, x[start : start + 5], hx, config=config)
  ...     outs.append(out)
  >>> bool(jnp.allclose(jnp.concatenate(outs), full, atol=1e-6))
  True
  >>> hx = streaming.reset_state(hx, jnp.array([True, False]))  # row 0 starts afresh
  >>> bool((hx.h[:, 0] == 0).all()), bool(jnp.allclose(hx.h[:, 1], h_full[:, 1], atol=1e-6))
  (True, True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import _checks, stack
from flax_lstm.cell import LSTMState
from flax_lstm.config import LSTMConfig

Array = jax.Array

__all__ = ["chunk_lengths", "reset_state", "zero_state"]


def zero_state(
    config: LSTMConfig, batch_size: int | None = None, *, dtype: Any = jnp.float32
) -> LSTMState:
    """The all-zero state that `flax_lstm.lstm` starts from when ``hx`` is None.

    Args:
      config: the `LSTMConfig`.
      batch_size: N; None for the state of an unbatched input.
      dtype: the compute dtype of the call (``lstm``'s ``dtype``): ``h`` is in it, ``c`` in its
        accumulation dtype (at least float32), as `flax_lstm.lstm` keeps them.

    Returns:
      `LSTMState` ``(h, c)`` of shapes ``(D·num_layers, N, H_out)`` and
      ``(D·num_layers, N, H)`` (no N axis when ``batch_size`` is None).

    Example:
      >>> import jax.numpy as jnp
      >>> import flax_lstm as fl
      >>> from flax_lstm import streaming
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=8, num_layers=2, proj_size=4)
      >>> h, c = streaming.zero_state(config, batch_size=5, dtype=jnp.bfloat16)
      >>> h.shape, h.dtype, c.shape, c.dtype
      ((2, 5, 4), dtype(bfloat16), (2, 5, 8), dtype('float32'))
    """
    if not isinstance(config, LSTMConfig):
        raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
    batch_shape = () if batch_size is None else (int(batch_size),)
    return stack.zero_state(config, batch_shape, dtype)


def reset_state(hx: Any, reset: Any, initial: Any = None) -> LSTMState:
    """Put the batch rows of ``hx`` where ``reset`` is True back to the initial state.

    Works under `jax.jit` (``reset`` may be traced); the other rows are returned unchanged.

    Args:
      hx: ``(h, c)`` as `flax_lstm.lstm` returns them as ``(h_n, c_n)``:
        ``(D·num_layers, N, H_out)`` and ``(D·num_layers, N, H)``, or unbatched
        ``(D·num_layers, H_out)`` and ``(D·num_layers, H)``.
      reset: ``(N,)`` booleans (a scalar for an unbatched state): True where a row restarts.
      initial: the state to restart from, ``(h_0, c_0)``, either with the shapes of ``hx`` or
        without the N axis (one state shared by every row, e.g. a learnable initial state).
        None (default) restarts from zeros.

    Returns:
      `LSTMState` ``(h, c)`` with the shapes and dtypes of ``hx``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_lstm import streaming
      >>> hx = (jnp.ones((1, 3, 2)), jnp.ones((1, 3, 2)))
      >>> h, c = streaming.reset_state(hx, jnp.array([False, True, False]))
      >>> h[0]
      Array([[1., 1.],
             [0., 0.],
             [1., 1.]], dtype=float32)
      >>> h, c = streaming.reset_state(hx, jnp.array([True, False, False]),
      ...                              initial=(jnp.full((1, 2), 7.0), jnp.zeros((1, 2))))
      >>> h[0, :, 0]
      Array([7., 1., 1.], dtype=float32)
    """
    h, c = map(jnp.asarray, _checks.check_pair("hx", hx))
    if h.ndim not in (2, 3) or c.ndim != h.ndim or h.shape[:-1] != c.shape[:-1]:
        raise ValueError(
            "hx must be (h, c) of shapes (D*num_layers, N, H_out) and (D*num_layers, N, H), or "
            f"unbatched without N; got {h.shape} and {c.shape}"
        )
    batched = h.ndim == 3
    reset = jnp.asarray(reset)
    expected = (h.shape[1],) if batched else ()
    if reset.shape != expected:
        raise ValueError(f"reset must have shape {expected} (one flag per row), got {reset.shape}")
    if reset.dtype != jnp.bool_:
        raise TypeError(f"reset must be boolean, got dtype {reset.dtype}")
    if initial is None:
        h0, c0 = jnp.zeros((), h.dtype), jnp.zeros((), c.dtype)
    else:
        h0, c0 = map(jnp.asarray, _checks.check_pair("initial", initial))
        for name, got, want in (("initial[0] (h_0)", h0, h), ("initial[1] (c_0)", c0, c)):
            shared = (want.shape[0], want.shape[-1])
            if got.shape not in (want.shape, shared):
                raise ValueError(
                    f"{name} must have shape {want.shape} or {shared} (shared by all rows), "
                    f"got {got.shape}"
                )
        if batched and h0.ndim == 2:
            h0 = h0[:, None]
        if batched and c0.ndim == 2:
            c0 = c0[:, None]
    mask = reset[:, None] if batched else reset
    return LSTMState(jnp.where(mask, h0.astype(h.dtype), h), jnp.where(mask, c0.astype(c.dtype), c))


def chunk_lengths(seq_lengths: Any, start: int, chunk_size: int) -> Array:
    """The part of each sequence's length that falls in the chunk ``[start, start + chunk_size)``.

    Pass it as ``seq_lengths`` of the call on that chunk: ``clip(seq_lengths - start, 0,
    chunk_size)``. A sequence that ended before the chunk gets 0, so its state is carried
    through unchanged and its outputs in the chunk are zero.

    Args:
      seq_lengths: ``(N,)`` integer lengths of the whole sequences (or a scalar).
      start: index of the chunk's first step in the whole sequence.
      chunk_size: number of steps in the chunk.

    Returns:
      int32 lengths with the shape of ``seq_lengths``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax_lstm import streaming
      >>> streaming.chunk_lengths(jnp.array([10, 4, 7]), start=5, chunk_size=5)
      Array([5, 0, 2], dtype=int32)
    """
    lengths = jnp.asarray(seq_lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must have an integer dtype, got {lengths.dtype}")
    if np.ndim(start) or np.ndim(chunk_size) or chunk_size <= 0 or start < 0:
        raise ValueError(
            f"start must be >= 0 and chunk_size > 0 (scalars), got {start} and {chunk_size}"
        )
    return jnp.clip(lengths - start, 0, chunk_size).astype(jnp.int32)

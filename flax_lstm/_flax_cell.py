"""Flax's RNN cell protocol for the NNX and Linen cells: the carry, and the call's two forms.

Flax's ``nnx.RNN``, ``nn.RNN``, ``Bidirectional`` and ``scan`` drive a cell through
``initialize_carry(...)`` and ``cell(carry, x) -> (carry, y)``, where the carry of Flax's own
LSTM cells is the tuple ``(c, h)``. The cells here also keep torch's call,
``cell(x, (h, c)) -> LSTMState(h, c)``. The type of the first argument decides which call it
is: a tuple (`LSTMCarry`, or a plain ``(c, h)`` tuple) is Flax's carry, anything else is
torch's input. A named state in the wrong call (an `LSTMState` as Flax's carry, an
`LSTMCarry` as torch's ``hx``) is a TypeError, since ``(h, c)`` and ``(c, h)`` have the same
shapes and a swap would go unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flax_lstm.cell import LSTMState, accumulation_dtype

Array = jax.Array
Step = Callable[[Array, "tuple[Array, Array]"], LSTMState]  # torch's call: (x, (h, c))

__all__ = ["LSTMCarry"]


class LSTMCarry(NamedTuple):
    """The carry of the cells under Flax's RNN protocol: ``(c, h)``, Flax's order.

    Flax's ``LSTMCell``/``OptimizedLSTMCell`` carry ``(c, h)``; torch's ``hx`` and
    `flax_lstm.LSTMState` are ``(h, c)``. A plain ``(c, h)`` tuple is accepted too, and a cell
    returns the carry type it was given.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import flax_lstm as fl
      >>> cell = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
      >>> carry = cell.initialize_carry((2, 3))
      >>> carry, y = cell(carry, jnp.ones((2, 3)))
      >>> type(carry).__name__, carry.c.shape, bool((y == carry.h).all())
      ('LSTMCarry', (2, 5), True)
    """

    c: Array
    h: Array


def carry_dtypes(dtype: Any, param_dtype: Any) -> tuple[jnp.dtype, jnp.dtype]:
    """``(h, c)`` dtypes of a fresh carry: the compute dtype (else ``param_dtype``) for ``h``,
    at least float32 for ``c``, as `flax_lstm.lstm_cell` returns them."""
    h_dtype = jnp.dtype(param_dtype if dtype is None else dtype)
    return h_dtype, accumulation_dtype(h_dtype)


def zero_carry(
    input_shape: Sequence[int], hidden_size: int, dtype: Any, param_dtype: Any
) -> LSTMCarry:
    """A zero `LSTMCarry` for inputs of ``input_shape`` (batch axes, then features)."""
    if len(input_shape) < 1:
        raise ValueError(f"input_shape must end with the feature axis, got {tuple(input_shape)}")
    shape = (*(int(n) for n in input_shape[:-1]), hidden_size)
    h_dtype, c_dtype = carry_dtypes(dtype, param_dtype)
    return LSTMCarry(jnp.zeros(shape, c_dtype), jnp.zeros(shape, h_dtype))


def is_flax_call(first: Any, second: Any) -> bool:
    """True for Flax's ``cell(carry, x)``, False for torch's ``cell(x, hx)``; else TypeError."""
    if isinstance(first, tuple):
        if isinstance(first, LSTMState):
            raise TypeError(
                "cell(carry, x) got an LSTMState (h, c) as the carry; Flax's carry is (c, h): "
                "pass an LSTMCarry(c, h) (see initialize_carry), or call cell(x, (h, c))"
            )
        if len(first) != 2:
            raise TypeError(f"the carry must be a pair (c, h), got {len(first)} elements")
        if second is None or isinstance(second, tuple):
            raise TypeError(
                "cell(carry, x) needs x, an array of inputs, as its second argument; "
                f"got {type(second).__name__}"
            )
        return True
    if isinstance(second, LSTMCarry):
        raise TypeError(
            "cell(x, hx) takes torch's hx = (h, c), got an LSTMCarry (c, h): "
            "call cell(carry, x) for Flax's protocol"
        )
    return False


def flax_step(step: Step, carry: tuple[Any, Any], x: Any) -> tuple[Any, Array]:
    """Flax's ``(carry, x) -> (carry, y)`` over torch's ``step(x, (h, c))``.

    ``x`` may have any number of batch axes (Flax's convention), flattened for the step. The
    new carry has the type and the dtypes of ``carry`` (a scan needs both unchanged); ``y`` is
    the new ``h``.
    """
    c, h = (jnp.asarray(a) for a in carry)
    x = jnp.asarray(x)
    batch = x.shape[:-1]
    if x.ndim > 2:  # (*batch, in) -> (N, in) for the step, and back
        x = x.reshape(-1, x.shape[-1])
        h, c = h.reshape(-1, h.shape[-1]), c.reshape(-1, c.shape[-1])
    new = step(x, (h, c))
    h_new = new.h.reshape(*batch, -1).astype(h.dtype)
    c_new = new.c.reshape(*batch, -1).astype(c.dtype)
    out = LSTMCarry(c_new, h_new) if isinstance(carry, LSTMCarry) else (c_new, h_new)
    return out, h_new

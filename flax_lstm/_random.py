"""`jax.random` draws taken over the flattened shape: the same numbers, compiled much faster.

With jax's default PRNG (threefry), an n-d draw numbers its elements in row-major order, so a
draw over ``prod(shape)`` elements reshaped to ``shape`` gives the same values bit for bit
(tested). XLA's CPU compiler takes far longer over some n-d shapes than over the same number
of elements in one axis (measured: docs/performance/design.md, "Compile time of random draws").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["bernoulli", "dropout", "normal", "uniform"]


def uniform(
    key: jax.Array,
    shape: Sequence[int],
    dtype: Any = jnp.float32,
    minval: Any = 0.0,
    maxval: Any = 1.0,
) -> jax.Array:
    """`jax.random.uniform` of ``shape``, drawn flat."""
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval)
    return flat.reshape(shape)


def normal(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """`jax.random.normal` of ``shape``, drawn flat."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def bernoulli(key: jax.Array, p: Any, shape: Sequence[int]) -> jax.Array:
    """`jax.random.bernoulli` of ``shape`` (``p`` a scalar), drawn flat."""
    return jax.random.bernoulli(key, p, (math.prod(shape),)).reshape(shape)


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: zero with probability ``rate``, scale the rest by ``1 / (1 - rate)``."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)

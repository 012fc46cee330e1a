"""`flax_lstm._random`: flat draws equal `jax.random`'s n-d draws bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lstm import _random

SHAPES = [(), (0, 5), (7,), (128, 12), (32, 29, 12), (3, 1, 5, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 17])
def test_flat_draws_are_jax_randoms_draws(shape, seed):
    key = jax.random.key(seed)
    pairs = [
        (_random.normal(key, shape), jax.random.normal(key, shape)),
        (
            _random.uniform(key, shape, jnp.bfloat16, -0.5, 0.5),
            jax.random.uniform(key, shape, jnp.bfloat16, -0.5, 0.5),
        ),
        (_random.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape)),
    ]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_flat_draws_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(3), 4)
    ours = jax.jit(jax.vmap(lambda k: _random.normal(k, (29, 12))))(keys)
    theirs = jax.vmap(lambda k: jax.random.normal(k, (29, 12)))(keys)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))

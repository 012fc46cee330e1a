"""Dropout between layers: torch's placement, explicit keys, inverted scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_lstm as fl
from flax_lstm._random import dropout as _dropout

X = jax.random.normal(jax.random.key(1), (6, 3, 4))


def _setup(num_layers=2, dropout=0.5, **kw):
    cfg = fl.LSTMConfig(4, 8, num_layers=num_layers, dropout=dropout, **kw)
    return cfg, fl.init_params(jax.random.key(0), cfg)


def test_no_dropout_without_a_key():
    cfg, params = _setup()
    nodrop_cfg = fl.LSTMConfig(4, 8, num_layers=2)
    a = fl.lstm(params, X, config=cfg)
    b = fl.lstm(params, X, config=nodrop_cfg)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_no_dropout_with_one_layer():
    with pytest.warns(UserWarning):
        cfg, params = _setup(num_layers=1)
    a = fl.lstm(params, X, config=cfg, dropout_key=jax.random.key(5))
    b = fl.lstm(params, X, config=cfg)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_same_key_same_mask_other_key_other_mask():
    cfg, params = _setup(bidirectional=True)
    a = fl.lstm(params, X, config=cfg, dropout_key=jax.random.key(5))[0]
    b = fl.lstm(params, X, config=cfg, dropout_key=jax.random.key(5))[0]
    c = fl.lstm(params, X, config=cfg, dropout_key=jax.random.key(6))[0]
    d = fl.lstm(params, X, config=cfg)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, d)


def test_never_on_last_layer_output_or_final_states():
    """dropout=1 zeroes the input of layer 2 but leaves layer 1's states and layer 2's output."""
    cfg, params = _setup(num_layers=2, dropout=1.0)
    out, (h, c) = fl.lstm(params, X, config=cfg, dropout_key=jax.random.key(5))
    _, (ref_h, ref_c) = fl.lstm(params, X, config=fl.LSTMConfig(4, 8, num_layers=2))
    np.testing.assert_array_equal(h[0], ref_h[0])
    np.testing.assert_array_equal(c[0], ref_c[0])
    # Layer 2 saw zeros: the same as running it alone on zeros; its output is not dropped.
    layer2_out, (h2, _) = fl.lstm(params[1:], jnp.zeros((6, 3, 8)), config=fl.LSTMConfig(8, 8))
    np.testing.assert_allclose(out, layer2_out, atol=1e-6)
    np.testing.assert_allclose(h[1], h2[0], atol=1e-6)
    assert (out != 0).all()


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_inverted_dropout_preserves_the_mean(rate):
    x = jnp.ones((200_000,))
    y = _dropout(jax.random.key(0), x, rate)
    kept = y != 0
    assert abs(1 - kept.mean() - rate) < 0.01
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - 1) < 0.02


def test_dropout_is_differentiable_and_masks_gradients():
    cfg, params = _setup(dropout=0.5)
    g = jax.grad(lambda p: fl.lstm(p, X, config=cfg, dropout_key=jax.random.key(3))[0].sum())(
        params
    )
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(g))


def test_recurrent_dropout_one_mask_per_sequence():
    """Variational dropout: a fixed mask on h; rate 0 or no key leaves the result unchanged."""
    cfg, params = _setup(dropout=0.0)
    key = jax.random.key(9)
    base = fl.lstm(params, X, config=cfg)[0]
    np.testing.assert_array_equal(fl.lstm(params, X, config=cfg, recurrent_dropout=0.5)[0], base)
    a = fl.lstm(params, X, config=cfg, dropout_key=key, recurrent_dropout=0.5)[0]
    b = fl.lstm(params, X, config=cfg, dropout_key=key, recurrent_dropout=0.5)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, base)
    # The first step has h_0 = 0, so masking h cannot change it.
    np.testing.assert_allclose(a[0], base[0], atol=1e-6)

"""Per-step states (`return_all_states`): layout, agreement with output and h_n/c_n."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_lstm as fl


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_states_agree_with_output_and_final_state(batch_first, proj_size):
    cfg = fl.LSTMConfig(
        3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, proj_size=proj_size
    )
    params = fl.init_params(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (3, 6, 3) if batch_first else (6, 3, 3))
    lengths = jnp.array([6, 2, 4])
    out, (h_n, c_n), states = fl.lstm(
        params, x, config=cfg, seq_lengths=lengths, return_all_states=True
    )
    plain = fl.lstm(params, x, config=cfg, seq_lengths=lengths)
    np.testing.assert_array_equal(out, plain[0])  # the option changes nothing else
    h, c = states
    if not batch_first:  # compare in (N, L, D·layers, ·) layout
        h, c, out = jnp.moveaxis(h, 2, 0), jnp.moveaxis(c, 2, 0), jnp.swapaxes(out, 0, 1)
    p = cfg.output_size
    assert h.shape == (3, 6, 4, p) and c.shape == (3, 6, 4, 4)
    # Last layer's states are the output, forward then reverse.
    np.testing.assert_allclose(h[:, :, 2], out[..., :p], atol=1e-6)
    np.testing.assert_allclose(h[:, :, 3], out[..., p:], atol=1e-6)
    for n, length in enumerate(lengths):
        # Forward rows end at the last valid step, reverse rows at step 0.
        np.testing.assert_allclose(h[n, length - 1, 0::2], h_n[0::2, n], atol=1e-6)
        np.testing.assert_allclose(c[n, length - 1, 0::2], c_n[0::2, n], atol=1e-6)
        np.testing.assert_allclose(h[n, 0, 1::2], h_n[1::2, n], atol=1e-6)
        np.testing.assert_allclose(c[n, 0, 1::2], c_n[1::2, n], atol=1e-6)
        assert (h[n, length:] == 0).all() and (c[n, length:] == 0).all()


def test_states_unbatched():
    cfg = fl.LSTMConfig(3, 4, num_layers=3)
    params = fl.init_params(jax.random.key(0), cfg)
    out, (h_n, c_n), (h, c) = fl.lstm(params, jnp.ones((5, 3)), config=cfg, return_all_states=True)
    assert h.shape == (5, 3, 4) and c.shape == (5, 3, 4)
    np.testing.assert_allclose(h[-1], h_n, atol=1e-6)
    np.testing.assert_allclose(c[-1], c_n, atol=1e-6)
    np.testing.assert_allclose(h[:, -1], out, atol=1e-6)

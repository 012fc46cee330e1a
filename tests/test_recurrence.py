"""`flax_lstm.recurrence.run_layer`: one layer over time as its plan says, the compiled kernel
or the scan, with the same values and gradients."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from kernel_checks import needs_kernel

from flax_lstm.plan import Plan
from flax_lstm.recurrence import LayerWeights, run_layer


@needs_kernel
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("batch", [3, 10])
def test_mask_that_is_no_prefix(batch, threads, monkeypatch):
    """run_layer takes any (T, N) mask: one with valid steps after masked ones keeps every row
    running in the kernel and masks step by step, as the scan does."""
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", threads)
    jax.clear_caches()
    t, d, i, h = 9, 2, 6, 20
    ks = jax.random.split(jax.random.key(batch), 6)
    x = jax.random.normal(ks[0], (t, d, batch, i))
    w_ih = jax.random.normal(ks[1], (d, 4 * h, i)) * 0.3
    w_hh = jax.random.normal(ks[2], (d, 4 * h, h)) * 0.3
    b = jax.random.normal(ks[3], (d, 4 * h)) * 0.1
    h0 = jax.random.normal(ks[4], (d, batch, h))
    c0 = jax.random.normal(ks[5], (d, batch, h))
    mask = jax.random.bernoulli(jax.random.key(7), 0.6, (t, batch))

    def run(kernel):
        plan = Plan(
            platform="cpu",
            recurrence="kernel" if kernel else "scan",
            backward="custom",
            unroll=1,
            hoist_input=False,
            fuse_directions=True,
        )

        def loss(x, w_ih, b, w_hh, h0, c0):
            weights = LayerWeights(w_ih, b, w_hh, None)
            hs, cs = run_layer(x, weights, h0, c0, mask, None, plan=plan)
            return (hs**2).sum() + cs.sum(), (hs, cs)

        return jax.jit(jax.value_and_grad(loss, argnums=range(6), has_aux=True))(
            x, w_ih, b, w_hh, h0, c0
        )

    for a, b_ in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False)), strict=True):
        np.testing.assert_allclose(a, b_, atol=2e-5, rtol=2e-5)

"""Internal fast paths of `flax_lstm._scan` that the platform chooses: both forms, any host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lstm import _scan, kernel
from flax_lstm.plan import Plan


@pytest.mark.parametrize("transposed_copy", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sum_outer_both_forms_match_einsum(transposed_copy, dtype):
    # (T, D, N, I) against two (T, D, N, J_b): the weight-gradient GEMMs of the backward pass.
    k = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(k[0], (5, 2, 3, 8))
    bs = [jax.random.normal(k[1], (5, 2, 3, 4)), jax.random.normal(k[2], (5, 2, 3, 6))]
    plan = Plan(
        platform="cpu" if transposed_copy else "gpu",
        recurrence="scan",
        backward="custom",
        unroll=1,
        hoist_input=False,
        fuse_directions=False,
        kernel_transpose=transposed_copy and kernel.available(),
    )
    got = _scan.sum_outer(a.astype(dtype), [b.astype(dtype) for b in bs], dtype, jnp.float32, plan)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    exact = lambda v: v.astype(dtype).astype(jnp.float32)  # noqa: E731
    for g, b in zip(got, bs, strict=True):
        want = jnp.einsum("tdni,tdnj->dij", exact(a), exact(b))
        assert g.dtype == dtype and g.shape == want.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), want, rtol=tol, atol=tol)

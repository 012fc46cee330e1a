"""`flax_lstm._scan`: the fast paths of the scan's backward that the platform chooses, both
forms on any host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lstm import _scan, kernel
from flax_lstm._kernel import ffi
from flax_lstm.plan import Plan


def _plan(platform: str) -> Plan:
    return Plan(
        platform=platform,
        recurrence="scan",
        backward="custom",
        unroll=1,
        hoist_input=False,
        fuse_directions=False,
    )


@pytest.mark.parametrize("form", ["gpu", "cpu", "cpu+kernel copy"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("widths", [(4, 6), (20,)], ids=["two", "one"])
def test_sum_outer_every_form_matches_einsum(form, dtype, widths):
    """(T, D, N, I) against (T, D, N, J_b): the weight-gradient GEMMs of the backward pass,
    one GEMM each (GPU) or one plain GEMM over a transposed copy (CPU: XLA's, or the kernel
    library's). A single bfloat16 ``b`` is the projection's gradient, whose product XLA:CPU
    could not run once the output transpose was folded into the dot."""
    if form == "cpu+kernel copy" and not kernel.available():
        pytest.skip("the kernel library is not built")
    transpose = ffi.transposed_copy if form == "cpu+kernel copy" else None
    k = jax.random.split(jax.random.key(0), 1 + len(widths))
    a = jax.random.normal(k[0], (64, 2, 8, 40))
    bs = [jax.random.normal(kb, (64, 2, 8, j)) for kb, j in zip(k[1:], widths, strict=True)]

    @jax.jit
    def run(a, bs):
        plan = _plan("gpu" if form == "gpu" else "cpu")
        return _scan.sum_outer(a, bs, dtype, jnp.float32, plan, transpose)

    got = run(a.astype(dtype), [b.astype(dtype) for b in bs])
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    exact = lambda v: v.astype(dtype).astype(jnp.float32)  # noqa: E731
    for g, b in zip(got, bs, strict=True):
        want = jnp.einsum("tdni,tdnj->dij", exact(a), exact(b))
        assert g.dtype == dtype and g.shape == want.shape
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), want, rtol=tol, atol=tol * scale)

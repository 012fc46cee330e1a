"""The default's size rule, `flax_lstm._auto.call_size`: a larger call never takes a path meant
for a smaller one, and a symbolic size (`jax.export`) counts as large. What the default does
with each size class, and with what was measured: tests/test_plan.py."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
from hypothesis import given, settings

from flax_lstm import _auto

# step and short: a measurement decides (the forward alone, or the call); large: the kernel
# unless measured slower.
RANK = {"step": 1, "short": 1, "large": 2}
HIDDEN = st.sampled_from([1, 16, 64, 127, 128, 129, 256, 2048])


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(st.integers(1, 40), st.integers(1, 300), HIDDEN),
    st.tuples(st.integers(0, 40), st.integers(0, 300), st.integers(0, 2048)),
)
def test_a_larger_call_never_takes_a_smaller_calls_class(call, more):
    """More steps, sequences or hidden units: the same class or a larger one."""
    larger = tuple(a + b for a, b in zip(call, more, strict=True))
    assert RANK[_auto.call_size(*call)] <= RANK[_auto.call_size(*larger)]


def test_the_thresholds_are_where_the_classes_change():
    steps, units = _auto.KERNEL_MIN_STEPS, _auto.KERNEL_MIN_STEP_UNITS
    work = _auto.KERNEL_MIN_WORK_UNITS
    wide = 128
    assert _auto.call_size(1, 1, wide) == "step" and _auto.call_size(1, 1, 1) == "step"
    assert _auto.call_size(1, 10**6, 4096) == "step"  # one step is never "large"
    assert _auto.call_size(steps, 1, wide) == "short"
    assert _auto.call_size(steps, 1, units // steps) == "large"
    assert _auto.call_size(steps, work // (steps * wide), wide) == "large"
    assert _auto.call_size(steps, work // (steps * wide) - 1, wide) == "short"
    assert _auto.call_size(steps, 1, 1) == "short"  # fewer units: short too, from 2 steps


def test_a_symbolic_length_or_batch_counts_as_large():
    t, b = jax.export.symbolic_shape("t, b")
    assert _auto.call_size(t, 1, 16) == "large"
    assert _auto.call_size(_auto.KERNEL_MIN_STEPS, b, 16) == "large"

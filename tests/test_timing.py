"""The one timing loop of the benchmark, the calibration and the tools: every call in every
mode once a repetition, each repetition in an order rotated by one; the jitted calls it times."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from flax_lstm import _timing


def test_each_call_takes_each_place_in_turn():
    orders = [_timing.rotated(["a", "b", "c"], rep) for rep in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert orders[3:] == orders[:3]
    assert _timing.rotated(["a"], 5) == ["a"] and _timing.rotated([], 2) == []


def test_time_interleaved_runs_every_call_once_a_repetition_in_rotated_order():
    seen: list[tuple[str, str]] = []
    calls = {
        key: {mode: (lambda k=key, m=mode: seen.append((k, m))) for mode in _timing.MODES}
        for key in ("kernel", "scan")
    }
    times = _timing.time_interleaved(calls, _timing.MODES, reps=3)
    assert set(times) == {"kernel", "scan"}
    per_call = [ms for by_mode in times.values() for ms in by_mode.values()]
    assert len(per_call) == 4 and all(len(ms) == 3 and min(ms) >= 0 for ms in per_call)
    # Within a repetition each mode runs every call; two calls alternate which goes first.
    assert seen == [
        ("kernel", "fwd"), ("scan", "fwd"), ("kernel", "fwd_bwd"), ("scan", "fwd_bwd"),
        ("scan", "fwd"), ("kernel", "fwd"), ("scan", "fwd_bwd"), ("kernel", "fwd_bwd"),
        ("kernel", "fwd"), ("scan", "fwd"), ("kernel", "fwd_bwd"), ("scan", "fwd_bwd"),
    ]  # fmt: skip


def test_jitted_calls_give_the_output_and_the_gradients_of_its_sum():
    w, x = jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, 4.0])
    calls = _timing.jitted_calls(lambda w, x, s: s * w * x, w, x, 2.0)
    np.testing.assert_allclose(calls["fwd"](), [6.0, 16.0])
    grad_w, grad_x = calls["fwd_bwd"]()
    np.testing.assert_allclose(grad_w, [6.0, 8.0])
    np.testing.assert_allclose(grad_x, [2.0, 4.0])

"""The one timing loop of the benchmark, the calibration and the tools: every call in every
mode once a repetition, each repetition in an order of a balanced cycle; the jitted calls it
times."""

from __future__ import annotations

import collections
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from flax_lstm import _timing


@pytest.mark.parametrize("n", range(1, 9))
def test_each_call_follows_every_other_equally_often(n):
    calls = [f"call{i}" for i in range(n)]
    cycle = len(_timing._balanced_orders(n))
    orders = [_timing.interleaved_order(calls, rep) for rep in range(2 * cycle)]
    assert orders[cycle:] == orders[:cycle]  # the cycle repeats
    assert all(sorted(order) == sorted(calls) for order in orders)
    follows = collections.Counter(p for order in orders[:cycle] for p in itertools.pairwise(order))
    assert len(follows) == n * (n - 1) and len(set(follows.values())) <= 1
    # ... and takes each place equally often
    places = collections.Counter((i, c) for order in orders[:cycle] for i, c in enumerate(order))
    assert len(places) == n * n and len(set(places.values())) == 1


def test_a_rotation_would_not_do():
    # The order this replaced: rotated by one a repetition, c came before a in every one.
    rotations = [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert all(order.index("a") == 0 or order[order.index("a") - 1] == "c" for order in rotations)
    orders = [_timing.interleaved_order(["a", "b", "c"], rep) for rep in range(6)]
    assert {o[o.index("a") - 1] for o in orders if o.index("a") > 0} == {"b", "c"}


def test_two_calls_alternate_and_fewer_are_trivial():
    assert [_timing.interleaved_order(["a", "b"], rep) for rep in range(3)] == [
        ["a", "b"], ["b", "a"], ["a", "b"],
    ]  # fmt: skip
    assert _timing.interleaved_order(["a"], 5) == ["a"] and _timing.interleaved_order([], 2) == []


def test_time_interleaved_runs_every_call_once_a_repetition_in_balanced_order():
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


def test_warm_up_runs_every_call_the_given_times():
    seen: list[str] = []
    calls = {"a": {m: (lambda m=m: seen.append(m)) for m in _timing.MODES}}
    _timing.warm_up(calls, 3)
    assert seen == ["fwd"] * 3 + ["fwd_bwd"] * 3


def test_summary_is_each_calls_median_and_fastest_per_mode():
    times = {
        "kernel": {"fwd": [3.0, 1.0, 2.0, 9.0], "fwd_bwd": [5.0]},
        "scan": {"fwd": [4.0, 6.0, 5.0], "fwd_bwd": [7.0, 8.0]},
    }
    assert _timing.summary(times, _timing.MODES) == {
        "fwd": {"kernel_ms": 2.5, "scan_ms": 5.0, "kernel_min_ms": 1.0, "scan_min_ms": 4.0},
        "fwd_bwd": {"kernel_ms": 5.0, "scan_ms": 7.5, "kernel_min_ms": 5.0, "scan_min_ms": 7.0},
    }

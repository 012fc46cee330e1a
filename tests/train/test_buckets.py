"""Length buckets: the batch plan of an epoch, its padded lengths, and runs that use them."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from train_helpers import leaves_equal, small_config

from flax_lstm.train import pipeline as P
from flax_lstm.train import train


def test_bucket_steps_are_length_quantiles_in_whole_patches():
    lengths = np.arange(1, 101)
    assert P.bucket_steps(lengths, 1, 1, 100) == [100]
    assert P.bucket_steps(lengths, 4, 1, 120) == [26, 51, 76, 120]
    assert P.bucket_steps(lengths, 4, 10, 120) == [30, 60, 80, 120]
    # Equal lengths merge into one bucket; a quantile never exceeds the padded length.
    assert P.bucket_steps(np.full(9, 7), 5, 1, 7) == [7]
    assert P.bucket_steps(np.full(9, 7), 5, 4, 7) == [7]


def test_one_bucket_is_the_plain_shuffled_order():
    lengths = np.random.default_rng(0).integers(1, 30, 50)
    plan = P.epoch_batches(3, 2, lengths, 8, [30])
    order = P.epoch_order(3, 2, 50)
    assert [len(idx) for idx, _ in plan] == [8] * 6 + [2]
    np.testing.assert_array_equal(np.concatenate([idx for idx, _ in plan]), order)
    assert {steps for _, steps in plan} == {30}


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 40),
    buckets=st.integers(1, 6),
    patch=st.integers(1, 4),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
)
def test_every_series_once_in_the_shortest_bucket_that_holds_it(
    n, batch_size, buckets, patch, seed, epoch
):
    lengths = np.random.default_rng([n, seed]).integers(1, 60, n)
    steps = P.bucket_steps(lengths, buckets, patch, 64)
    plan = P.epoch_batches(seed, epoch, lengths, batch_size, steps)
    seen = np.concatenate([idx for idx, _ in plan])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    assert len(plan) == -(-n // batch_size)
    for idx, padded_to in plan:
        assert 0 < idx.size <= batch_size
        assert padded_to in steps and lengths[idx].max() <= padded_to
        shorter = [s for s in steps if s < padded_to]
        assert not shorter or lengths[idx].max() > shorter[-1]
    again = P.epoch_batches(seed, epoch, lengths, batch_size, steps)
    assert all(np.array_equal(a, b) and s == t for (a, s), (b, t) in zip(plan, again, strict=True))


def test_buckets_cut_the_padding_of_ragged_batches():
    lengths = np.random.default_rng(1).integers(16, 513, 256)  # issue 17's spread
    steps = P.bucket_steps(lengths, 4, 1, 512)
    for epoch in range(3):
        plain = P.epoch_batches(0, epoch, lengths, 32, [512])
        bucketed = P.epoch_batches(0, epoch, lengths, 32, steps)
        padded_steps = sum(len(idx) * s for idx, s in bucketed)
        assert padded_steps < 0.75 * sum(len(idx) * s for idx, s in plain)
        # The batches still mix: no two epochs pair the same series.
        other = P.epoch_batches(0, epoch + 1, lengths, 32, steps)
        assert {tuple(sorted(i)) for i, _ in bucketed} != {tuple(sorted(i)) for i, _ in other}


def test_padded_cuts_the_time_axis():
    data = P.RunData(np.arange(24.0).reshape(3, 4, 2), np.array([1, 2, 4]), np.array([0, 1, 0]))
    x, _, _, w = P.padded(data, np.array([0, 1]), 4, steps=2)
    assert x.shape == (4, 2, 2) and (w == [1, 1, 0, 0]).all()
    np.testing.assert_array_equal(x[:2], data.x[:2, :2])


def test_a_bucketed_run_records_its_lengths_and_resumes_exactly(files, tmp_path):
    cfg = small_config(files, length_buckets=3)
    full = train(cfg, out=tmp_path / "full", quiet=True)
    derived, steps = full.metrics["data"]["derived"], full.metrics["data"]["bucket_steps"]
    assert derived["length_buckets"] == 3
    assert len(steps) == 3 and steps == sorted(steps) and steps[-1] == 12
    part = train(cfg, out=tmp_path / "part", quiet=True, stop_after_epochs=2)
    assert not part.finished
    done = train(None, out=tmp_path / "part", resume=True, quiet=True)
    assert leaves_equal(done.state, full.state)
    assert done.metrics["test_accuracy"] == full.metrics["test_accuracy"]


def test_bad_length_buckets_is_refused(files, tmp_path):
    from flax_lstm.train import TrainError

    with pytest.raises(TrainError, match="length_buckets must be a positive integer, got 0"):
        train(small_config(files, length_buckets=0), out=tmp_path / "run")

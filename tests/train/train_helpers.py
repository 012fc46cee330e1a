"""Data and configurations shared by the tests of `flax_lstm.train` (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from flax_lstm.data import SequenceDataset
from flax_lstm.train import TrainConfig

LABELS = ("low", "mid", "high")


def make_dataset(n: int, seed: int, labels=LABELS, channels: int = 2) -> SequenceDataset:
    """An easy variable-length task: the class sets the level and frequency of channel 0."""
    rng = np.random.default_rng(seed)
    series, ys = [], []
    for i in range(n):
        c = i % len(labels)
        length = int(rng.integers(4, 13))
        t = np.arange(length)
        level = np.sin((c + 1) * 0.8 * t + rng.uniform(0, 6.3)) + 2.0 * c
        x = rng.normal(size=(length, channels)) * 0.3
        x[:, 0] += level
        series.append(x)
        ys.append(labels[c])
    return SequenceDataset.from_series(series, ys)


def save_npz(path: Path, ds: SequenceDataset) -> Path:
    np.savez(path, x=ds.x, y=ds.y, lengths=ds.lengths)
    return path


def small_config(files, **kw) -> TrainConfig:
    base = dict(
        train=files["train"],
        test=files["test"],
        epochs=4,
        hidden_size=8,
        batch_size=8,
        val_fraction=0.2,
        lr=2e-2,
        seed=3,
        members=2,
    )
    return TrainConfig(**{**base, **kw})


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    return sa == sb and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)
    )

"""The input pipeline: bad data is refused before any file, the split, normalisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from train_helpers import make_dataset, save_npz, small_config

from flax_lstm.data import DataError
from flax_lstm.train import TrainConfig, TrainError, train


def test_bad_data_writes_nothing(files, tmp_path):
    other = tmp_path / "other.npz"
    save_npz(other, make_dataset(9, 2, labels=("low", "mid", "extreme")))
    out = tmp_path / "run"
    with pytest.raises(TrainError, match="labels that training never saw: 'extreme'"):
        train(small_config(files, test=str(other)), out=out)
    save_npz(other, make_dataset(9, 2, channels=3))
    with pytest.raises(TrainError, match="has 3 channels but the training data has 2"):
        train(small_config(files, test=str(other)), out=out)
    with pytest.raises(DataError, match="no such file"):
        train(small_config(files, test=str(tmp_path / "missing.ts")), out=out)
    with pytest.raises(TrainError, match="give both --train and --test"):
        train(TrainConfig(train=files["train"]), out=out)
    with pytest.raises(TrainError, match="batch_size must be a positive integer"):
        train(small_config(files, batch_size=0), out=out)
    assert not out.exists()


def test_normalisation_uses_training_statistics_only(files, tmp_path):
    from flax_lstm.data import read_ts
    from flax_lstm.train import pipeline as T

    shifted = make_dataset(30, 1)
    shifted = dataclasses.replace(shifted, x=shifted.x * 100 + 1000)
    cfg = small_config(files, test=str(save_npz(tmp_path / "shifted.npz", shifted)))
    info, fit, _, _ = T.prepare(cfg)
    cfg2 = small_config(files)
    info2, *_ = T.prepare(cfg2)
    assert info["mean"] == info2["mean"] and info["std"] == info2["std"]
    train_ds = read_ts(files["train"])
    y = np.array([info["classes"].index(v) for v in train_ds.y.tolist()])
    fit_idx, _ = T.split(y, cfg.val_fraction, cfg.seed)
    values = np.concatenate([train_ds.x[i, : train_ds.lengths[i]] for i in fit_idx])
    np.testing.assert_allclose(info["mean"], values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(info["std"], values.std(0), rtol=1e-6)
    # Normalised fit data: zero mean and unit variance over valid steps; zero padding.
    valid = np.arange(fit.x.shape[1])[None, :] < fit.lengths[:, None]
    np.testing.assert_allclose(fit.x[valid].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(fit.x[valid].std(0), 1, atol=1e-5)
    assert (fit.x[~valid] == 0).all()


def test_split_is_stratified_and_seeded():
    from flax_lstm.train import pipeline as T

    y = np.repeat(np.arange(4), [10, 10, 3, 1])
    fit, val = T.split(y, 0.2, seed=5)
    assert np.intersect1d(fit, val).size == 0 and fit.size + val.size == y.size
    assert np.bincount(y[val], minlength=4).tolist() == [2, 2, 1, 0]
    assert set(y[fit]) == {0, 1, 2, 3}  # every class keeps a training example
    again = T.split(y, 0.2, seed=5)
    assert np.array_equal(again[1], val) and not np.array_equal(T.split(y, 0.2, 6)[1], val)

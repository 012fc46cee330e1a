"""Settings derived from the data's shape: the rules, patching, and the run folder's record."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import small_config

from flax_lstm.train import derive as D
from flax_lstm.train import evaluate, train
from flax_lstm.train.model import patch_steps


@pytest.mark.parametrize(
    ("max_length", "patch"),
    [(1, 1), (D.MAX_UNPATCHED, 1), (D.MAX_UNPATCHED + 1, 3), (251, 13), (2000, 100)],
)
def test_patch_rule_keeps_the_recurrence_short(max_length, patch):
    assert D.patch_for(max_length) == patch
    assert -(-max_length // patch) <= max(D.TARGET_STEPS, D.MAX_UNPATCHED)


def test_given_settings_win_over_the_rules(files):
    unset = dict(batch_size=None, epochs=None, val_fraction=None, patch=None)
    lengths = np.arange(10, 501, 10)
    shape = dict(n_train=60, n_fit=60, max_length=500, fit_lengths=lengths)
    assert D.derive(small_config(files, **unset), **shape) == {
        "val_fraction": 0.0,  # 6 validation series would be too few
        "batch_size": 10,
        "epochs": D.SERIES_BUDGET // 60,
        "patch": D.patch_for(500),
        "length_buckets": 1,  # patched to 20 steps: too short to pay for buckets
    }
    given = dict(batch_size=7, epochs=3, val_fraction=0.5, patch=3, length_buckets=2)
    assert D.derive(small_config(files, **given), **{**shape, "n_fit": 30}) == {
        "val_fraction": 0.5,
        "batch_size": 7,
        "epochs": 3,
        "patch": 3,
        "length_buckets": 2,
    }
    # A patch given by the user can leave a long recurrence: ragged ones get buckets.
    patched = small_config(files, **{**unset, "patch": 3})
    assert D.derive(patched, **shape)["length_buckets"] == D.LENGTH_BUCKETS


def test_the_rules():
    assert D.batch_size_for(3) == 4 and D.batch_size_for(60) == 10 and D.batch_size_for(10**4) == 32
    assert D.val_fraction_for(490) == 0 and D.val_fraction_for(500) == D.VAL_FRACTION
    assert D.epochs_for(10**4) == 100  # the 100-epoch floor
    assert D.epochs_for(36) == -(-D.SERIES_BUDGET // 36)
    ragged, even = np.arange(1, 101), np.full(50, 100)
    assert D.length_buckets_for(ragged, 1) == D.LENGTH_BUCKETS
    assert D.length_buckets_for(ragged, 3) == 1  # 34 LSTM steps: short
    assert D.length_buckets_for(even, 1) == 1  # nothing to gain: no padding


def test_older_run_folders_read_as_unpatched(files):
    config = small_config(files)
    old = D.derived_of({"batch_size": 8}, config)
    assert old == {
        "val_fraction": config.val_fraction,
        "batch_size": 8,
        "epochs": config.epochs,
        "patch": 1,
        "length_buckets": 1,
    }
    new = {"val_fraction": 0, "batch_size": 4, "epochs": 9, "patch": 5, "length_buckets": 1}
    assert D.derived_of({"derived": new}, config) == new


def test_patch_steps_groups_consecutive_steps():
    x = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)
    lengths = jnp.array([7, 4])
    patched, plen = patch_steps(x, lengths, 3)
    assert patched.shape == (2, 3, 9)
    np.testing.assert_array_equal(plen, [3, 2])
    # Patch k of a series holds its steps 3k, 3k+1, 3k+2 (channels of each step together).
    np.testing.assert_array_equal(patched[0, 1], np.asarray(x[0, 3:6]).reshape(-1))
    np.testing.assert_array_equal(patched[0, 2], np.r_[np.asarray(x[0, 6]), np.zeros(6)])


def test_a_patched_run_records_and_reproduces_its_settings(files, tmp_path):
    out = tmp_path / "run"
    cfg = small_config(files, patch=3, batch_size=None)
    result = train(cfg, out=out, quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["derived"] == {
        "val_fraction": 0.2,
        "batch_size": D.batch_size_for(48),
        "epochs": 4,
        "patch": 3,
        "length_buckets": 1,
    }
    assert config["model"]["input_size"] == 3 * config["data"]["num_channels"]
    assert result.metrics["data"]["derived"] == config["data"]["derived"]
    assert evaluate(out)["test_accuracy"] == result.metrics["test_accuracy"]


def test_a_run_folder_from_before_the_derived_settings_still_evaluates(files, tmp_path):
    out = tmp_path / "run"
    result = train(small_config(files), out=out, quiet=True)
    path = out / "config.json"
    config = json.loads(path.read_text())
    derived = config["data"].pop("derived")
    del config["data"]["bucket_steps"]
    config["data"]["batch_size"] = derived["batch_size"]  # where older versions kept it
    path.write_text(json.dumps(config))
    assert evaluate(out)["test_accuracy"] == result.metrics["test_accuracy"]

"""Run folders and checkpoints: resume errors, damaged checkpoints, evaluation, atomic files."""

from __future__ import annotations

import pytest
from train_helpers import make_dataset, save_npz, small_config

from flax_lstm.train import TrainError, evaluate, train


def test_resume_errors(full_run, files, tmp_path):
    with pytest.raises(TrainError, match="needs the run folder"):
        train(None, resume=True)
    with pytest.raises(TrainError, match="no such run folder"):
        train(None, out=tmp_path / "nope", resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match=r"no config\.json"):
        train(None, out=tmp_path / "empty", resume=True)
    # A run folder whose run died before its first checkpoint.
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((full_run.run_dir / "config.json").read_text())
    with pytest.raises(TrainError, match="no checkpoint to resume from"):
        train(None, out=no_ckpt, resume=True)
    (no_ckpt / "checkpoints").mkdir()
    with pytest.raises(TrainError, match="no checkpoint to resume from"):
        train(None, out=no_ckpt, resume=True)
    with pytest.raises(TrainError, match="hidden_size=16"):
        train(small_config(files, hidden_size=16), out=full_run.run_dir, resume=True)
    with pytest.raises(TrainError, match="no checkpoint to evaluate"):
        evaluate(no_ckpt)


def test_out_folder_must_be_new(full_run, files):
    before = sorted(p.name for p in full_run.run_dir.iterdir())
    with pytest.raises(TrainError, match="already exists and is not empty"):
        train(small_config(files), out=full_run.run_dir, quiet=True)
    assert sorted(p.name for p in full_run.run_dir.iterdir()) == before


def test_damaged_checkpoint_is_a_clear_error(full_run, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(full_run.run_dir, out)
    (checkpoint,) = (out / "checkpoints").iterdir()
    shutil.rmtree(checkpoint / "state")
    with pytest.raises(TrainError, match="cannot restore checkpoint") as info:
        train(None, out=out, resume=True, quiet=True)
    assert "\n" not in str(info.value)


def test_evaluate_other_test_file(full_run, tmp_path):
    other = save_npz(tmp_path / "more.npz", make_dataset(12, 7))
    result = evaluate(full_run.run_dir, test=other)
    assert result["n_test"] == 12 and 0 <= result["test_accuracy"] <= 1
    bad = save_npz(tmp_path / "bad.npz", make_dataset(6, 7, labels=("zzz",)))
    with pytest.raises(TrainError, match="never saw: 'zzz'"):
        evaluate(full_run.run_dir, test=bad)

"""flax_lstm.train: training, evaluation, resume bit-exactness, multi-device, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flax_lstm.data import DataError, SequenceDataset, write_ts
from flax_lstm.train import TrainConfig, TrainError, evaluate, train

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


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    write_ts(d / "train.ts", make_dataset(60, 0))
    save_npz(d / "test.npz", make_dataset(30, 1))
    return {"train": str(d / "train.ts"), "test": str(d / "test.npz")}


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


@pytest.fixture(scope="module")
def full_run(files, tmp_path_factory):
    """An uninterrupted run that the resume tests must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return train(small_config(files), out=out, quiet=True)


def test_train_writes_run_folder_and_evaluate_reproduces(full_run, files):
    out = full_run.run_dir
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.json", "checkpoints"} <= names
    assert {"learning_curves.png", "confusion_matrix.png"} <= names
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in names if n.endswith(".tmp")]
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(full_run.metrics))
    assert len(m["history"]) == m["epochs_run"] == 4
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert all(np.isfinite(h[key]) for h in m["history"])
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["test_accuracy"] >= 0.6  # three easy classes: chance is 1/3
    assert m["device_count"] == jax.device_count() and m["seed"] == 3
    assert m["config"]["hidden_size"] == 8 and m["wall_time_s"] > 0
    assert np.sum(m["confusion_matrix"]) == m["n_test"] == 30
    assert m["classes"] == ["high", "low", "mid"]
    config = json.loads((out / "config.json").read_text())
    assert config["train_config"]["train"] == str(Path(files["train"]).absolute())
    assert config["data"]["n_fit"] + config["data"]["n_val"] == 60

    again = evaluate(out)
    assert again["test_accuracy"] == m["test_accuracy"]
    assert again["test_loss"] == m["test_loss"]
    assert again["epoch"] == m["best_epoch"]


def test_resume_is_bit_exact(full_run, files, tmp_path):
    out = tmp_path / "resumed"
    part = train(small_config(files), out=out, quiet=True, stop_after_epochs=2)
    assert not part.finished and part.metrics == {"epochs_run": 2}
    assert not (out / "metrics.json").exists()
    assert not leaves_equal(part.state["params"], full_run.state["params"])
    done = train(None, out=out, resume=True, quiet=True)
    assert done.finished
    assert leaves_equal(done.state, full_run.state)  # params, optimizer state, step
    assert leaves_equal(done.params, full_run.params)  # the selected (best) parameters
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in done.metrics["history"]]
    assert strip == [
        {k: v for k, v in h.items() if k != "time_s"} for h in full_run.metrics["history"]
    ]
    assert done.metrics["test_accuracy"] == full_run.metrics["test_accuracy"]


def test_interrupted_run_resumes_exactly(full_run, files, tmp_path, monkeypatch):
    """A crash (here Ctrl-C in epoch 3) leaves the last committed checkpoint, nothing else."""
    import flax_lstm.train as T

    out = tmp_path / "crashed"
    original = T._epoch_order

    def crash_in_epoch_3(seed, epoch, n):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(seed, epoch, n)

    monkeypatch.setattr(T, "_epoch_order", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(files), out=out, quiet=True, checkpoint_every_s=0)
    monkeypatch.setattr(T, "_epoch_order", original)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2"]
    assert not (out / "metrics.json").exists()
    # A checkpoint that was being written when the process died is not trusted.
    (out / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir()
    done = train(None, out=out, resume=True, quiet=True)
    assert leaves_equal(done.state, full_run.state)
    assert done.metrics["test_accuracy"] == full_run.metrics["test_accuracy"]


def test_resume_of_finished_run_rewrites_outputs(full_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, out)
    (out / "metrics.json").unlink()
    done = train(None, out=out, resume=True, quiet=True)
    assert done.metrics["test_accuracy"] == full_run.metrics["test_accuracy"]
    assert (out / "metrics.json").exists()


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


def test_evaluate_other_test_file(full_run, tmp_path):
    other = save_npz(tmp_path / "more.npz", make_dataset(12, 7))
    result = evaluate(full_run.run_dir, test=other)
    assert result["n_test"] == 12 and 0 <= result["test_accuracy"] <= 1
    bad = save_npz(tmp_path / "bad.npz", make_dataset(6, 7, labels=("zzz",)))
    with pytest.raises(TrainError, match="never saw: 'zzz'"):
        evaluate(full_run.run_dir, test=bad)


def test_normalisation_uses_training_statistics_only(files, tmp_path):
    import flax_lstm.train as T
    from flax_lstm.data import read_ts

    shifted = make_dataset(30, 1)
    shifted = dataclasses.replace(shifted, x=shifted.x * 100 + 1000)
    cfg = small_config(files, test=str(save_npz(tmp_path / "shifted.npz", shifted)))
    info, fit, _, _ = T._prepare(cfg)
    cfg2 = small_config(files)
    info2, *_ = T._prepare(cfg2)
    assert info["mean"] == info2["mean"] and info["std"] == info2["std"]
    train_ds = read_ts(files["train"])
    y = np.array([info["classes"].index(v) for v in train_ds.y.tolist()])
    fit_idx, _ = T._split(y, cfg.val_fraction, cfg.seed)
    values = np.concatenate([train_ds.x[i, : train_ds.lengths[i]] for i in fit_idx])
    np.testing.assert_allclose(info["mean"], values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(info["std"], values.std(0), rtol=1e-6)
    # Normalised fit data: zero mean and unit variance over valid steps; zero padding.
    valid = np.arange(fit.x.shape[1])[None, :] < fit.lengths[:, None]
    np.testing.assert_allclose(fit.x[valid].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(fit.x[valid].std(0), 1, atol=1e-5)
    assert (fit.x[~valid] == 0).all()


def test_split_is_stratified_and_seeded():
    import flax_lstm.train as T

    y = np.repeat(np.arange(4), [10, 10, 3, 1])
    fit, val = T._split(y, 0.2, seed=5)
    assert np.intersect1d(fit, val).size == 0 and fit.size + val.size == y.size
    assert np.bincount(y[val], minlength=4).tolist() == [2, 2, 1, 0]
    assert set(y[fit]) == {0, 1, 2, 3}  # every class keeps a training example
    again = T._split(y, 0.2, seed=5)
    assert np.array_equal(again[1], val) and not np.array_equal(T._split(y, 0.2, 6)[1], val)


def test_padding_rows_and_steps_do_not_change_the_result(files):
    """Weight-0 rows (device-count padding) and extra time steps leave the update unchanged."""
    import flax_lstm.train as T

    cfg = small_config(files, dropout=0.0, input_noise=0.0)
    info, fit, _, _ = T._prepare(cfg)
    run = T._Run(cfg, info, T._Devices())
    state = run.init_state()
    idx = np.arange(5)
    outs = []
    for rows, extra_t in ((8, 0), (16, 6)):
        data = fit
        if extra_t:
            pad = np.zeros((len(fit), extra_t, fit.x.shape[2]), np.float32)
            data = T.RunData(np.concatenate([fit.x, pad], axis=1), fit.lengths, fit.y)
        batch = T._padded(data, idx, rows)
        new, stats = run.train_step(state, *(run.devices.put_batch(a) for a in batch))
        outs.append((new["params"], np.asarray(stats)))
    assert len(outs) == 2
    for params, stats in outs[1:]:
        np.testing.assert_allclose(stats, outs[0][1], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(outs[0][0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_four_devices(full_run, files, tmp_path):
    """The same run on 4 (forced host) devices: batch sharded over all 4, same accuracy band."""
    out = tmp_path / "four"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    cfg = small_config(files)
    args = [
        sys.executable, "-m", "flax_lstm.cli", "train", "--train", cfg.train, "--test", cfg.test,
        "--epochs", str(cfg.epochs), "--hidden-size", str(cfg.hidden_size), "--batch-size",
        str(cfg.batch_size), "--val-fraction", str(cfg.val_fraction), "--lr", str(cfg.lr),
        "--seed", str(cfg.seed), "--members", str(cfg.members), "--out", str(out), "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    m = json.loads((out / "metrics.json").read_text())
    assert summary["device_count"] == m["device_count"] == 4
    assert m["devices_used"] == 4 and len(m["devices"]) == 4
    assert abs(m["test_accuracy"] - full_run.metrics["test_accuracy"]) <= 0.05
    # Same data order and weight-0 padding rows: the curves agree up to float rounding.
    for h4, h1 in zip(m["history"], full_run.metrics["history"], strict=True):
        np.testing.assert_allclose(h4["train_loss"], h1["train_loss"], rtol=1e-3)
    proc = subprocess.run(
        [sys.executable, "-m", "flax_lstm.cli", "evaluate", "--run", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["test_accuracy"] == m["test_accuracy"]


def test_damaged_checkpoint_is_a_clear_error(full_run, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(full_run.run_dir, out)
    (checkpoint,) = (out / "checkpoints").iterdir()
    shutil.rmtree(checkpoint / "state")
    with pytest.raises(TrainError, match="cannot restore checkpoint") as info:
        train(None, out=out, resume=True, quiet=True)
    assert "\n" not in str(info.value)

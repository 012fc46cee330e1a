"""The training loop: run folder, resume bit-exactness, padding invariance, several devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import leaves_equal, small_config

from flax_lstm.train import evaluate, train


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
    from flax_lstm.train import runner as R

    out = tmp_path / "crashed"
    original = R.epoch_batches

    def crash_in_epoch_3(seed, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(seed, epoch, *args)

    monkeypatch.setattr(R, "epoch_batches", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(files), out=out, quiet=True, checkpoint_every_s=0)
    monkeypatch.setattr(R, "epoch_batches", original)
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


def test_padding_rows_and_steps_do_not_change_the_result(files):
    """Weight-0 rows (device-count padding) and extra time steps leave the update unchanged."""
    from flax_lstm.train.pipeline import RunData, padded, prepare
    from flax_lstm.train.runner import Devices, Runner

    cfg = small_config(files, dropout=0.0, input_noise=0.0)
    info, fit, _, _ = prepare(cfg)
    run = Runner(cfg, info, Devices())
    state = run.init_state()
    idx = np.arange(5)
    outs = []
    for rows, extra_t in ((8, 0), (16, 6)):
        data = fit
        if extra_t:
            pad = np.zeros((len(fit), extra_t, fit.x.shape[2]), np.float32)
            data = RunData(np.concatenate([fit.x, pad], axis=1), fit.lengths, fit.y)
        batch = padded(data, idx, rows)
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

"""``flax-lstm train`` and ``evaluate``: end to end, every bad input as a one-line error, flags."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from flax_lstm import cli
from flax_lstm.data import SequenceDataset, write_ts
from flax_lstm.train import derive

SMALL = [
    "--epochs",
    "3",
    "--hidden-size",
    "8",
    "--batch-size",
    "8",
    "--lr",
    "0.02",
    "--members",
    "2",
]
SMALL += ["--quiet"]


def make_dataset(n: int, seed: int, labels=("a", "b"), channels: int = 2) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    series = []
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(3, 9)), channels)) * 0.3
        x[:, 0] += 2.0 * (i % len(labels))
        series.append(x)
    return SequenceDataset.from_series(series, [labels[i % len(labels)] for i in range(n)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_data")
    write_ts(d / "train.ts", make_dataset(40, 0))
    ds = make_dataset(20, 1)
    np.savez(d / "test.npz", x=ds.x, y=ds.y, lengths=ds.lengths)
    return d


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flax_lstm.cli", *args], capture_output=True, text=True, timeout=300
    )


def expect_error(capsys, argv, message: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flax-lstm: error: "), err
    assert "\n" not in err and "Traceback" not in err
    assert message in err, err
    return err


def test_train_and_evaluate_end_to_end(files, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--train", str(files / "train.ts"), "--test", str(files / "test.npz"),
        "--out", str(out), "--seed", "1", *SMALL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["run"] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["test_accuracy"] == metrics["test_accuracy"] >= 0.8
    assert metrics["epochs_run"] == 3 and metrics["seed"] == 1
    for name in ("config.json", "checkpoints", "learning_curves.png", "confusion_matrix.png"):
        assert (out / name).exists()
    proc = run_cli("evaluate", "--run", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["test_accuracy"] == metrics["test_accuracy"]


def test_default_data_stop_and_resume(tmp_path, capsys):
    """No data flags: the bundled Japanese Vowels; --stop-after-epochs then --resume."""
    out = tmp_path / "jv"
    argv = ["train", "--epochs", "2", "--hidden-size", "8", "--members", "1", "--out", str(out)]
    argv.append("--quiet")
    assert cli.main([*argv, "--stop-after-epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1]) == {
        "run": str(out),
        "finished": False,
        "epochs_run": 1,
    }
    assert "--resume" in captured.err and not (out / "metrics.json").exists()
    assert cli.main(["train", "--out", str(out), "--resume", "--quiet", "--members", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["n_test"] == 370
    assert metrics["data"]["train"].startswith("japanese-vowels")
    assert summary["test_accuracy"] == metrics["test_accuracy"]
    expect_error(capsys, ["train", "--out", str(out), "--resume", "--lr", "0.5"], "lr=0.5")
    assert cli.main(["evaluate", "--run", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_accuracy"] == metrics["test_accuracy"]


def test_bad_inputs(files, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["train", "--out", str(out), *SMALL]
    train, test = str(files / "train.ts"), str(files / "test.npz")
    expect_error(capsys, [*base, "--train", str(tmp_path / "missing.ts"), "--test", test],
                 "missing.ts: no such file")  # fmt: skip
    (tmp_path / "garbage.ts").write_text("hello\nworld\n")
    expect_error(capsys, [*base, "--train", str(tmp_path / "garbage.ts"), "--test", test],
                 "expected a @header line")  # fmt: skip
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 broken zip")
    expect_error(capsys, [*base, "--train", train, "--test", str(tmp_path / "garbage.npz")],
                 "not a valid .npz")  # fmt: skip
    (tmp_path / "dims.ts").write_text("@classLabel true a b\n@data\n1,2:3,4:a\n1,2,3:b\n")
    expect_error(capsys, [*base, "--train", str(tmp_path / "dims.ts"), "--test", test],
                 "inconsistent dimensions")  # fmt: skip
    unseen = make_dataset(6, 3, labels=("a", "b", "c"))
    write_ts(tmp_path / "unseen.ts", unseen)
    expect_error(capsys, [*base, "--train", train, "--test", str(tmp_path / "unseen.ts")],
                 "labels that training never saw: 'c'")  # fmt: skip
    expect_error(capsys, [*base, "--train", train], "give both --train and --test")
    expect_error(capsys, [*base, "--distributed"], "jax.distributed.initialize() failed")
    expect_error(capsys, [*base, "--train", train, "--test", test, "--dropout", "1.5"], "dropout")
    assert not out.exists()  # no half-written run folder from any of these

    expect_error(capsys, ["train", "--resume"], "--resume needs the run folder")
    expect_error(capsys, ["train", "--resume", "--out", str(out)], "no such run folder")
    out.mkdir()
    expect_error(capsys, ["train", "--resume", "--out", str(out)], "no config.json")
    expect_error(capsys, ["evaluate", "--run", str(out)], "no config.json")
    expect_error(capsys, ["evaluate", "--run", str(tmp_path / "nope")], "no such run folder")

    with pytest.raises(SystemExit) as info:  # argparse: usage + one error line, status 2
        cli.main(["train", "--epochs", "many"])
    assert info.value.code == 2
    assert "flax-lstm: error: argument --epochs" in capsys.readouterr().err


def test_run_folder_without_checkpoint(files, tmp_path, capsys, monkeypatch):
    """A run that dies before its first checkpoint leaves nothing --resume would trust."""
    from flax_lstm.train import runner as R

    out = tmp_path / "died"

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "epoch_batches", die)
    argv = ["train", "--train", str(files / "train.ts"), "--test", str(files / "test.npz")]
    assert cli.main([*argv, "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err
    monkeypatch.undo()
    expect_error(capsys, ["train", "--resume", "--out", str(out)], "no checkpoint to resume from")
    expect_error(capsys, [*argv, "--out", str(out), *SMALL], "already exists and is not empty")


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--train", "--test", "--epochs", "--no-bidirectional", "--resume", "--quiet"):
        assert flag in text
    # Each derived default states its rule, and where the run records the values.
    flat = " ".join(text.split())
    rules = (
        f"{derive.SERIES_BUDGET:,} training series",
        f"at least {derive.MIN_VALIDATION} series",
        f"at most {derive.TARGET_STEPS} patches",
        f"more than {derive.MAX_UNPATCHED} steps",
    )
    for rule in rules:
        assert rule in flat
    assert "data.derived" in flat


def test_every_config_field_is_a_flag(monkeypatch, tmp_path):
    """A value for each TrainConfig field on the command line reaches the config `train` gets."""
    import dataclasses

    from flax_lstm.train import TrainConfig
    from flax_lstm.train import cli as train_cli

    values = {
        "train": "a.ts", "test": "b.npz", "epochs": 7, "hidden_size": 5, "num_layers": 2,
        "bidirectional": False, "dropout": 0.25, "lr": 0.125, "batch_size": 6, "seed": 9,
        "weight_decay": 0.5, "clip_norm": 2.5, "warmup": 0.0625, "val_fraction": 0.375,
        "patience": 4, "pooling": "last", "input_noise": 0.75, "patch": 11, "length_buckets": 2,
        "members": 3,
    }  # fmt: skip
    assert set(values) == {f.name for f in dataclasses.fields(TrainConfig)}
    argv = ["train", "--out", str(tmp_path / "run")]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    seen = []

    def fake_train(config, **kwargs):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", fake_train)
    assert cli.main(argv) == 130
    assert seen == [TrainConfig(**values)]
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 130
    assert seen[1] == TrainConfig()

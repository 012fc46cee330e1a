"""Multi-process training on one machine (issue 14): two ``flax-lstm train --distributed``
processes with a 127.0.0.1 coordinator, one CPU device each, write one run folder; stopped and
resumed with ``--resume`` they end where a one-process run on two (forced) CPU devices ends.

jax's CPU backend runs the processes' collectives over gloo. The metrics are compared to a
relative 1e-6 (the mean of two partial gradients is the same sum in either order: they have
been bitwise equal).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import make_dataset, save_npz

from flax_lstm.data import write_ts
from flax_lstm.train.checkpoints import open_latest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # per launch; each takes 20-60 s on a loaded 2-core machine
FLAGS = ["--epochs", "2", "--hidden-size", "8", "--batch-size", "8", "--lr", "0.02"]
FLAGS += ["--seed", "3", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _train(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flax_lstm.cli", "train", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _summary(proc: subprocess.Popen) -> dict:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"flax-lstm train took more than {TIMEOUT_S} s")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _two_processes(args: list[str]) -> list[dict]:
    address = f"127.0.0.1:{_free_port()}"
    dist = ["--distributed", "--coordinator-address", address, "--num-processes", "2"]
    procs = [_train([*args, *dist, "--process-id", str(i)], _env()) for i in range(2)]
    try:
        return [_summary(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _comparable(metrics: dict) -> dict:
    drop = {"wall_time_s", "process_count", "devices", "config", "data"}
    m = {k: v for k, v in metrics.items() if k not in drop}
    m["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in m["history"]]
    return m


def test_two_processes_train_stop_resume_and_match_one_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_ts(data / "train.ts", make_dataset(60, 0))
    save_npz(data / "test.npz", make_dataset(30, 1))
    args = ["--train", str(data / "train.ts"), "--test", str(data / "test.npz"), *FLAGS]
    run = tmp_path / "run"

    first = _two_processes([*args, "--out", str(run), "--stop-after-epochs", "1"])
    assert [s["finished"] for s in first] == [False, False]
    assert [s["epochs_run"] for s in first] == [1, 1]
    second = _two_processes(["--out", str(run), "--resume", "--quiet"])
    assert [s["finished"] for s in second] == [True, True]
    assert second[0] == {**second[1], "wall_time_s": second[0]["wall_time_s"]}
    assert second[0]["device_count"] == 2

    # One run folder, written once: the JSON files by process 0, the checkpoint by both.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    assert {"config.json", "metrics.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob("**/*.tmp"))
    # Committed: the one folder left is step 2, and the run's own reader (as --resume opens it)
    # finds it; commit_success.txt is written by some orbax versions only, so it is not the sign.
    (ckpt,) = (run / "checkpoints").iterdir()
    with open_latest(run, "no committed checkpoint") as (_, latest):
        assert ckpt.name == "2" and latest == 2
    for item in ("state", "model"):
        shards = sorted(p.name for p in (ckpt / item).glob("ocdbt.process_*"))
        assert shards == ["ocdbt.process_0", "ocdbt.process_1"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["process_count"] == 2 and metrics["device_count"] == 2

    one = tmp_path / "one"
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    single = _summary(_train([*args, "--out", str(one)], env))
    assert single["device_count"] == 2
    reference = json.loads((one / "metrics.json").read_text())
    assert _close(_comparable(metrics), _comparable(reference))


def _example(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "examples" / "distributed_nnx.py"), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_library_example_two_processes_match_one():
    """examples/distributed_nnx.py: an NNX model on a batch-sharded mesh over two processes."""
    address = f"127.0.0.1:{_free_port()}"
    dist = ["--coordinator", address, "--num-processes", "2"]
    procs = [_example([*dist, "--process-id", str(i)], _env()) for i in range(2)]
    try:
        results = [_summary(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [r["process"] for r in results] == [0, 1]
    assert [r["device_count"] for r in results] == [2, 2]
    assert results[0]["losses"] == results[1]["losses"]
    one = _summary(_example([], _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")))
    assert one["device_count"] == 2
    assert _close(results[0]["losses"], one["losses"])
    assert one["losses"][-1] < one["losses"][0]  # it trains

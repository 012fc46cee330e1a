"""The scripts in tools/ that drive `flax-lstm train`: each prints a table and writes JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import make_dataset

from flax_lstm.data import write_ts

TOOLS = Path(__file__).parents[2] / "tools"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A folder of one UCR-style data set, ``Toy/Toy_TRAIN.ts`` and ``Toy/Toy_TEST.ts``."""
    root = tmp_path_factory.mktemp("archive")
    (root / "Toy").mkdir()
    write_ts(root / "Toy" / "Toy_TRAIN.ts", make_dataset(40, 0))
    write_ts(root / "Toy" / "Toy_TEST.ts", make_dataset(20, 1))
    return root


def _run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(TOOLS / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_bucket_timing(archive, tmp_path):
    out = _run(
        "bucket_timing.py", "Toy", "--data", str(archive), "--patch", "1",
        "--buckets", "1", "3", "--reps", "1", "--json", "t.json", cwd=tmp_path,
    )  # fmt: skip
    assert "| Toy | 1 | 3 |" in out
    run = json.loads((tmp_path / "t.json").read_text())["runs"][0]
    assert run["bucket_steps"]["1"] == [12] and len(run["bucket_steps"]["3"]) == 3
    assert run["speedup"]["1"] == 1.0 and run["epoch_ms"]["3"] > 0


def test_learning_table_passes_flags(archive, tmp_path):
    out = _run(
        "learning_table.py", "Toy", "--data", str(archive), "--json", "l.json",
        "--flags", "--epochs 2 --members 1 --hidden-size 4 --length-buckets 2", cwd=tmp_path,
    )  # fmt: skip
    assert "| Toy | 0 |" in out
    run = json.loads((tmp_path / "l.json").read_text())["runs"][0]
    assert run["epochs_run"] == 2 and run["derived"]["length_buckets"] == 2
    assert 0 <= run["accuracy"] <= 1

"""Test accuracy and wall time of ``flax-lstm train`` on a spread of data sets (issue 16).

Each data set is one ``flax-lstm train --quiet`` process (start-up included in its time), with
the defaults, or with ``--previous`` the defaults before settings were derived from the data
(``--epochs 100 --val-fraction 0.1 --patch 1``). Prints a markdown table and writes JSON.

The data sets are UEA/UCR folders ``DIR/NAME/NAME_TRAIN.ts`` (or ``.npz``); ``JV`` is the
bundled Japanese Vowels. The ones in the docs come from the aeon 1.6.0 wheel::

    pip download --no-deps aeon==1.6.0
    unzip -q aeon-1.6.0-py3-none-any.whl 'aeon/datasets/data/*'
    python tools/learning_table.py --data aeon/datasets/data ArrowHead GunPoint JV --seeds 0 1 2

Not a test: it trains for minutes per data set.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREVIOUS = ["--epochs", "100", "--val-fraction", "0.1", "--patch", "1"]


def data_files(data: Path, name: str) -> tuple[str, str] | None:
    """``(train, test)`` paths of the data set ``name`` under ``data``; None for ``JV``."""
    if name == "JV":
        return None
    for ext in ("ts", "npz"):
        train = data / name / f"{name}_TRAIN.{ext}"
        if train.exists():
            return str(train), str(data / name / f"{name}_TEST.{ext}")
    raise SystemExit(f"no {name}_TRAIN.ts or .npz under {data / name}")


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """The data set arguments that `data_files` reads: ``names`` and ``--data``."""
    ap.add_argument("names", nargs="+", help="data set folder names under --data, or JV")
    ap.add_argument("--data", type=Path, default=Path("."), help="folder of data set folders")


def _files(data: Path, name: str) -> list[str]:
    files = data_files(data, name)
    return [] if files is None else ["--train", files[0], "--test", files[1]]


def run_one(
    data: Path, name: str, seed: int, previous: bool, timeout: float, flags: list[str]
) -> dict:
    """One training process (``flags`` added to its command); its metrics, or why none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "flax_lstm.cli", "train", "--quiet", "--out", str(out)]
        cmd += _files(data, name) + ["--seed", str(seed)] + (PREVIOUS if previous else [])
        cmd += flags
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, "seed": seed, "error": f"over {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"name": name, "seed": seed, "error": proc.stderr.strip()[-300:]}
        metrics = json.loads((out / "metrics.json").read_text())
    return {
        "name": name,
        "seed": seed,
        "accuracy": metrics["test_accuracy"],
        "wall_s": round(wall, 1),
        "epochs_run": metrics["epochs_run"],
        "derived": metrics["data"].get("derived"),
        "shape": {k: metrics["data"][k] for k in ("n_train", "max_length", "num_channels")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--previous", action="store_true", help="the defaults before derivation")
    ap.add_argument("--flags", default="", help='more train flags, e.g. "--length-buckets 4"')
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--json", type=Path, default=Path("learning_table.json"))
    args = ap.parse_args()
    rows = []
    print("| data set | seed | test accuracy | wall s | epochs | derived |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.names:
        for seed in args.seeds:
            r = run_one(args.data, name, seed, args.previous, args.timeout, args.flags.split())
            rows.append(r)
            if "error" in r:
                print(f"| {name} | {seed} | error: {r['error']} | | | |", flush=True)
                continue
            d = r["derived"] or {}
            derived = ", ".join(f"{k}={v}" for k, v in d.items())
            print(
                f"| {name} | {seed} | {r['accuracy']:.4f} | {r['wall_s']} | "
                f"{r['epochs_run']} | {derived} |",
                flush=True,
            )
    ok = [r for r in rows if "error" not in r]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "previous_defaults": args.previous,
        "flags": args.flags,
        "median_wall_s": statistics.median([r["wall_s"] for r in ok]) if ok else None,
        "runs": rows,
    }
    args.json.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Train-epoch time of ``flax-lstm train`` with 1 and K length buckets, side by side (issue 17).

For each data set, one process prepares the run as ``flax-lstm train`` would (defaults, or
``--patch``), then trains epochs with each number of buckets in turn, interleaved (the same
training state carries on through all of them), and reports the median epoch time of each and
its ratio to one bucket. The first epoch of each is timed apart: it compiles the train step of
each new padded length, which is the price of the buckets. Prints a markdown table and writes
JSON. Accuracy is a separate question: compare whole runs with
``tools/learning_table.py --flags "--length-buckets K"``.

    python tools/bucket_timing.py JV PickupGestureWiimoteZ --data aeon/datasets/data --patch 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

# tools/ is the script's folder, first on sys.path
from learning_table import add_data_arguments, data_files

from flax_lstm.train import TrainConfig
from flax_lstm.train.pipeline import bucket_steps, prepare
from flax_lstm.train.runner import Devices, Runner


def _config(data: Path, name: str, patch: int | None) -> TrainConfig:
    files = data_files(data, name)
    train, test = (None, None) if files is None else files
    return TrainConfig(train=train, test=test, patch=patch)


def measure(data: Path, name: str, patch: int | None, buckets: list[int], reps: int) -> dict:
    """Median train-epoch seconds for each bucket count, interleaved, and the first epochs."""
    cfg = _config(data, name, patch)
    prepared = prepare(cfg)
    runner = Runner(cfg, prepared.info, Devices())
    fit, state = prepared.fit, runner.init_state()
    padded_steps = fit.x.shape[1]
    steps = {k: bucket_steps(fit.lengths, k, runner.patch, padded_steps) for k in buckets}

    def epoch(k: int, index: int) -> float:
        nonlocal state
        runner.bucket_steps = steps[k]
        t0, stats = time.perf_counter(), []
        for x, lengths, y, w in runner.epoch_batches(fit, index):
            state, s = runner.train_step(state, x, lengths, y, w)
            stats.append(s)
        jax.block_until_ready(stats)
        return time.perf_counter() - t0

    first = {k: epoch(k, 0) for k in buckets}
    times = {k: [] for k in buckets}
    for rep in range(reps):
        for k in buckets:
            times[k].append(epoch(k, rep + 1))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "name": name,
        "patch": runner.patch,
        "padded_steps": padded_steps,
        "n_fit": len(fit),
        "batch_size": runner.batch_size,
        "mean_length": float(fit.lengths.mean()),
        "bucket_steps": steps,
        "epoch_ms": {k: round(1000 * m, 1) for k, m in median.items()},
        "speedup": {k: round(median[buckets[0]] / m, 3) for k, m in median.items()},
        "first_epoch_extra_s": {k: round(first[k] - median[k], 2) for k in buckets},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(ap)
    ap.add_argument("--patch", type=int, default=None, help="steps per patch (default: derived)")
    ap.add_argument("--buckets", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=7, help="timed epochs per bucket count")
    ap.add_argument("--json", type=Path, default=Path("bucket_timing.json"))
    args = ap.parse_args()
    rows = []
    print("| data set | patch | buckets | padded lengths | epoch ms | speed-up | first epoch +s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.names:
        r = measure(args.data, name, args.patch, args.buckets, args.reps)
        rows.append(r)
        for k in args.buckets:
            print(
                f"| {name} | {r['patch']} | {k} | {r['bucket_steps'][k]} | {r['epoch_ms'][k]} | "
                f"{r['speedup'][k]} | {r['first_epoch_extra_s'][k]} |",
                flush=True,
            )
    summary = {"machine": f"{platform.processor() or platform.machine()}", "runs": rows}
    args.json.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Small calls: the CPU kernel against the scan path, and which one the default takes.

For each shape (one layer, input size = hidden size, float32), the calibration's own probe
calls (`flax_lstm._kernel.calibrate`: `flax_lstm.lstm` with ``impl="kernel"`` and
``impl="scan"``, jitted, forward and forward+backward, the gradients of every weight and the
input), warmed up, then timed as the benchmark times (`flax_lstm._timing`: interleaved, the
order changed every repetition).
Prints one line per shape: the scan's time over the kernel's (above 1: the kernel is faster)
by medians and, in parentheses, by fastest calls, and the path the default plan takes on this
machine (with measuring on, its verdicts as cached by ``flax-lstm kernel --calibrate``;
``kernel/scan``: the kernel, and the scan when differentiated). The evidence for the default's
size rule (`flax_lstm._auto`): docs/performance/design.md, "Small calls: the kernel or the
scan".

With ``--threads``, the kernel against itself instead: each call on one thread a direction
against its hidden units shared among the threads (``FLAX_LSTM_MIN_SPLIT_WORK`` above the
shape's work, and 0), which says where the second thread starts to pay on this CPU, the
threshold `flax_lstm._kernel.tuning.MIN_SPLIT_WORK` (measured on AMD Zen 4; evidence:
docs/performance/design.md, "Small calls on one thread"). Each line gives the shape's work
(`flax_lstm._kernel.ffi.call_work`), one thread's time over the shared threads' (above 1: the
second thread pays), and the last line how many shapes on either side of the threshold the
other choice would have run faster by more than 5%.

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/small_calls.py
[--threads] [--shape B,T,H ...] [--reps 60] [--json out.json]``; without ``--shape``, a grid
of batches 1, 4 and 16, 1 to 8 steps and 64 to 256 hidden units (with ``--threads``, 4 to 64
steps and 32 to 256 units, of works 2^15 to 2^23).
"""

from __future__ import annotations

import argparse
import math
import os
from unittest import mock

import jax
import jax.numpy as jnp

import flax_lstm as fl
from flax_lstm._kernel import calibrate, ffi, tuning
from flax_lstm._timing import MODES, summary, time_interleaved, warm_up
from flax_lstm.bench.machine import write_record

GRID = [(b, t, h) for h in (64, 128, 256) for b in (1, 4, 16) for t in (1, 2, 4, 8)]
PATHS = ("kernel", "scan")
THREADS_GRID = [
    (b, t, h)
    for h in (32, 64, 128, 256)
    for b in (1, 4, 16)
    for t in (4, 16, 64)
    if 1 << 15 <= t * b * h * h <= 1 << 23
]
# --threads: the value of FLAX_LSTM_MIN_SPLIT_WORK that each variant is traced with
SPLIT_SETTINGS = {"one": str(1 << 62), "split": "0"}
MARGIN = 1.05  # a choice counts as wrong where the other ran this much faster


def shape_arg(text: str) -> tuple[int, int, int]:
    """``B,T,H`` as three positive ints."""
    try:
        batch, steps, hidden = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,T,H (three ints), got {text!r}") from None
    if min(batch, steps, hidden) < 1:
        raise argparse.ArgumentTypeError(f"B, T and H must be positive, got {text!r}")
    return batch, steps, hidden


def default_path(batch: int, steps: int, hidden: int) -> str:
    """The recurrence that the default plan takes for the shape on this machine, and where it
    differs, the one it takes differentiated (``"kernel/scan"``)."""
    config = fl.LSTMConfig(input_size=hidden, hidden_size=hidden)
    params = fl.init_params(jax.random.key(0), config)
    plan = fl.lstm_plan(params, jnp.ones((steps, batch, hidden)), config=config)
    if plan.grad_recurrence == plan.recurrence:
        return plan.recurrence
    return f"{plan.recurrence}/{plan.grad_recurrence}"


def measure(batch: int, steps: int, hidden: int, reps: int) -> dict:
    """One shape's record: milliseconds (median, fastest) of each path and mode, the default."""
    shape = calibrate.Probe(steps=steps, hidden=hidden, batch=batch)
    calls = {path: calibrate._probe_calls("float32", shape, path) for path in PATHS}
    warm_up(calls, 5)
    times = time_interleaved(calls, MODES, reps)
    record: dict = {"batch": batch, "steps": steps, "hidden": hidden}
    record["default"] = default_path(batch, steps, hidden)
    record.update(summary(times, MODES))
    return record


def measure_threads(batch: int, steps: int, hidden: int, reps: int) -> dict:
    """One shape's record for ``--threads``: milliseconds (median, fastest) of the kernel with
    every call on one thread a direction (``"one"``) and with its units shared (``"split"``)."""
    shape = calibrate.Probe(steps=steps, hidden=hidden, batch=batch)
    calls = {}
    for name, value in SPLIT_SETTINGS.items():
        # set while the calls are traced (the plan holds it: each value traces its own)
        with mock.patch.dict(os.environ, {tuning.MIN_SPLIT_WORK_ENV: value}):
            calls[name] = calibrate._probe_calls("float32", shape, "kernel")
            warm_up({name: calls[name]}, 5)  # traced (and compiled) under the setting
    times = time_interleaved(calls, MODES, reps)
    record: dict = {"batch": batch, "steps": steps, "hidden": hidden}
    record["work"] = ffi.call_work(steps, batch, hidden, hidden)
    record.update(summary(times, MODES))
    return record


def gain(r: dict, stat: str = "") -> float:
    """One thread's time over the shared threads', the geometric mean of the modes (above 1:
    the second thread pays), by medians or, with ``stat="_min"``, by fastest calls."""
    ratios = [r[m][f"one{stat}_ms"] / r[m][f"split{stat}_ms"] for m in MODES]
    return math.prod(ratios) ** (1 / len(ratios))


def threads_line(r: dict) -> str:
    """One shape's ratios, one thread's time / the shared threads', by medians (fastest)."""
    parts = [f"{m} {r[m]['one_ms'] / r[m]['split_ms']:.2f}" for m in MODES]
    rule = "split" if r["work"] >= tuning.min_split_work() else "one"
    return (
        f"B{r['batch']} T{r['steps']} H{r['hidden']} W=2^{math.log2(r['work']):.1f} "
        f"[rule: {rule}]: " + " | ".join(parts) + f" | both {gain(r):.2f} ({gain(r, '_min'):.2f})"
    )


def threads_summary(records: list[dict]) -> str:
    """How many shapes on each side of this process's threshold (`tuning.min_split_work`) ran
    faster by more than `MARGIN` (medians, both modes) with the other choice."""
    threshold = tuning.min_split_work()
    below = [r for r in records if r["work"] < threshold]
    above = [r for r in records if r["work"] >= threshold]
    split_better = sum(gain(r) > MARGIN for r in below)
    one_better = sum(gain(r) * MARGIN < 1 for r in above)
    return (
        f"threshold {threshold}: below it (one thread) the shared "
        f"threads faster on {split_better} of {len(below)}; from it (shared) one thread faster "
        f"on {one_better} of {len(above)}"
    )


def line(r: dict) -> str:
    """One shape's ratios, scan time / kernel time, by medians (by fastest calls)."""
    parts = []
    for mode in MODES:
        m = r[mode]
        ratio, fastest = m["scan_ms"] / m["kernel_ms"], m["scan_min_ms"] / m["kernel_min_ms"]
        parts.append(f"{mode} {ratio:.2f} ({fastest:.2f})")
    return f"B{r['batch']} T{r['steps']} H{r['hidden']} [default {r['default']}]: " + " | ".join(
        parts
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=shape_arg, action="append", help="B,T,H (repeatable)")
    parser.add_argument(
        "--threads", action="store_true", help="the kernel on one thread against shared threads"
    )
    parser.add_argument("--reps", type=int, default=60, help="timed rounds (default 60)")
    parser.add_argument("--json", help="write the records and the machine here")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be positive, got {args.reps}")
    records = []
    measure_one, show = (measure_threads, threads_line) if args.threads else (measure, line)
    for shape in args.shape or (THREADS_GRID if args.threads else GRID):
        records.append(measure_one(*shape, args.reps))
        print(show(records[-1]), flush=True)
    if args.threads:
        print(threads_summary(records))
    write_record(args.json, args.reps, records)


if __name__ == "__main__":
    main()

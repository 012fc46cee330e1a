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

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/small_calls.py
[--shape B,T,H ...] [--reps 60] [--json out.json]``; without ``--shape``, a grid of batches
1, 4 and 16, 1 to 8 steps and 64 to 256 hidden units.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import flax_lstm as fl
from flax_lstm._kernel import calibrate
from flax_lstm._timing import MODES, summary, time_interleaved, warm_up
from flax_lstm.bench.machine import write_record

GRID = [(b, t, h) for h in (64, 128, 256) for b in (1, 4, 16) for t in (1, 2, 4, 8)]
PATHS = ("kernel", "scan")


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
    parser.add_argument("--reps", type=int, default=60, help="timed rounds (default 60)")
    parser.add_argument("--json", help="write the records and the machine here")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be positive, got {args.reps}")
    records = []
    for shape in args.shape or GRID:
        records.append(measure(*shape, args.reps))
        print(line(records[-1]), flush=True)
    write_record(args.json, args.reps, records)


if __name__ == "__main__":
    main()

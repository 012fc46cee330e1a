"""flax_lstm's cell in Flax's own loop, against Flax's cell in it: `nn.RNN` over each.

A user of Flax's cell protocol steps flax_lstm's cell in Flax's loop (`flax.linen.RNN`, a
`lax.scan` over the cell) rather than calling `flax_lstm.lstm`. This times that loop against
the same loop over Flax's own cell, both jitted, forward and forward+backward (the gradients
of every parameter and the input, as `flax_lstm.bench` takes them), interleaved as the
benchmark times (`flax_lstm._timing`). Each line gives the milliseconds by median (fastest in
parentheses) and Flax's time over flax_lstm's (above 1: flax_lstm's cell is faster). The
evidence for `flax_lstm.cell.weight_matmul`'s single product: docs/performance/design.md, "One
step with the weights as stored".

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/flax_cell_loop.py
[--shape B,T,H ...] [--reps 30] [--json out.json]``; without ``--shape``, batches 1 to 64 at
64 steps of 256 units, one sequence of one step and of 64 steps of 512.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax

# tools/ is the script's folder, first on sys.path
from small_calls import shape_arg

import flax_lstm as fl
from flax_lstm._timing import MODES, jitted_calls, summary, time_interleaved, warm_up
from flax_lstm.bench.machine import write_record

GRID = [(1, 1, 256), (1, 64, 256), (1, 64, 512), (4, 64, 256), (16, 64, 256), (64, 64, 256)]
CELLS = {"flax_lstm": fl.linen.LSTMCell, "flax": nn.OptimizedLSTMCell}


def measure(batch: int, steps: int, hidden: int, reps: int) -> dict:
    """One shape's record: each cell's loop, batch-major (N, T, H) as `nn.RNN` takes it."""
    x = jax.random.normal(jax.random.key(1), (batch, steps, hidden))
    calls = {}
    for name, cell in CELLS.items():
        rnn = nn.RNN(cell(hidden))
        calls[name] = jitted_calls(rnn.apply, rnn.init(jax.random.key(0), x), x)
    warm_up(calls, 2)
    times = time_interleaved(calls, MODES, reps)
    return {"batch": batch, "steps": steps, "hidden": hidden, **summary(times, MODES)}


def line(r: dict) -> str:
    parts = []
    for mode in MODES:
        ours, flax = r[mode]["flax_lstm_ms"], r[mode]["flax_ms"]
        parts.append(
            f"{mode} {ours:.3f} ({r[mode]['flax_lstm_min_ms']:.3f}) ms, Flax's "
            f"{flax:.3f} ({r[mode]['flax_min_ms']:.3f}): {flax / ours:.2f}×"
        )
    return f"B{r['batch']} T{r['steps']} H{r['hidden']}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=shape_arg, action="append", help="B,T,H (repeatable)")
    parser.add_argument("--reps", type=int, default=30, help="timed rounds (default 30)")
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

"""Held-out shapes: the default's path against flax_lstm's other path and torch, on random draws.

The two sets of ``flax-lstm bench`` are the shapes the kernel and the default were tuned on.
This draws ``--n`` shapes from a seeded distribution none of them was chosen from (batch 1-128,
1-512 steps, 16-768 hidden units with odd sizes, input sizes apart from the hidden, 1-3
layers, bidirectional, ragged lengths, bfloat16 where the kernel has it; forward FLOPs capped
by ``--max-gflop``), runs them through the benchmark (`flax_lstm.bench.runner.run`: flax_lstm,
its scan path, its kernel path where the default does not take it, torch; interleaved), and
prints the table and the rows where the default ran slower than 0.95× its other path or
than torch. Each mode counts against the path the default takes in it (``Plan.recurrence``
for the forward, ``Plan.grad_recurrence`` for fwd+bwd).

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/plan_sweep.py [--n 40]
[--seed 1] [--reps 10] [--steps T] [--json out.json]``; ``--steps 1`` draws single steps (a
token at a time) alone. A seed's draws are the same on every machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

import numpy as np

import flax_lstm as fl
from flax_lstm.bench.libraries import MODES
from flax_lstm.bench.report import format_table, machine_line
from flax_lstm.bench.runner import run
from flax_lstm.bench.shapes import Shape

LIBS = ("flax_lstm", "flax_lstm_scan", "flax_lstm_kernel", "torch")
OTHER_PATH_FLOOR = 0.95  # issue 23: the default at least 0.95× flax_lstm's other path


def _log_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in [low, high], uniform in its logarithm."""
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw(rng: np.random.Generator, max_gflop: float, steps: int | None = None) -> Shape:
    """One random shape whose forward needs at most ``max_gflop`` GFLOP, of ``steps`` steps
    where given."""
    while True:
        t = _log_int(rng, 1, 512)  # drawn with --steps too: the other fields stay the seed's
        t = t if steps is None else steps
        shape = Shape(
            batch=_log_int(rng, 1, 128),
            seq_len=t,
            hidden=_log_int(rng, 16, 768),
            layers=int(rng.choice([1, 1, 2, 2, 3])),
            bidirectional=bool(rng.random() < 0.3),
            input_size=_log_int(rng, 1, 512) if rng.random() < 0.5 else None,
            dtype="bfloat16" if rng.random() < 0.25 else "float32",
            lengths=f"uniform:1:{t}" if t > 1 and rng.random() < 0.2 else None,
        )
        if shape.flops() <= max_gflop * 1e9:
            return shape


def runnable(shape: Shape) -> Shape:
    """``shape`` in float32 where this CPU's kernel has no bfloat16 (the draw stays the same)."""
    if shape.dtype == "bfloat16" and not fl.kernel.available("bfloat16"):
        return dataclasses.replace(shape, dtype="float32")
    return shape


def misses(entry: dict[str, Any]) -> list[str]:
    """What a result row falls short of: the other path by more than 5%, or torch."""
    found = []
    for mode, other in entry.get("vs_other_path", {}).items():
        if other["speedup"] < OTHER_PATH_FLOOR:
            found.append(f"{mode} {other['speedup']:.2f}× the {other['path']} path")
    for mode, ratio in entry.get("speedup_vs", {}).get("torch", {}).items():
        if ratio < 1.0:
            found.append(f"{mode} {ratio:.2f}× torch")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="shapes drawn (default 40)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the draws (default 1)")
    ap.add_argument("--reps", type=int, default=10, help="timed rounds (default 10)")
    ap.add_argument("--max-gflop", type=float, default=4.0, help="forward GFLOP cap (default 4)")
    ap.add_argument("--steps", type=int, help="every shape of this many steps (e.g. 1)")
    ap.add_argument("--json", help="write the benchmark's result, with the draw, here")
    args = ap.parse_args()
    if args.n < 1 or args.reps < 1 or args.max_gflop <= 0 or (args.steps or 1) < 1:
        ap.error("--n, --reps, --max-gflop and --steps must be positive")
    rng = np.random.default_rng(args.seed)
    shapes = [runnable(draw(rng, args.max_gflop, args.steps)) for _ in range(args.n)]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run(shapes, libs=LIBS, reps=args.reps, modes=MODES, log=log, reference_gemm=False)
    result["draw"] = {"seed": args.seed, "n": args.n, "max_gflop": args.max_gflop}
    if args.steps is not None:
        result["draw"]["steps"] = args.steps
    print(machine_line(result["machine"]))
    print(format_table(result["results"], MODES, ragged=True))
    short = [(e["label"], m) for e in result["results"] if (m := misses(e))]
    print(f"{len(short)} of {len(shapes)} shapes fall short:" if short else "none falls short")
    for label, found in short:
        print(f"  {label}: {'; '.join(found)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The CPU scan path of a bidirectional layer: one loop per direction or both in one loop.

For each shape (bidirectional, input size = hidden size), `flax_lstm.lstm` with
``impl=fl.Implementation(recurrence="scan", fuse_directions=False)`` (one loop per direction,
each over its own slice of the weights) and ``fuse_directions=True`` (both directions in one
loop, a batched GEMM over the direction axis), jitted, forward and forward+backward (the
gradients of every weight and the input), built and timed as the benchmark does
(`flax_lstm._timing`: warmed up, then interleaved, each repetition in another order). Prints
one line per shape: milliseconds by medians and the unfused time over the fused (above 1: the
fused loop is faster). The evidence for the CPU scan's default `fuse_directions`
(`flax_lstm.plan.resolve`): docs/performance/design.md, "Both directions in one loop on
CPU".

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/scan_directions.py
--shape B,T,H[,L][,P][,bfloat16] ... [--reps 15] [--json out.json]`` (L layers, default 1; P
the projection size, default 0).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl
from flax_lstm._timing import MODES, jitted_calls, summary, time_interleaved, warm_up
from flax_lstm.bench.machine import write_record

LOOPS = {"unfused": False, "fused": True}


class Shape(NamedTuple):
    batch: int
    steps: int
    hidden: int
    layers: int
    proj: int
    dtype: str

    def label(self) -> str:
        proj = f" P{self.proj}" if self.proj else ""
        return f"B{self.batch} T{self.steps} H{self.hidden} L{self.layers}{proj} {self.dtype}"


def shape_arg(text: str) -> Shape:
    """``B,T,H[,L][,P][,dtype]``."""
    parts = text.split(",")
    dtype = parts.pop() if parts[-1] in ("float32", "bfloat16") else "float32"
    try:
        numbers = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,T,H[,L][,P][,dtype], got {text!r}") from None
    if not 3 <= len(numbers) <= 5 or min(numbers[:4]) < 1 or min(numbers) < 0:
        raise argparse.ArgumentTypeError(f"expected B,T,H[,L][,P][,dtype], got {text!r}")
    batch, steps, hidden, layers, proj = numbers + [1, 0][len(numbers) - 3 :]
    return Shape(batch, steps, hidden, layers, proj, dtype)


def calls(shape: Shape, fuse: bool) -> dict:
    """The jitted forward and forward+backward of ``shape`` on the scan path."""
    dtype = jnp.dtype(shape.dtype)
    config = fl.LSTMConfig(
        shape.hidden, shape.hidden, num_layers=shape.layers, bidirectional=True,
        proj_size=shape.proj,
    )  # fmt: skip
    params = fl.init_params(jax.random.key(0), config, dtype=dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((shape.steps, shape.batch, shape.hidden)), dtype)
    impl = fl.Implementation(recurrence="scan", fuse_directions=fuse)
    return jitted_calls(lambda p, x: fl.lstm(p, x, config=config, impl=impl)[0], params, x)


def measure(shape: Shape, reps: int) -> dict:
    """One shape's record: milliseconds (median, fastest) of each loop layout and mode."""
    fns = {name: calls(shape, fuse) for name, fuse in LOOPS.items()}
    warm_up(fns, 3)
    times = time_interleaved(fns, MODES, reps)
    record: dict = {"shape": shape._asdict(), **summary(times, MODES)}
    return record


def line(shape: Shape, r: dict) -> str:
    """One shape's medians and their ratio, unfused / fused."""
    parts = []
    for mode in MODES:
        m = r[mode]
        ratio = m["unfused_ms"] / m["fused_ms"]
        parts.append(
            f"{mode} unfused {m['unfused_ms']:.2f} fused {m['fused_ms']:.2f} ms ({ratio:.2f}×)"
        )
    return f"{shape.label()} bidirectional: " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=shape_arg, action="append", required=True,
        help="B,T,H[,L][,P][,dtype] (repeatable)",
    )  # fmt: skip
    parser.add_argument("--reps", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--json", help="write the records and the machine here")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be positive, got {args.reps}")
    records = []
    for shape in args.shape:
        records.append(measure(shape, args.reps))
        print(line(shape, records[-1]), flush=True)
    write_record(args.json, args.reps, records)


if __name__ == "__main__":
    main()

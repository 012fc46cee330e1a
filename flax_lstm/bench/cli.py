"""``flax-lstm bench`` (and ``python -m flax_lstm.bench``): arguments, run, print, JSON."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Sequence

import jax

import flax_lstm as fl
from flax_lstm.bench.libraries import LIBS, MODES
from flax_lstm.bench.report import format_table, machine_line, summary_lines
from flax_lstm.bench.runner import run
from flax_lstm.bench.shapes import (
    LENGTHS_SYNTAX,
    SETS,
    SHAPE_SYNTAX,
    Shape,
    parse_lengths,
    parse_shape,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``flax-lstm bench [--set cpu|small|gpu] [--shape ...] [--lengths ...]
    [--json PATH]``."""
    ap = _parser()
    args = ap.parse_args(argv)
    libs = _comma_list(args.libs)
    unknown = set(libs) - set(LIBS)
    if unknown:
        ap.error(f"--libs: unknown {sorted(unknown)}; choose from {LIBS}")
    shapes = _shapes(ap, args)
    if args.gemm_size is not None and args.gemm_size < 1:
        ap.error(f"--gemm-size must be a positive integer, got {args.gemm_size}")
    modes = _comma_list(args.modes)
    bad_modes = set(modes) - set(MODES)
    if bad_modes or not modes:
        ap.error(f"--modes: unknown {sorted(bad_modes)}; choose from {MODES}")
    if args.remat and args.autodiff:
        ap.error("--remat and --autodiff: choose one backward")
    backward = "remat" if args.remat else "autodiff" if args.autodiff else "custom"
    impl = fl.Implementation(backward=backward, unroll=args.unroll)
    result = run(
        shapes,
        libs=libs,
        impl=impl,
        reps=args.reps,
        warmup=args.warmup,
        modes=modes,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        gemm_size=args.gemm_size,
    )
    print(machine_line(result["machine"]))
    print(format_table(result["results"], modes))
    for line in summary_lines(result):
        print(line)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return 0


def _parser() -> argparse.ArgumentParser:
    package_doc = importlib.import_module("flax_lstm.bench").__doc__ or ""
    ap = argparse.ArgumentParser(prog="flax-lstm bench", description=package_doc.split("\n\n")[0])
    ap.add_argument(
        "--set",
        choices=tuple(SETS),
        default=None,
        help="shape set (default: gpu on a GPU, else cpu): "
        + "; ".join(
            f"{name}: {', '.join(s.label() for s in shapes)}" for name, shapes in SETS.items()
        ),
    )
    ap.add_argument(
        "--shape",
        action="append",
        type=parse_shape,
        default=[],
        help=f"custom shape {SHAPE_SYNTAX}; repeatable; replaces --set",
    )
    ap.add_argument(
        "--lengths",
        type=parse_lengths,
        default=None,
        help=f"ragged batches: every shape's sequence lengths drawn uniformly from [MIN, MAX] "
        f"({LENGTHS_SYNTAX}, 1 <= MIN <= MAX <= T; MAX defaults to each shape's T; the same "
        "lengths at every run), e.g. uniform:16:512. flax_lstm then runs with seq_lengths and "
        "is compared with itself without them (flax_lstm_padded), torch padded (torch) and "
        "torch on a packed batch (torch_packed, pack_padded_sequence with "
        "enforce_sorted=False); the GFLOP/s count the steps inside the lengths",
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma list from ('float32', 'bfloat16'): run every shape in each "
        "(default: each shape's own dtype)",
    )
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list from {LIBS}")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="fwd,fwd_bwd", help=f"comma list from {MODES}")
    ap.add_argument("--json", default="bench.json", help="where to write the JSON result")
    ap.add_argument(
        "--gemm-size",
        type=int,
        default=None,
        help="N of the N×N GEMM whose best rate (XLA's or torch's) is the yardstick of the "
        "GFLOP/s (default: 2048 on CPU, 8192 on an accelerator)",
    )
    ap.add_argument("--unroll", type=int, default=None, help="flax_lstm scan unroll")
    ap.add_argument(
        "--remat", action="store_true", help="flax_lstm with Implementation(backward='remat')"
    )
    ap.add_argument(
        "--autodiff",
        action="store_true",
        help="flax_lstm with Implementation(backward='autodiff') (plain autodiff of the scan)",
    )
    return ap


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _shapes(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Shape, ...]:
    """The --shape shapes, else the --set (by default the backend's), with the --lengths; each
    in every --dtypes."""
    if args.shape:
        shapes = tuple(args.shape)
    else:
        shapes = SETS[args.set or ("gpu" if jax.default_backend() == "gpu" else "cpu")]
    if args.lengths is not None:
        try:
            shapes = tuple(dataclasses.replace(s, lengths=args.lengths) for s in shapes)
        except ValueError as e:
            ap.error(str(e))
    if args.dtypes is not None:
        dtypes = _comma_list(args.dtypes)
        if not dtypes or set(dtypes) - {"float32", "bfloat16"}:
            ap.error(f"--dtypes: choose from float32, bfloat16; got {args.dtypes!r}")
        shapes = tuple(dataclasses.replace(s, dtype=d) for s in shapes for d in dtypes)
    return shapes

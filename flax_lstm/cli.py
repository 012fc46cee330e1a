"""The ``flax-lstm`` command: ``train``, ``evaluate``, ``bench`` and ``kernel``.

Usage::

    flax-lstm train [--train PATH --test PATH] [--epochs N] [--hidden-size H] [--num-layers L]
                    [--bidirectional | --no-bidirectional] [--dropout P] [--lr LR]
                    [--batch-size B] [--seed S] [--out DIR] [--resume] [--quiet] ...
    flax-lstm evaluate --run DIR [--test PATH]
    flax-lstm bench ...
    flax-lstm kernel [--calibrate]
    flax-lstm --version

``train`` with no data arguments trains on the bundled Japanese Vowels data; ``--train`` and
``--test`` take UEA/UCR ``.ts`` or ``.npz`` files. Both commands print a JSON object as their
last line of standard output. Errors print ``flax-lstm: error: <message>`` on standard error
and exit with status 2. This module only dispatches: ``train`` and ``evaluate`` are
`flax_lstm.train.cli` (their flags made from `flax_lstm.train.TrainConfig`), ``bench`` is
`flax_lstm.bench`, ``kernel`` builds the CPU kernel if need be and reports it
(`flax_lstm.kernel.info`, with the cached measurement of the kernel against the scan path that
the default plan follows; ``--calibrate`` measures it now; exit status 1 where the kernel is
not available). ``--version`` prints
``flax-lstm`` and `flax_lstm.__version__`. ``train`` and ``evaluate`` need the ``train`` extra
(``pip install 'flax-lstm[train]'``); without it they say so and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "flax-lstm"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every other error
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flax-lstm`` (``bench`` takes its arguments unparsed)."""
    from flax_lstm.train import cli as train_cli

    parser = _Parser(
        prog=PROG,
        description="Train and evaluate flax_lstm sequence classifiers; benchmark the LSTM.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train_cli.add_commands(sub, PROG)
    sub.add_parser(
        "bench",
        help="benchmark the LSTM (arguments go to flax_lstm.bench; see flax-lstm bench --help)",
        add_help=False,
    )
    k = sub.add_parser(
        "kernel",
        help="build the CPU kernel if need be (prebuild) and report it",
        description="Build the compiled CPU kernel into its cache folder if it is not there "
        "(FLAX_LSTM_CACHE_DIR, FLAX_LSTM_ARCH, FLAX_LSTM_CXXFLAGS as for the runs), and print "
        "its library, instruction set, bfloat16 support, threads and the cached measurement "
        "of the kernel against the scan path (which the default plan follows), or why it is "
        "not available; a JSON object last. Exit status 1 if it is not available.",
    )
    k.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the kernel against the scan path now, for every dtype it has, and cache "
        "the verdicts (a few seconds per dtype; to prebuild into an image or shared cache)",
    )
    k.set_defaults(handler=_kernel)
    return parser


def _version() -> str:
    from flax_lstm import __version__

    return __version__


def _amx_line(state: dict) -> str:
    if state["amx"] == "emulated":
        return "emulated (a test build: the tile instructions in software)"
    return "yes" if state["amx"] else f"no ({state['amx_reason']})"


def _kernel(args: argparse.Namespace) -> int:
    import json

    from flax_lstm import kernel

    if args.calibrate and kernel.available():
        from flax_lstm._kernel import calibrate

        calibrate.measure_all(["float32", *(["bfloat16"] if kernel.available("bfloat16") else [])])
    state = kernel.info()
    if state["available"]:
        isa = ", ".join(state["isa"] or []) or "unknown"
        lines = [
            f"library: {state['library']}",
            f"compiler: {state['compiler']}",
            f"flags: {' '.join(state['flags'] or [])}",
            f"instruction set: {isa}",
            f"bfloat16: {'yes' if state['bfloat16'] else 'no'}",
            f"AMX tiles for bfloat16: {_amx_line(state)}",
            f"threads: {state['threads']} (of {state['cpus']} usable CPUs)",
            f"small-batch scheme: batches of at most {state['small_batch']} sequences",
            f"one thread a direction: layers of less work than {state['min_split_work']} "
            "(steps × sequences × H·(H + I)/2)",
            *_calibration_lines(state["calibration"]),
        ]
    else:
        lines = [f"not available: {state['error']}", f"cache folder: {state['cache_dir']}"]
    print("\n".join(f"{PROG} kernel: {line}" for line in lines), file=sys.stderr)
    print(json.dumps(state))
    return 0 if state["available"] else 1


def _calibration_lines(verdicts: dict) -> list[str]:
    """The cached verdicts of the kernel against the scan path, one line per dtype and regime."""
    from flax_lstm._kernel import calibrate

    if not verdicts:
        return ["measured against the scan: not yet (flax-lstm kernel --calibrate measures it)"]
    lines = [f"measured against the scan: {calibrate.cache_path()}"]
    for dtype, by_regime in verdicts.items():
        for v in by_regime.values():
            probe = f"B{v['batch']} T{v['steps']} H{v['hidden']}"
            line = (
                f"  {dtype} {v['regime']} (probe {probe}): the kernel "
                f"{v['speedup']:.2f}× the scan, default {v['choice']}"
            )
            verdict = calibrate.Verdict.from_json(v)
            if v["regime"] == "short":  # its forward alone decides some calls' forward
                line += (
                    f"; forward {verdict.forward_speedup:.2f}×, which decides the forward of a "
                    "single step"
                )
            if verdict.weight_grads_ms:
                line += (
                    f"; fwd+bwd {verdict.weight_grads_speedup:.2f}× as fast with XLA's weight "
                    f"gradient GEMMs as with the kernel library's, default {verdict.weight_grads}'s"
                )
            lines.append(line)
    if calibrate.disabled():
        lines.append(f"  not used: {calibrate.ENV}=0")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flax-lstm`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from flax_lstm import bench

        return bench.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    from flax_lstm.data import DataError
    from flax_lstm.train import TrainError
    from flax_lstm.train.cli import initialize_distributed

    try:
        if hasattr(args, "distributed"):
            initialize_distributed(args)
        return args.handler(args)
    except (TrainError, DataError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train" and getattr(args, "out", None):
            hint = f"; continue with: {PROG} train --out {args.out} --resume"
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

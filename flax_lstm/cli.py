"""The ``flax-lstm`` command: ``train``, ``evaluate`` and ``bench``.

Usage::

    flax-lstm train [--train PATH --test PATH] [--epochs N] [--hidden-size H] [--num-layers L]
                    [--bidirectional | --no-bidirectional] [--dropout P] [--lr LR]
                    [--batch-size B] [--seed S] [--out DIR] [--resume] [--quiet] ...
    flax-lstm evaluate --run DIR [--test PATH]
    flax-lstm bench ...

``train`` with no data arguments trains on the bundled Japanese Vowels data; ``--train`` and
``--test`` take UEA/UCR ``.ts`` or ``.npz`` files. Both commands print a JSON object as their
last line of standard output. Errors print ``flax-lstm: error: <message>`` on standard error
and exit with status 2. The command is a thin layer over `flax_lstm.train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "flax-lstm"

# Flags whose values form the TrainConfig; None (not given) keeps the default, or on --resume
# the run's saved value.
_CONFIG_FLAGS = (
    "train",
    "test",
    "epochs",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "dropout",
    "lr",
    "batch_size",
    "seed",
    "weight_decay",
    "clip_norm",
    "warmup",
    "val_fraction",
    "patience",
    "pooling",
    "input_noise",
    "members",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every other error
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flax-lstm`` (``bench`` takes its arguments unparsed)."""
    from flax_lstm.train import POOLINGS, TrainConfig

    d = TrainConfig()
    parser = _Parser(
        prog=PROG,
        description="Train and evaluate flax_lstm sequence classifiers; benchmark the LSTM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a classifier (default data: bundled Japanese Vowels)",
        description="Train an LSTM classifier with optax on every local device. Writes a run "
        "folder with config.json, metrics.json, orbax checkpoints and PNG plots, and prints a "
        "JSON summary as the last line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = t.add_argument_group("data (default: the bundled Japanese Vowels set)")
    data.add_argument("--train", metavar="PATH", help="training data, .ts or .npz")
    data.add_argument("--test", metavar="PATH", help="test data, .ts or .npz")
    model = t.add_argument_group("model")
    model.add_argument("--hidden-size", type=int, metavar="H", help=f"default {d.hidden_size}")
    model.add_argument("--num-layers", type=int, metavar="L", help=f"default {d.num_layers}")
    model.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        help=f"run a reverse direction too (default {d.bidirectional})",
    )
    model.add_argument(
        "--dropout",
        type=float,
        metavar="P",
        help=f"dropout on the pooled features and between layers (default {d.dropout})",
    )
    model.add_argument(
        "--pooling",
        choices=POOLINGS,
        help=f"head input: masked mean of the outputs, final states, or both (default {d.pooling})",
    )
    model.add_argument(
        "--members",
        type=int,
        metavar="K",
        help=f"ensemble of K independently initialised models, trained side by side "
        f"(default {d.members})",
    )
    opt = t.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, metavar="N", help=f"most epochs (default {d.epochs})")
    opt.add_argument("--lr", type=float, metavar="LR", help=f"peak learning rate (default {d.lr})")
    opt.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="series per step (default: a sixth of the training set, clipped to [4, 32])",
    )
    opt.add_argument("--seed", type=int, metavar="S", help=f"default {d.seed}")
    opt.add_argument(
        "--weight-decay", type=float, metavar="WD", help=f"AdamW decay (default {d.weight_decay})"
    )
    opt.add_argument(
        "--clip-norm", type=float, metavar="C", help=f"gradient norm clip (default {d.clip_norm})"
    )
    opt.add_argument(
        "--warmup",
        type=float,
        metavar="F",
        help=f"fraction of steps warming up the learning rate (default {d.warmup})",
    )
    opt.add_argument(
        "--input-noise",
        type=float,
        metavar="SIGMA",
        help=f"Gaussian noise on the normalised training inputs (default {d.input_noise})",
    )
    opt.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help=f"held-out share of the training data for early stopping (default {d.val_fraction})",
    )
    opt.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help=f"epochs without a better validation loss before stopping (default {d.patience})",
    )
    run = t.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run folder (default runs/<timestamp>)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out DIR from its last checkpoint, with its saved settings",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    run.add_argument(
        "--stop-after-epochs",
        type=int,
        metavar="K",
        help="stop with a checkpoint after K epochs (continue later with --resume)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="checkpoint at the end of an epoch once this long has passed since the last one "
        "(the last epoch is always checkpointed)",
    )
    _add_distributed_flags(t)
    t.set_defaults(handler=_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a run's checkpoint on its test data (or --test)",
        description="Restore a run's selected parameters and print a JSON object with "
        "test_accuracy as the last line.",
    )
    e.add_argument("--run", required=True, metavar="DIR", help="a run folder from train")
    e.add_argument("--test", metavar="PATH", help="other test data, .ts or .npz")
    _add_distributed_flags(e)
    e.set_defaults(handler=_evaluate)

    sub.add_parser(
        "bench",
        help="benchmark the LSTM (arguments go to flax_lstm.bench; see flax-lstm bench --help)",
        add_help=False,
    )
    return parser


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-host (run the same command on every host; the run folder on a shared disk)"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first; it detects SLURM, Open MPI, Kubernetes "
        "and Cloud TPU by itself, else give the three flags below",
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")


def _initialize_distributed(args: argparse.Namespace) -> None:
    manual = {
        "coordinator_address": args.coordinator_address,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    if not args.distributed and all(v is None for v in manual.values()):
        return
    import jax

    try:
        jax.distributed.initialize(**{k: v for k, v in manual.items() if v is not None})
    except Exception as e:  # no cluster detected, coordinator unreachable, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise _UsageError(f"jax.distributed.initialize() failed: {first}") from None


def _train(args: argparse.Namespace) -> int:
    from flax_lstm.train import TrainConfig, load_run_config, train

    given = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if args.resume:
        if args.out is None:
            raise _usage("--resume needs the run folder: --out DIR")
        config = None
        if given:
            import dataclasses
            from pathlib import Path

            saved = load_run_config(args.out)
            for key in ("train", "test"):
                if key in given:
                    given[key] = str(Path(given[key]).absolute())
            config = dataclasses.replace(saved, **given)
    else:
        config = TrainConfig(**given)
        if args.out is None:  # chosen here so that an interrupted run can name it
            from flax_lstm.train import _default_out

            args.out = str(_default_out())
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise _usage("--stop-after-epochs must be at least 1")
    result = train(
        config,
        out=args.out,
        resume=args.resume,
        stop_after_epochs=args.stop_after_epochs,
        quiet=args.quiet,
        checkpoint_every_s=args.checkpoint_every,
    )
    m = result.metrics
    if not result.finished:
        summary = {"run": str(result.run_dir), "finished": False, "epochs_run": m["epochs_run"]}
        print(
            f"{PROG}: stopped after epoch {m['epochs_run']} as asked; continue with: "
            f"{PROG} train --out {result.run_dir} --resume",
            file=sys.stderr,
        )
    else:
        summary = {
            "run": str(result.run_dir),
            "finished": True,
            "test_accuracy": m["test_accuracy"],
            "test_loss": m["test_loss"],
            "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"],
            "device_count": m["device_count"],
            "wall_time_s": round(m["wall_time_s"], 2),
        }
        if not args.quiet:
            print(
                f"{PROG}: test accuracy {m['test_accuracy']:.4f} ({m['test_correct']}/"
                f"{m['n_test']}), best epoch {m['best_epoch']} of {m['epochs_run']}, "
                f"{m['wall_time_s']:.1f} s on {m['device_count']} device(s); run folder "
                f"{result.run_dir}",
                file=sys.stderr,
            )
    print(json.dumps(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from flax_lstm.train import evaluate

    print(json.dumps(evaluate(args.run, test=args.test)))
    return 0


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flax-lstm`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from flax_lstm import bench

        return bench.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    from flax_lstm.data import DataError
    from flax_lstm.train import TrainError

    try:
        _initialize_distributed(args)
        return args.handler(args)
    except (TrainError, DataError, _UsageError) as e:
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

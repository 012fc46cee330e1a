"""The ``flax-lstm train`` and ``flax-lstm evaluate`` commands (`flax_lstm.cli` dispatches here).

`flax_lstm.cli` passes its program name in (`add_commands`), so this module does not import it.

The ``train`` flags that set the `TrainConfig` are made from its fields: ``--hidden-size`` for
``hidden_size``, ``--bidirectional``/``--no-bidirectional`` for a bool, the type, help text,
group and metavar from the field's annotation and metadata. A flag not given is None: it keeps
the default, or on ``--resume`` the run's saved value.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import typing
from pathlib import Path
from typing import Any

from flax_lstm.train.api import default_out, evaluate, train
from flax_lstm.train.checkpoints import load_run_config
from flax_lstm.train.config import TrainConfig, TrainError

__all__ = ["add_commands", "config_fields", "initialize_distributed"]

# The groups of TrainConfig's flags in --help (the fields' ``group`` metadata), in order.
GROUPS = {
    "data": "data (default: the bundled Japanese Vowels set)",
    "model": "model",
    "opt": "optimisation",
}


def config_fields() -> tuple[dataclasses.Field, ...]:
    """The `TrainConfig` fields that are ``train`` flags (all of them)."""
    return dataclasses.fields(TrainConfig)


def _flag_type(field: dataclasses.Field) -> type:
    """``bool``, ``int``, ``float`` or ``str`` from the annotation (``X | None`` is ``X``)."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    if kind not in (bool, int, float, str):
        raise TypeError(f"TrainConfig.{field.name}: no command-line flag for {hint}")
    return kind


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in config_fields():
        meta = f.metadata
        kind = _flag_type(f)
        default = meta.get("default_help", f.default)
        kwargs: dict[str, Any] = {"default": None, "help": f"{meta['help']} (default: {default})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, metavar=meta.get("metavar"), choices=meta.get("choices"))
        groups[meta["group"]].add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run folder (default: runs/<timestamp>)")
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
        "(the last epoch is always checkpointed; default: %(default)s)",
    )


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


def add_commands(subparsers, prog: str) -> None:
    """Add ``train`` and ``evaluate`` to the subparsers of the command ``prog`` (``flax-lstm``),
    the name that ``train``'s messages give for the next command to run."""
    t = subparsers.add_parser(
        "train",
        help="train a classifier (default data: bundled Japanese Vowels)",
        description="Train an LSTM classifier with optax on every local device. Writes a run "
        "folder with config.json, metrics.json, orbax checkpoints and PNG plots, and prints a "
        "JSON summary as the last line. Settings whose default is a rule of the data's shape "
        "(epochs, batch size, validation fraction, patch, length buckets) are derived when not "
        "given; the run folder records the values under data.derived in config.json and "
        "metrics.json.",
    )
    _add_config_flags(t)
    _add_run_flags(t)
    _add_distributed_flags(t)
    t.set_defaults(handler=functools.partial(_train, prog=prog))

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's checkpoint on its test data (or --test)",
        description="Restore a run's selected parameters and print a JSON object with "
        "test_accuracy as the last line.",
    )
    e.add_argument("--run", required=True, metavar="DIR", help="a run folder from train")
    e.add_argument("--test", metavar="PATH", help="other test data, .ts or .npz")
    _add_distributed_flags(e)
    e.set_defaults(handler=_evaluate)


def initialize_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize()`` if the multi-host flags ask for it."""
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
        raise TrainError(f"jax.distributed.initialize() failed: {first}") from None


def _config_from_args(args: argparse.Namespace) -> TrainConfig | None:
    """The `TrainConfig` the flags ask for; on ``--resume``, None unless a flag is given."""
    given = {f.name: getattr(args, f.name) for f in config_fields()}
    given = {k: v for k, v in given.items() if v is not None}
    if not args.resume:
        return TrainConfig(**given)
    if args.out is None:
        raise TrainError("--resume needs the run folder: --out DIR")
    if not given:
        return None
    for key in ("train", "test"):
        if key in given:
            given[key] = str(Path(given[key]).absolute())
    return dataclasses.replace(load_run_config(args.out), **given)


def _train(args: argparse.Namespace, *, prog: str) -> int:
    config = _config_from_args(args)
    if not args.resume and args.out is None:  # chosen here so that an interrupted run names it
        args.out = str(default_out())
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise TrainError("--stop-after-epochs must be at least 1")
    result = train(
        config,
        out=args.out,
        resume=args.resume,
        stop_after_epochs=args.stop_after_epochs,
        quiet=args.quiet,
        checkpoint_every_s=args.checkpoint_every,
    )
    print(json.dumps(_summary(result, args.quiet, prog)))
    return 0


def _summary(result, quiet: bool, prog: str) -> dict[str, Any]:
    """The JSON line ``train`` prints last; the human summary goes to standard error."""
    m, run = result.metrics, str(result.run_dir)
    if not result.finished:
        print(
            f"{prog}: stopped after epoch {m['epochs_run']} as asked; continue with: "
            f"{prog} train --out {run} --resume",
            file=sys.stderr,
        )
        return {"run": run, "finished": False, "epochs_run": m["epochs_run"]}
    if not quiet:
        print(
            f"{prog}: test accuracy {m['test_accuracy']:.4f} ({m['test_correct']}/"
            f"{m['n_test']}), best epoch {m['best_epoch']} of {m['epochs_run']}, "
            f"{m['wall_time_s']:.1f} s on {m['device_count']} device(s); run folder {run}",
            file=sys.stderr,
        )
    return {
        "run": run,
        "finished": True,
        "test_accuracy": m["test_accuracy"],
        "test_loss": m["test_loss"],
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "device_count": m["device_count"],
        "wall_time_s": round(m["wall_time_s"], 2),
    }


def _evaluate(args: argparse.Namespace) -> int:
    print(json.dumps(evaluate(args.run, test=args.test)))
    return 0

"""`train` and `evaluate`: start or resume a run folder, and measure a finished one."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from pathlib import Path
from typing import Any

import jax

import flax_lstm as fl
from flax_lstm.train.checkpoints import (
    CONFIG_FILE,
    Checkpoints,
    load_run_config,
    open_latest,
    read_run_json,
    write_json,
)
from flax_lstm.train.config import TrainConfig, TrainError, resolve_paths
from flax_lstm.train.loop import Carry, Job, LoopOptions, Meta, TrainResult, train_loop
from flax_lstm.train.pipeline import encode_test, prepare
from flax_lstm.train.runner import Devices, Runner

__all__ = ["default_out", "evaluate", "train"]


def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    quiet: bool = False,
    checkpoint_every_s: float = 10.0,
) -> TrainResult:
    """Train a classifier; write the run folder; return the selected parameters and metrics.

    Args:
      config: the run's settings (default `TrainConfig()`: the bundled Japanese Vowels). With
        ``resume``, None takes the saved ones; a config that differs from them is an error.
      out: the run folder (default ``runs/<timestamp>``); must not hold files unless resuming.
      resume: continue the run in ``out`` from its last checkpoint.
      stop_after_epochs: stop (with a checkpoint) once this many epochs are done; the run can
        then be resumed. The result has ``finished=False`` and no test metrics.
      quiet: no progress bar.
      checkpoint_every_s: save a checkpoint at the end of an epoch once this many seconds
        have passed since the last one; one is always saved after the last epoch, and when
        ``stop_after_epochs`` stops the run.

    Returns:
      `TrainResult`; ``metrics`` is what ``metrics.json`` holds.

    Raises:
      TrainError, flax_lstm.data.DataError: with a one-line message, before writing anything
        for bad settings or data.
    """
    t_start = time.perf_counter()
    if resume:
        out = _resume_folder(out)
        config = _resume_config(config, out)
    else:
        config = resolve_paths((config or TrainConfig()).validate())
        out = Path(out) if out is not None else default_out()
    config.validate()

    data = prepare(config)
    runner = Runner(config, data.info, Devices())
    options = LoopOptions(stop_after_epochs, quiet, checkpoint_every_s)
    if resume:
        if read_run_json(out)["data"]["fingerprint"] != data.info["fingerprint"]:
            raise TrainError(
                f"the data in {data.info['train']} / {data.info['test']} changed since the run "
                "started; cannot resume it"
            )
        missing = (
            f"{out}: no checkpoint to resume from (the run saved none); delete the folder and "
            "train again"
        )
        with open_latest(out, missing) as (ckpts, last):
            abstract = runner.abstract_state()
            restored = ckpts.restore(last, state=abstract, model=abstract["params"])
            carry = Carry(restored["state"], restored["model"], Meta(**restored["meta"]))
            return train_loop(Job(runner, data, out, ckpts), carry, options, t_start)

    _start_run_dir(out, config, data.info, runner)
    ckpts = Checkpoints(out, create=True)
    try:
        state = runner.init_state()
        carry = Carry(state, state["params"], Meta())
        return train_loop(Job(runner, data, out, ckpts), carry, options, t_start)
    finally:
        ckpts.close()


def _resume_folder(out: str | os.PathLike | None) -> Path:
    if out is None:
        raise TrainError("--resume needs the run folder: --out DIR")
    out = Path(out)
    if not out.is_dir():
        raise TrainError(f"{out}: no such run folder to resume")
    return out


def _resume_config(config: TrainConfig | None, out: Path) -> TrainConfig:
    """The run's saved settings; ``config``, if given, must equal them."""
    saved = load_run_config(out)
    if config is not None:
        diff = resolve_paths(config).differences(saved)
        if diff:
            raise TrainError(f"--resume keeps the run's settings; these differ: {', '.join(diff)}")
    return saved


def default_out() -> Path:
    """A new run folder ``runs/<timestamp>`` (with a suffix if that exists already)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    k = 1
    while out.exists():
        out = Path("runs") / f"{stamp}-{k}"
        k += 1
    return out


def _sync(name: str) -> None:
    """Wait for every process (multi-host runs only)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _start_run_dir(out: Path, config: TrainConfig, info: dict[str, Any], runner: Runner) -> None:
    """Create the (new or empty) run folder and write its ``config.json``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(
            f"{out} already exists and is not empty; continue it with --resume or choose "
            "another --out"
        )
    _sync("flax_lstm: run folder checked")  # every host checks before any host writes
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"cannot create the run folder {out}: {e.strerror or e}") from None
    if jax.process_index() == 0:
        run_config = {
            "flax_lstm_version": fl.__version__,
            "train_config": config.to_dict(),
            "model": {
                **dataclasses.asdict(runner.lstm_config),
                "pooling": config.pooling,
                "num_classes": runner.num_classes,
            },
            "data": info,
        }
        write_json(out / CONFIG_FILE, run_config)
    _sync("flax_lstm: run folder written")


def evaluate(run_dir: str | os.PathLike, *, test: str | os.PathLike | None = None) -> dict:
    """Restore a run's selected parameters and measure them on its test data (or ``test``).

    On the run's own test data the result equals the training run's ``test_accuracy``
    exactly: the same normalisation, padding and batch shapes give the same predictions.

    Args:
      run_dir: a run folder written by `train`.
      test: a ``.ts`` or ``.npz`` file to evaluate on instead of the run's test data.

    Returns:
      ``{"test_accuracy", "test_loss", "test_correct", "n_test", "epoch", "test", "run"}``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"{run_dir}: no such run folder")
    saved = read_run_json(run_dir)
    config = TrainConfig.from_dict(saved["train_config"])
    info = saved["data"]
    data, source = encode_test(info, test, config)
    with open_latest(run_dir, f"{run_dir}: no checkpoint to evaluate") as (ckpts, last):
        runner = Runner(config, info, Devices())
        restored = ckpts.restore(last, model=runner.abstract_state()["params"])
    result = runner.evaluate(restored["model"], data)
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_correct": result["correct"],
        "n_test": len(data),
        "epoch": restored["meta"]["best_epoch"],
        "test": source,
        "run": str(run_dir),
    }

"""The epoch loop: train steps, validation and early stopping, checkpoints, final metrics.

The loop's state is a `Carry` (training state, selected parameters and the JSON bookkeeping
`Meta`); everything fixed for the run is a `Job`. A checkpoint holds the whole `Carry`, so a
resumed loop continues exactly where the saved one was.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from flax_lstm.train.checkpoints import METRICS_FILE, Checkpoints, write_json
from flax_lstm.train.pipeline import Prepared
from flax_lstm.train.plots import plot_confusion, plot_learning_curves
from flax_lstm.train.runner import Runner

__all__ = ["Carry", "Job", "LoopOptions", "Meta", "TrainResult", "train_loop"]


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      run_dir: the run folder.
      metrics: the content of ``metrics.json``; only ``{"epochs_run"}`` when
        ``stop_after_epochs`` stopped the run.
      params: the selected (best-validation) model parameters, ``{"lstm": ..., "head": ...}``.
      state: the final training state ``{"params", "opt_state", "step"}``.
      finished: False when ``stop_after_epochs`` stopped the run before its end.
    """

    run_dir: Path
    metrics: dict[str, Any]
    params: Any
    state: Any
    finished: bool


@dataclasses.dataclass
class Meta:
    """The loop's bookkeeping; saved with each checkpoint as JSON (``dataclasses.asdict``)."""

    epoch: int = 0  # epochs done
    best_epoch: int = 0  # the epoch whose parameters are selected (0: none yet)
    best_val_loss: float | None = None
    bad_epochs: int = 0  # epochs since the validation loss last improved
    done: bool = False
    stopped_early: bool = False
    elapsed_s: float = 0.0  # wall time of the run up to the last checkpoint
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one record an epoch


@dataclasses.dataclass
class Carry:
    """What one epoch hands to the next (and a checkpoint holds)."""

    state: Any  # {"params", "opt_state", "step"}, replicated on the mesh
    best_params: Any
    meta: Meta


class Job(NamedTuple):
    """What stays fixed while a run trains."""

    runner: Runner
    data: Prepared
    out: Path
    ckpts: Checkpoints


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """`train`'s ``stop_after_epochs``, ``quiet`` and ``checkpoint_every_s``."""

    stop_after_epochs: int | None = None
    quiet: bool = False
    checkpoint_every_s: float = 10.0


@dataclasses.dataclass
class _Clock:
    t_start: float  # when this call of `train` began
    elapsed_before: float  # the run's wall time before this call (a resumed run)
    last_save: float

    def elapsed(self, now: float) -> float:
        return self.elapsed_before + now - self.t_start


def train_loop(job: Job, carry: Carry, options: LoopOptions, t_start: float) -> TrainResult:
    """Train from ``carry`` to the last epoch (or ``stop_after_epochs``); write the results."""
    meta = carry.meta
    steps = job.runner.steps_per_epoch
    clock = _Clock(t_start, meta.elapsed_s, time.perf_counter())
    saved_epoch = meta.epoch
    used_devices = None
    disable = options.quiet or meta.done
    epochs = job.runner.epochs
    with _progress_bar(epochs * steps, meta.epoch * steps, disable) as bar:
        while not meta.done and meta.epoch < epochs:
            record, used = _train_epoch(job, carry, bar)
            used_devices = used if used_devices is None else used_devices
            stopped = _end_epoch(job, meta, record, options.stop_after_epochs)
            _show(bar, record)
            now = time.perf_counter()
            if meta.done or stopped or now - clock.last_save >= options.checkpoint_every_s:
                meta.elapsed_s = clock.elapsed(now)
                job.ckpts.save(meta.epoch, carry.state, carry.best_params, dataclasses.asdict(meta))
                clock.last_save, saved_epoch = time.perf_counter(), meta.epoch
            if stopped and not meta.done:
                metrics = {"epochs_run": meta.epoch}
                return TrainResult(job.out, metrics, carry.best_params, carry.state, False)
    if saved_epoch != meta.epoch:  # cannot happen: the last epoch always saves
        raise AssertionError("final epoch was not checkpointed")
    return _finish(job, carry, used_devices, clock)


def _progress_bar(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=disable,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _train_epoch(job: Job, carry: Carry, bar) -> tuple[dict[str, Any], int | None]:
    """One epoch of train steps, then validation; the epoch's record and the devices used."""
    runner, fit = job.runner, job.data.fit
    t_epoch = time.perf_counter()
    stats, used_devices = [], None
    for x, lengths, y, w in runner.epoch_batches(fit, carry.meta.epoch):
        if used_devices is None:
            used_devices = len(x.sharding.device_set)
        carry.state, s = runner.train_step(carry.state, x, lengths, y, w)
        stats.append(s)
        bar.update(1)
    # (loss sum, correct, count) summed over the steps; asarray: numpy types the sum a scalar
    total = np.asarray(np.sum(np.stack(jax.device_get(stats)), axis=0, dtype=np.float64))
    epoch = carry.meta.epoch + 1
    record = {
        "epoch": epoch,
        "train_loss": float(total[0] / total[2]),
        "train_accuracy": float(total[1] / total[2]),
        # optax types a schedule's value ArrayLike (complex included): read it as an array
        "lr": float(np.asarray(runner.schedule(epoch * runner.steps_per_epoch - 1))),
    }
    _validate(job, carry, record)
    record["time_s"] = time.perf_counter() - t_epoch
    return record, used_devices


def _validate(job: Job, carry: Carry, record: dict[str, Any]) -> None:
    """Add the validation figures to ``record``; keep the parameters if they are the best."""
    meta = carry.meta
    improved = True
    if len(job.data.val):
        v = job.runner.evaluate(carry.state["params"], job.data.val)
        record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        improved = meta.best_val_loss is None or v["loss"] < meta.best_val_loss
    if improved:
        carry.best_params = carry.state["params"]
        meta.best_epoch = record["epoch"]
        meta.best_val_loss = record.get("val_loss")
        meta.bad_epochs = 0
    else:
        meta.bad_epochs += 1


def _end_epoch(job: Job, meta: Meta, record: dict[str, Any], stop_after: int | None) -> bool:
    """Record the epoch and decide whether the run is done; True if ``stop_after`` stops it."""
    config = job.runner.config
    meta.history.append(record)
    meta.epoch = record["epoch"]
    if meta.bad_epochs >= config.patience:
        meta.stopped_early = True
    meta.done = meta.stopped_early or meta.epoch >= job.runner.epochs
    return stop_after is not None and meta.epoch >= stop_after


def _show(bar, record: dict[str, Any]) -> None:
    postfix = {"epoch": record["epoch"], "loss": f"{record['train_loss']:.3f}"}
    postfix["acc"] = f"{record['train_accuracy']:.3f}"
    if "val_accuracy" in record:
        postfix["val_acc"] = f"{record['val_accuracy']:.3f}"
    bar.set_postfix(postfix, refresh=False)


def _finish(job: Job, carry: Carry, used_devices: int | None, clock: _Clock) -> TrainResult:
    """Test the selected parameters; write ``metrics.json`` and the plots (process 0)."""
    runner, test, meta = job.runner, job.data.test, carry.meta
    final = runner.evaluate(carry.best_params, test)
    wall = clock.elapsed_before + (time.perf_counter() - clock.t_start)
    confusion = np.zeros((runner.num_classes, runner.num_classes), np.int64)
    np.add.at(confusion, (test.y, final["pred"]), 1)
    devices = runner.devices.count if used_devices is None else used_devices
    metrics = _metrics(job, meta, final, confusion, wall, devices)
    if jax.process_index() == 0:
        classes = job.data.info["classes"]
        write_json(job.out / METRICS_FILE, metrics)
        plot_learning_curves(meta.history, meta.best_epoch, job.out / "learning_curves.png")
        plot_confusion(confusion, classes, final["accuracy"], job.out / "confusion_matrix.png")
    return TrainResult(job.out, metrics, carry.best_params, carry.state, finished=True)


def _metrics(
    job: Job, meta: Meta, final: dict, confusion: np.ndarray, wall: float, used_devices: int
) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    runner, info = job.runner, job.data.info
    best = meta.history[meta.best_epoch - 1] if meta.best_epoch else {}
    return {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_correct": final["correct"],
        "n_test": len(job.data.test),
        "best_epoch": meta.best_epoch,
        "best_val_loss": best.get("val_loss"),
        "best_val_accuracy": best.get("val_accuracy"),
        "epochs_run": meta.epoch,
        "stopped_early": meta.stopped_early,
        "wall_time_s": wall,
        "device_count": runner.devices.count,
        "devices_used": used_devices,
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in runner.devices.mesh.devices.flat],
        "seed": runner.config.seed,
        "config": runner.config.to_dict(),
        "data": {k: v for k, v in info.items() if k not in ("mean", "std")},
        "classes": info["classes"],
        "confusion_matrix": confusion.tolist(),
        "history": meta.history,
    }

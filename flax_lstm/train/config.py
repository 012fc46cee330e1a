"""`TrainConfig`: every setting that determines a training run, and its validation.

Each field carries its documentation as metadata (``help``, and for the command line a
``group`` and a ``metavar``): the class docstring's argument list and the ``flax-lstm train``
flags are both built from it, so a new field is one edit here. A setting derived from the data
when unset states its rule with the numbers of `flax_lstm.train.derive`, formatted in.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path
from typing import Any

from flax_lstm.train import derive

__all__ = ["POOLINGS", "TrainConfig", "TrainError", "resolve_paths"]

POOLINGS = ("mean", "last", "mean+last")


class TrainError(Exception):
    """A training or evaluation run cannot go on (the message says why, in one line)."""


def _setting(default: Any, help: str, *, group: str, metavar: str | None = None, **extra: Any):
    """A `TrainConfig` field: its default and the metadata its docstring and flag are made of.

    ``extra`` may hold ``choices`` and ``default_help`` (the flag's default, said in words).
    """
    meta = {"help": help, "group": group, "metavar": metavar, **extra}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so its result, given the data)."""

    train: str | None = _setting(
        None,
        "a .ts or .npz training file",
        group="data",
        metavar="PATH",
        default_help="the bundled Japanese Vowels training data",
    )
    test: str | None = _setting(
        None,
        "the matching .ts or .npz test file (required with train)",
        group="data",
        metavar="PATH",
        default_help="the bundled Japanese Vowels test data",
    )
    epochs: int | None = _setting(
        None,
        "the most epochs to train; early stopping may end sooner",
        group="opt",
        metavar="N",
        default_help=f"enough epochs to show the model {derive.SERIES_BUDGET:,} training series, "
        f"and at least {derive.MIN_EPOCHS}",
    )
    hidden_size: int = _setting(32, "LSTM hidden size per direction", group="model", metavar="H")
    num_layers: int = _setting(1, "stacked LSTM layers", group="model", metavar="L")
    bidirectional: bool = _setting(True, "run a reverse direction too", group="model")
    dropout: float = _setting(
        0.3,
        "dropout rate on the pooled features before the head, and (torch semantics) between "
        "LSTM layers when num_layers > 1",
        group="model",
        metavar="P",
    )
    lr: float = _setting(
        3e-3, "peak learning rate of the warmup + cosine schedule", group="opt", metavar="LR"
    )
    batch_size: int | None = _setting(
        None,
        "series per optimizer step (over all devices together)",
        group="opt",
        metavar="B",
        default_help=f"1/{derive.BATCHES_PER_EPOCH} of the fit examples, clipped to "
        f"[{derive.MIN_BATCH_SIZE}, {derive.MAX_BATCH_SIZE}], so that small data sets still get "
        f"{derive.BATCHES_PER_EPOCH} steps an epoch",
    )
    seed: int = _setting(
        0,
        "seeds the validation split, initialisation, data order and dropout",
        group="opt",
        metavar="S",
    )
    weight_decay: float = _setting(
        1e-4, "AdamW's decoupled weight decay (not applied to biases)", group="opt", metavar="WD"
    )
    clip_norm: float = _setting(
        1.0, "gradients are clipped to this global norm", group="opt", metavar="C"
    )
    warmup: float = _setting(
        0.05,
        "fraction of the step budget spent warming the learning rate up from 0",
        group="opt",
        metavar="F",
    )
    val_fraction: float | None = _setting(
        None,
        "fraction of each class of the training data held out for validation (early stopping, "
        "choice of the best epoch); 0 trains on everything for epochs",
        group="opt",
        metavar="F",
        default_help=f"{derive.VAL_FRACTION:g} when that holds out at least "
        f"{derive.MIN_VALIDATION} series, else 0: a smaller validation set chose worse epochs "
        "than none",
    )
    patience: int = _setting(
        30, "stop after this many epochs without a better validation loss", group="opt", metavar="N"
    )
    pooling: str = _setting(
        "mean+last",
        "what the head sees: 'mean' (masked mean of the outputs over each series' valid steps), "
        "'last' (final hidden state of each direction) or 'mean+last' (both, concatenated)",
        group="model",
        choices=POOLINGS,
    )
    input_noise: float = _setting(
        0.3,
        "standard deviation of Gaussian noise added to the (normalised) inputs during "
        "training; 0 disables it",
        group="opt",
        metavar="SIGMA",
    )
    patch: int | None = _setting(
        None,
        "steps per patch: each run of this many consecutive steps becomes one LSTM step whose "
        "input is the patch's values (channels x steps), shortening the recurrence",
        group="model",
        metavar="P",
        default_help=f"1 when the longest series has at most {derive.MAX_UNPATCHED} steps, else "
        f"the fewest steps that cut it to at most {derive.TARGET_STEPS} patches",
    )
    length_buckets: int | None = _setting(
        None,
        "training batches are drawn from series of similar length (each run of K batches of "
        "the shuffled order is sorted by length) and padded to the shortest of K lengths "
        "(quantiles of the training lengths) that holds them; 1 pads every batch to the "
        "longest series. Each length compiles its own train step once",
        group="opt",
        metavar="K",
        default_help=f"{derive.LENGTH_BUCKETS} when the LSTM runs over more than "
        f"{derive.MAX_UNPATCHED} steps (after patching) and the mean length is under "
        f"{derive.RAGGED:g} of the longest, else 1: over shorter recurrences the compilations "
        "cost more than the epochs gain",
    )
    members: int = _setting(
        8,
        "train this many independently initialised LSTM + head models side by side (one "
        "vmapped model, the same batches) and average their predicted probabilities",
        group="model",
        metavar="K",
    )

    def validate(self) -> TrainConfig:
        """Check every field; raise `TrainError` naming the first bad one. Returns self."""
        if (self.train is None) != (self.test is None):
            raise TrainError("give both --train and --test, or neither for the bundled data")
        derivable = ("epochs", "batch_size", "patch", "length_buckets")  # None: derived
        for name in ("hidden_size", "num_layers", "patience", "members", *derivable):
            value = getattr(self, name)
            if name in derivable and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise TrainError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.input_noise, (int, float)) or not self.input_noise >= 0:
            raise TrainError(f"input_noise must be >= 0, got {self.input_noise!r}")
        for name in ("dropout", "warmup", "val_fraction"):
            value = getattr(self, name)
            if name == "val_fraction" and value is None:
                continue
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise TrainError(f"{name} must lie in [0, 1), got {value!r}")
        for name in ("lr", "clip_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TrainError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise TrainError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.pooling not in POOLINGS:
            raise TrainError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainError(f"unknown training settings {unknown}")
        return cls(**values)

    def differences(self, other: TrainConfig) -> list[str]:
        """``name=value (run has other_value)`` for every field that differs from ``other``."""
        return [
            f"{f.name}={getattr(self, f.name)!r} (run has {getattr(other, f.name)!r})"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _document(cls: type) -> None:
    """Append an ``Args:`` section made of each field's ``help`` to ``cls.__doc__``."""
    lines = ["", "", "    Args:"]
    for f in dataclasses.fields(cls):
        default = f.metadata.get("default_help", repr(f.default))
        text = f"{f.name}: {f.metadata['help']} (default: {default})."
        lines.append(textwrap.fill(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 8))
    cls.__doc__ = (cls.__doc__ or "") + "\n".join(lines) + "\n    "


_document(TrainConfig)


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with absolute data paths (a run folder must not depend on the cwd)."""
    if config.train is None or config.test is None:  # both or neither (__post_init__)
        return config
    return dataclasses.replace(
        config, train=str(Path(config.train).absolute()), test=str(Path(config.test).absolute())
    )

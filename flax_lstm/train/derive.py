"""The settings a run derives from its data when they are left unset (``None``).

Every rule here is a function of the data's shape (the number of training series, their
lengths), never of its name. `derive` is the one place that applies them: `prepare` stores the
result in the run's data description, so ``config.json`` and ``metrics.json`` record it under
``"derived"``. The numbers of the rules are the constants below, stated once: each field's
``--help`` text (`flax_lstm.train.config`) is formatted from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # config.py formats its help text from the constants here
    from flax_lstm.train.config import TrainConfig

__all__ = [
    "BATCHES_PER_EPOCH",
    "LENGTH_BUCKETS",
    "MAX_BATCH_SIZE",
    "MAX_UNPATCHED",
    "MIN_BATCH_SIZE",
    "MIN_EPOCHS",
    "MIN_VALIDATION",
    "RAGGED",
    "SERIES_BUDGET",
    "TARGET_STEPS",
    "VAL_FRACTION",
    "derive",
    "derived_of",
]

MAX_UNPATCHED = 40
"""Series of at most this many steps run step by step (the derived ``patch`` is 1)."""

TARGET_STEPS = 20
"""Longer series are cut into patches so that the longest becomes at most this many steps."""

VAL_FRACTION = 0.1
"""The share of the training series held out for validation when there are enough of them."""

MIN_VALIDATION = 50
"""Fewer validation series than this pick epochs badly: below it, nothing is held out."""

SERIES_BUDGET = 15_000
"""The derived ``epochs`` show the model at least this many training series."""

MIN_EPOCHS = 100
"""The fewest derived ``epochs``."""

BATCHES_PER_EPOCH = 6
"""The derived ``batch_size`` is the fit examples over this (steps an epoch), clipped below."""

MIN_BATCH_SIZE = 4
"""The smallest derived ``batch_size``."""

MAX_BATCH_SIZE = 32
"""The largest derived ``batch_size``."""

LENGTH_BUCKETS = 4
"""Length buckets of long, ragged recurrences (`length_buckets_for`)."""

RAGGED = 0.75
"""Series are ragged when their mean length is under this fraction of the longest."""


def patch_for(max_length: int) -> int:
    """1 up to `MAX_UNPATCHED` steps; else the fewest steps per patch that cut the longest
    series to at most `TARGET_STEPS` LSTM steps."""
    return 1 if max_length <= MAX_UNPATCHED else -(-max_length // TARGET_STEPS)


def val_fraction_for(n_train: int) -> float:
    """`VAL_FRACTION` if that holds out at least `MIN_VALIDATION` series, else 0."""
    return VAL_FRACTION if round(VAL_FRACTION * n_train) >= MIN_VALIDATION else 0.0


def batch_size_for(n_fit: int) -> int:
    """The fit examples over `BATCHES_PER_EPOCH`, clipped to [`MIN_BATCH_SIZE`,
    `MAX_BATCH_SIZE`]: small sets still get that many steps an epoch."""
    return min(MAX_BATCH_SIZE, max(MIN_BATCH_SIZE, n_fit // BATCHES_PER_EPOCH))


def epochs_for(n_fit: int) -> int:
    """Enough epochs to show the model `SERIES_BUDGET` series, and at least `MIN_EPOCHS`."""
    return max(MIN_EPOCHS, -(-SERIES_BUDGET // n_fit))


def split_fraction(config: TrainConfig, n_train: int) -> float:
    """The validation fraction of a run: the config's, else `val_fraction_for`."""
    return val_fraction_for(n_train) if config.val_fraction is None else config.val_fraction


def length_buckets_for(fit_lengths: np.ndarray, patch: int) -> int:
    """`LENGTH_BUCKETS` when the LSTM runs over more than `MAX_UNPATCHED` steps and the series
    are ragged (the mean length under `RAGGED` of the longest); else 1.

    Each padded length compiles a train step of its own (seconds); over a short recurrence
    the epochs gain less than that (measured in ``docs/performance/learning.md``).
    """
    steps = -(-int(fit_lengths.max()) // patch)
    ragged = fit_lengths.mean() < RAGGED * fit_lengths.max()
    return LENGTH_BUCKETS if steps > MAX_UNPATCHED and ragged else 1


def derive(
    config: TrainConfig, *, n_train: int, n_fit: int, max_length: int, fit_lengths: np.ndarray
) -> dict[str, Any]:
    """``{"val_fraction", "batch_size", "epochs", "patch", "length_buckets"}`` of a run.

    ``fit_lengths``: the lengths of the series the run trains on.

    Each is the config's value where it is set, else the rule of the data's shape above.
    """
    batch_size = config.batch_size or batch_size_for(n_fit)
    patch = config.patch or patch_for(max_length)
    return {
        "val_fraction": split_fraction(config, n_train),
        "batch_size": batch_size,
        "epochs": config.epochs or epochs_for(n_fit),
        "patch": patch,
        "length_buckets": config.length_buckets or length_buckets_for(fit_lengths, patch),
    }


def derived_of(info: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """The derived settings in a run's data description (older run folders: the old rules)."""
    if "derived" in info:
        return info["derived"]
    return {
        "val_fraction": config.val_fraction,
        "batch_size": info["batch_size"],
        "epochs": config.epochs,
        "patch": 1,
        "length_buckets": 1,
    }

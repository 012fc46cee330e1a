"""The input pipeline: read the data, split, normalise, encode labels, pad; each epoch's batches.

Everything here is NumPy on the host and derives from the data and ``(seed, epoch)`` alone:
the validation split, the normalisation statistics (fit examples only), each epoch's order and
its batches with their padded lengths (length buckets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, NamedTuple

import numpy as np

from flax_lstm import data as fdata
from flax_lstm.train.config import TrainConfig, TrainError
from flax_lstm.train.derive import derive, split_fraction

__all__ = [
    "Prepared",
    "RunData",
    "bucket_steps",
    "encode",
    "encode_test",
    "epoch_batches",
    "epoch_order",
    "padded",
    "prepare",
    "split",
]


@dataclasses.dataclass(frozen=True)
class RunData:
    """Normalised, label-encoded arrays ready for the model (padded to ``max_length``)."""

    x: np.ndarray  # (N, T, C) float32
    lengths: np.ndarray  # (N,) int32
    y: np.ndarray  # (N,) int32 class indices

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray) -> RunData:
        return RunData(self.x[idx], self.lengths[idx], self.y[idx])


class Prepared(NamedTuple):
    """What `prepare` derives from the data: the run's data description and the three splits.

    ``info`` is what ``config.json`` stores under ``"data"``: sources, fingerprint, classes,
    shapes, the settings derived from them (`flax_lstm.train.derive`), the evaluation batch size
    and the normalisation statistics.
    """

    info: dict[str, Any]
    fit: RunData
    val: RunData
    test: RunData


def _label_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _classes(ds: fdata.SequenceDataset) -> list[str]:
    """Class names in natural order (numbers by value, then strings)."""
    return sorted(set(ds.y.tolist()), key=_label_key)


def split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) indices; every class keeps at least one fit example.

    ``round(fraction * N)`` examples go to validation, shared among the classes in proportion
    to their sizes (largest remainders first, so small classes still contribute).
    """
    rng = np.random.default_rng([seed, 0])
    classes, counts = np.unique(y, return_counts=True)
    exact = fraction * counts
    k = np.floor(exact).astype(np.int64)
    rest = round(fraction * y.size) - int(k.sum())
    if rest > 0:
        order = np.lexsort((rng.random(classes.size), -(exact - k)))
        k[order[:rest]] += 1
    k = np.minimum(k, counts - 1)
    fit, val = [], []
    for c, kc in zip(classes, k, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.extend(idx[:kc])
        fit.extend(idx[kc:])
    return np.sort(np.array(fit, np.int64)), np.sort(np.array(val, np.int64))


def _norm_stats(ds: fdata.SequenceDataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the valid (non-missing) steps of the series ``idx``."""
    x = ds.x[idx].astype(np.float64)
    valid = np.arange(x.shape[1])[None, :] < ds.lengths[idx][:, None]
    values = np.where(valid[:, :, None], x, np.nan).reshape(-1, x.shape[2])
    count = (~np.isnan(values)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
        var = np.nansum((values - mean) ** 2, axis=0) / np.maximum(count, 1)
    std = np.sqrt(var)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, std


def encode(
    ds: fdata.SequenceDataset,
    classes: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    max_length: int,
    what: str,
) -> RunData:
    """Normalise ``ds`` with the training statistics and map its labels to class indices."""
    if ds.num_channels != len(mean):
        raise TrainError(
            f"{what} data ({ds.name}) has {ds.num_channels} channels but the training data has "
            f"{len(mean)}"
        )
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(ds.y.tolist()) - set(index), key=_label_key)
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
        raise TrainError(
            f"{what} data ({ds.name}) has labels that training never saw: {shown} "
            f"(training classes: {', '.join(classes[:20])})"
        )
    n, t = len(ds), max(max_length, ds.max_length)
    x = np.zeros((n, t, ds.num_channels), np.float32)
    valid = np.arange(ds.max_length)[None, :, None] < ds.lengths[:, None, None]
    z = (ds.x.astype(np.float64) - mean) / std
    z = np.where(valid & ~np.isnan(z), z, 0.0)  # missing values → the training mean
    x[:, : ds.max_length] = z
    y = np.array([index[v] for v in ds.y.tolist()], np.int32)
    return RunData(x, ds.lengths.astype(np.int32), y)


def _load_sources(config: TrainConfig) -> tuple[fdata.SequenceDataset, fdata.SequenceDataset]:
    if config.train is None or config.test is None:  # both or neither (__post_init__)
        return fdata.load_japanese_vowels()
    return fdata.read_dataset(config.train), fdata.read_dataset(config.test)


def _fingerprint(*datasets: fdata.SequenceDataset) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        for a in (ds.x, ds.lengths, ds.y.astype(str)):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _describe_source(path: str | None, split: str) -> str:
    return f"{fdata.JAPANESE_VOWELS}/{split} (bundled)" if path is None else path


def prepare(config: TrainConfig) -> Prepared:
    """Read the data and derive the split, classes and normalisation (all before any file)."""
    train_ds, test_ds = _load_sources(config)
    classes = _classes(train_ds)
    if len(classes) < 2:
        raise TrainError(f"training data ({train_ds.name}) has a single class {classes}")
    y_all = np.array([classes.index(v) for v in train_ds.y.tolist()])
    fit_idx, val_idx = split(y_all, split_fraction(config, y_all.size), config.seed)
    mean, std = _norm_stats(train_ds, fit_idx)
    max_length = max(train_ds.max_length, test_ds.max_length)
    train_all = encode(train_ds, classes, mean, std, max_length, "training")
    test = encode(test_ds, classes, mean, std, max_length, "test")
    fit_lengths = train_all.lengths[fit_idx]
    derived = derive(
        config,
        n_train=len(train_ds),
        n_fit=int(fit_idx.size),
        max_length=max_length,
        fit_lengths=fit_lengths,
    )
    info = {
        "train": _describe_source(config.train, "train"),
        "test": _describe_source(config.test, "test"),
        "fingerprint": _fingerprint(train_ds, test_ds),
        "classes": classes,
        "num_channels": train_ds.num_channels,
        "max_length": max_length,
        "n_train": len(train_ds),
        "n_fit": int(fit_idx.size),
        "n_val": int(val_idx.size),
        "n_test": len(test_ds),
        "derived": derived,
        "bucket_steps": bucket_steps(
            fit_lengths, derived["length_buckets"], derived["patch"], max_length
        ),
        # One evaluation shape for validation (every epoch) and test: sized to the validation
        # set so that the per-epoch check wastes little on padding rows.
        "eval_batch_size": int(min(256, val_idx.size or len(test_ds))),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    return Prepared(info, train_all.take(fit_idx), train_all.take(val_idx), test)


def encode_test(
    info: dict[str, Any], test: str | os.PathLike | None, config: TrainConfig
) -> tuple[RunData, str]:
    """A run's test data (``test``, else the run's own), encoded as at training; and its name."""
    if test is not None:
        test_ds, source = fdata.read_dataset(test), str(test)
    elif config.test is None:
        test_ds, source = fdata.load_japanese_vowels()[1], info["test"]
    else:
        test_ds, source = fdata.read_dataset(config.test), config.test
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    return encode(test_ds, info["classes"], mean, std, info["max_length"], "test"), source


def padded(
    data: RunData, idx: np.ndarray, rows: int, steps: int | None = None
) -> tuple[np.ndarray, ...]:
    """Rows ``idx`` of ``data`` padded to ``rows`` with copies of a real row of weight 0.

    ``steps``: keep only the first ``steps`` time steps (at least the longest of ``idx``).
    """
    m = idx.size
    full = np.concatenate([idx, np.full(rows - m, idx[0] if m else 0, idx.dtype)])
    w = (np.arange(rows) < m).astype(np.float32)
    return data.x[full, :steps], data.lengths[full], data.y[full], w


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` fit examples in ``epoch`` (0-based)."""
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def bucket_steps(lengths: np.ndarray, buckets: int, patch: int, max_steps: int) -> list[int]:
    """The padded lengths of a run's training batches, shortest first; the last is ``max_steps``.

    ``buckets`` equal-count quantiles of the fit series' ``lengths``, each rounded up to whole
    patches (duplicates merged, so there may be fewer).
    """
    qs = np.quantile(lengths, np.arange(1, buckets) / buckets, method="higher")
    steps = {min(max_steps, -(-int(q) // patch) * patch) for q in qs}
    return sorted(steps | {max_steps})


def epoch_batches(
    seed: int, epoch: int, lengths: np.ndarray, batch_size: int, steps: list[int]
) -> list[tuple[np.ndarray, int]]:
    """``(indices, padded steps)`` of each training batch of ``epoch``, in order.

    One bucket (``steps`` of one length): consecutive ``batch_size`` runs of `epoch_order`.
    K buckets: each run of K batches of that order (at most half the epoch, so that batches
    mix anew each epoch) is sorted by length before it is cut into batches, the batches are
    shuffled, and each is padded to the shortest of ``steps`` that holds its longest series.
    Either way every series comes once an epoch, and the order depends on ``(seed, epoch)``.
    """
    order = epoch_order(seed, epoch, lengths.size)
    if len(steps) > 1:
        n_batches = -(-lengths.size // batch_size)
        pool = max(1, min(len(steps), n_batches // 2)) * batch_size
        pools = [order[s : s + pool] for s in range(0, order.size, pool)]
        order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in pools])
    batches = [order[s : s + batch_size] for s in range(0, order.size, batch_size)]
    if len(steps) > 1:
        shuffle = np.random.default_rng([seed, 2, epoch]).permutation(len(batches))
        batches = [batches[i] for i in shuffle]
    bounds = np.asarray(steps)
    return [(idx, int(bounds[np.searchsorted(bounds, lengths[idx].max())])) for idx in batches]

"""`SequenceDataset`, the one type every reader returns; `DataError`; `canonical_label`.

A reader hands its series to `SequenceDataset.from_series` or its padded arrays to
`checked_dataset`, which trims trailing all-missing steps and checks lengths, values and labels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["DataError", "SequenceDataset", "canonical_label", "checked_dataset"]


class DataError(ValueError):
    """A data file is missing, unreadable or malformed (the message says which and why)."""


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceDataset:
    """Labelled multivariate series of possibly different lengths, padded to a common length.

    Attributes:
      x: ``(N, T, C)`` float32, T the longest series; zero past each series' length (NaN
        inside a series marks a missing value).
      lengths: ``(N,)`` int64, every length in ``[1, T]``.
      y: ``(N,)`` class labels as canonical strings (see `canonical_label`).
      name: where the data came from (a file path or a bundled data set's name).
      class_names: the labels a ``.ts`` header declares with ``@classLabel``, if any.

    Example:
      >>> import numpy as np
      >>> from flax_lstm.data import SequenceDataset
      >>> ds = SequenceDataset.from_series([np.ones((3, 2)), np.zeros((5, 2))], ["a", "b"])
      >>> ds.x.shape, ds.lengths.tolist(), ds.y.tolist()
      ((2, 5, 2), [3, 5], ['a', 'b'])
    """

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    name: str = ""
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_channels(self) -> int:
        """C: the number of channels (dimensions) per time step."""
        return int(self.x.shape[2])

    @property
    def max_length(self) -> int:
        """T: the length of the longest series."""
        return int(self.x.shape[1])

    @classmethod
    def from_series(
        cls,
        series: Sequence[np.ndarray],
        labels: Iterable[object],
        name: str = "",
        class_names: Sequence[str] | None = None,
    ) -> SequenceDataset:
        """Pad a list of ``(T_i, C)`` arrays (or ``(T_i,)`` univariate) into a dataset."""
        arrays = [np.asarray(s, dtype=np.float32) for s in series]
        arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
        y = np.array([canonical_label(v) for v in labels], dtype=str)
        if not arrays:
            raise DataError(f"{name or 'dataset'}: contains no series")
        if len(arrays) != len(y):
            raise DataError(f"{name}: {len(arrays)} series but {len(y)} labels")
        channels = {a.shape[1] for a in arrays}
        if len(channels) != 1:
            raise DataError(f"{name}: series have different numbers of channels {sorted(channels)}")
        t_max = max(a.shape[0] for a in arrays)
        x = np.zeros((len(arrays), t_max, channels.pop()), np.float32)
        lengths = np.zeros(len(arrays), np.int64)
        for i, a in enumerate(arrays):
            x[i, : a.shape[0]] = a
            lengths[i] = a.shape[0]
        names = tuple(canonical_label(c) for c in class_names) if class_names else None
        return checked_dataset(x, lengths, y, name, names)


def canonical_label(value: object) -> str:
    """A class label as a string; numbers in one canonical form, so ``1``, ``1.0``, ``"01"`` match.

    Example:
      >>> from flax_lstm.data import canonical_label
      >>> canonical_label(3), canonical_label("3.0"), canonical_label(0.5), canonical_label(" a ")
      ('3', '3', '0.5', 'a')
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number.is_integer():
        return str(int(number))
    return repr(number)


def checked_dataset(x, lengths, y, name, class_names) -> SequenceDataset:
    """The dataset of padded ``x``: trailing all-missing steps trimmed from ``lengths``, values
    and labels checked, the padding zeroed."""
    if not np.isfinite(x[~np.isnan(x)]).all():
        raise DataError(f"{name}: contains infinite values")
    present = ~np.isnan(x).all(axis=2)  # (N, T): some channel has a value at this step
    t = np.arange(x.shape[1])[None, :]
    present &= t < lengths[:, None]
    last = np.where(present.any(axis=1), x.shape[1] - np.argmax(present[:, ::-1], axis=1), 0)
    lengths = np.minimum(lengths, last).astype(np.int64)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(
            f"{name}: series {empty[0]} (0-based) is empty or has only missing values"
            + (f" ({empty.size} such series)" if empty.size > 1 else "")
        )
    t_max = int(lengths.max())
    x = np.where(t[:, :t_max, None] < lengths[:, None, None], x[:, :t_max], 0).astype(np.float32)
    if class_names is not None:
        unknown = sorted(set(y.tolist()) - set(class_names))
        if unknown:
            raise DataError(
                f"{name}: labels {unknown[:5]} are not among the declared class labels "
                f"{list(class_names)[:20]}"
            )
    return SequenceDataset(x=x, lengths=lengths, y=y, name=name, class_names=class_names)

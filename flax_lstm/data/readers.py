"""Readers for sequence-classification files: UEA/UCR ``.ts`` and ``.npz``.

Both return a `SequenceDataset`: a zero-padded ``(N, T, C)`` float32 array, the true length of
every series, and the class labels as canonical strings. Variable-length series keep their
lengths (they are never truncated); the model consumes them through ``seq_lengths``.

Missing values (``?`` or ``NaN`` in a ``.ts`` file, NaN in an ``.npz``) are kept as NaN inside
a series; trailing steps that are missing in every channel are dropped from its length (the
UCR archive pads its variable-length sets that way). Every problem with a file raises
`DataError` with a one-line message naming the file (and the line, for ``.ts``).

This module chooses the reader by suffix (`read_dataset`) and keeps every reader's import path;
the readers live in `flax_lstm.data.ts` and `flax_lstm.data.npz`, the dataset type and its
checks in `flax_lstm.data.dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from flax_lstm.data.dataset import DataError, SequenceDataset, canonical_label
from flax_lstm.data.npz import read_npz
from flax_lstm.data.ts import read_ts, write_ts

__all__ = [
    "DataError",
    "SequenceDataset",
    "canonical_label",
    "read_dataset",
    "read_npz",
    "read_ts",
    "write_ts",
]


def read_dataset(path: str | os.PathLike) -> SequenceDataset:
    """Read a ``.ts`` or ``.npz`` file, chosen by its suffix (see `read_ts`, `read_npz`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ts":
        return read_ts(path)
    if suffix == ".npz":
        return read_npz(path)
    if not Path(path).exists():
        raise DataError(f"{path}: no such file")
    raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; expected .ts or .npz")

"""`read_npz`: a dataset from an ``.npz`` with arrays ``x``, ``y`` and optionally ``lengths``."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from flax_lstm.data.dataset import DataError, SequenceDataset, canonical_label, checked_dataset

__all__ = ["read_npz"]


def read_npz(path: str | os.PathLike) -> SequenceDataset:
    """Read an ``.npz`` with arrays ``x``, ``y`` and optionally ``lengths``.

    Args:
      path: an ``.npz`` file (``numpy.savez``) holding ``x``: ``(N, T, C)``, or ``(N, T)`` for
        univariate series; ``y``: ``(N,)`` numeric or string labels; ``lengths``: optional
        ``(N,)`` integers in ``[1, T]`` (default: T, less any trailing all-NaN steps).

    Returns:
      A `SequenceDataset`.

    Raises:
      DataError: the file is missing, not an npz archive, lacks ``x`` or ``y``, or has arrays
        of the wrong rank, type, or size.

    Example:
      >>> import tempfile, os, numpy as np
      >>> from flax_lstm.data import read_npz
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = os.path.join(d, "demo.npz")
      ...     np.savez(path, x=np.ones((2, 4, 3)), y=np.array(["a", "b"]), lengths=[4, 2])
      ...     ds = read_npz(path)
      >>> ds.x.shape, ds.lengths.tolist(), ds.x[1, 2:].sum()
      ((2, 4, 3), [4, 2], np.float32(0.0))
    """
    path = str(path)
    try:
        if os.path.isfile(path) and not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a valid .npz file (not a zip archive)")
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {missing}; an .npz needs x (N, T[, C]), y (N,) "
                    f"and optionally lengths (N,); it has {sorted(archive.files)}"
                )
            x = archive["x"]
            y = archive["y"]
            lengths = archive["lengths"] if "lengths" in archive.files else None
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(
                f"{path}: arrays must be numbers or strings, not Python objects"
            ) from None
        raise DataError(f"{path}: not a valid .npz file ({str(e).splitlines()[0][:80]})") from None

    if x.dtype.kind not in "fiu" or x.ndim not in (2, 3):
        raise DataError(
            f"{path}: x must be a numeric array of shape (N, T, C) or (N, T), got dtype "
            f"{x.dtype} shape {x.shape}"
        )
    if x.ndim == 2:
        x = x[:, :, None]
    n, t = x.shape[0], x.shape[1]
    if n == 0 or t == 0 or x.shape[2] == 0:
        raise DataError(f"{path}: x is empty (shape {x.shape})")
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{path}: y must have shape ({n},) to match x, got {y.shape}")
    if y.dtype.kind not in "fiuUSb":
        raise DataError(f"{path}: y must hold numbers or strings, got dtype {y.dtype}")
    if lengths is None:
        lengths = np.full(n, t, np.int64)
    else:
        if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
            raise DataError(
                f"{path}: lengths must be integers of shape ({n},), got dtype {lengths.dtype} "
                f"shape {lengths.shape}"
            )
        if lengths.min() < 1 or lengths.max() > t:
            raise DataError(
                f"{path}: lengths must lie in [1, {t}] (x's time axis), got values in "
                f"[{lengths.min()}, {lengths.max()}]"
            )
        lengths = lengths.astype(np.int64)
    labels = np.array([canonical_label(v) for v in y.tolist()], dtype=str)
    return checked_dataset(x.astype(np.float32), lengths, labels, path, None)

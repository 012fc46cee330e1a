"""Readers for sequence-classification files: UEA/UCR ``.ts`` and ``.npz``.

Both return a `SequenceDataset`: a zero-padded ``(N, T, C)`` float32 array, the true length of
every series, and the class labels as canonical strings. Variable-length series keep their
lengths (they are never truncated); the model consumes them through ``seq_lengths``.

Missing values (``?`` or ``NaN`` in a ``.ts`` file, NaN in an ``.npz``) are kept as NaN inside
a series; trailing steps that are missing in every channel are dropped from its length (the
UCR archive pads its variable-length sets that way). Every problem with a file raises
`DataError` with a one-line message naming the file (and the line, for ``.ts``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "SequenceDataset",
    "canonical_label",
    "read_dataset",
    "read_npz",
    "read_ts",
    "write_ts",
]


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
        return _finish(x, lengths, y, name, names)


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


def _finish(x, lengths, y, name, class_names) -> SequenceDataset:
    """Trim trailing all-missing steps, check lengths and values, zero the padding."""
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


# --------------------------------------------------------------------------- .ts

_BOOL_KEYS = ("timestamps", "missing", "univariate", "equallength")


def _parse_bool(path: str, lineno: int, key: str, tokens: list[str]) -> bool:
    if len(tokens) != 2 or tokens[1].lower() not in ("true", "false"):
        raise DataError(f"{path}:{lineno}: @{key} needs the value true or false")
    return tokens[1].lower() == "true"


def _parse_values(path: str, lineno: int, case: int, text: str) -> np.ndarray:
    text = text.strip()
    if not text:
        raise DataError(f"{path}:{lineno}: case {case} has an empty dimension")
    tokens = [tok.strip() for tok in text.split(",")]
    try:
        return np.array([math.nan if tok in ("?", "") else float(tok) for tok in tokens])
    except ValueError:
        bad = next(tok for tok in tokens if not _is_number(tok))
        raise DataError(
            f"{path}:{lineno}: case {case}: cannot read {bad[:40]!r} as a number"
        ) from None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return token in ("?", "")
    return True


def read_ts(path: str | os.PathLike) -> SequenceDataset:
    """Read a UEA/UCR ``.ts`` classification file (sktime/aeon format).

    Supports univariate and multivariate files, equal and variable lengths, missing values
    (``?``/``NaN``) and numeric or string class labels. Header keys are case-insensitive;
    lines starting with ``#`` or ``%`` are comments. Timestamped files (``@timeStamps true``)
    and regression files (``@targetLabel``) are rejected with `DataError`.

    Args:
      path: the ``.ts`` file.

    Returns:
      A `SequenceDataset`; each case's dimensions become its channels, its last
      ``:``-separated field its label.

    Raises:
      DataError: the file is missing or unreadable, has no ``@data``, declares no class
        labels, has cases with a different number of dimensions than the others (or than
        ``@dimensions``), dimensions of different lengths within a case, a length other than
        ``@seriesLength`` in an equal-length file, a value that is not a number, or a label
        that ``@classLabel`` does not declare.

    Example:
      >>> import tempfile, os
      >>> from flax_lstm.data import read_ts
      >>> text = "@classLabel true cat dog\\n@data\\n1,2,3:4,5,6:cat\\n7,8:9,1:dog\\n"
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = os.path.join(d, "demo.ts")
      ...     _ = open(path, "w").write(text)
      ...     ds = read_ts(path)
      >>> ds.x.shape, ds.lengths.tolist(), ds.y.tolist()
      ((2, 3, 2), [3, 2], ['cat', 'dog'])
    """
    path = str(path)
    lines = _read_lines(path)
    meta: dict[str, object] = {}
    class_names: list[str] | None = None
    data_start = None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#%":
            continue
        if not line.startswith("@"):
            raise DataError(f"{path}:{lineno}: expected a @header line or @data before the data")
        tokens = re.split(r"\s+", line)
        key = tokens[0][1:].lower()
        if key == "data":
            data_start = lineno
            break
        if key in _BOOL_KEYS:
            meta[key] = _parse_bool(path, lineno, key, tokens)
        elif key == "targetlabel":
            if _parse_bool(path, lineno, key, tokens):
                raise DataError(
                    f"{path}:{lineno}: this is a regression file (@targetLabel true); only "
                    "classification files (@classLabel true ...) are supported"
                )
        elif key == "classlabel":
            if len(tokens) < 2 or tokens[1].lower() not in ("true", "false"):
                raise DataError(f"{path}:{lineno}: @classLabel needs true or false")
            if tokens[1].lower() == "false":
                raise DataError(
                    f"{path}:{lineno}: @classLabel false: the file has no class labels to learn"
                )
            if len(tokens) == 2:
                raise DataError(f"{path}:{lineno}: @classLabel true must list the class labels")
            class_names = tokens[2:]
        elif key in ("dimensions", "serieslength"):
            try:
                meta[key] = int(tokens[1])
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: @{tokens[0][1:]} needs an integer") from None
    if data_start is None:
        raise DataError(f"{path}: no @data line; not a .ts file?")
    if meta.get("timestamps"):
        raise DataError(f"{path}: timestamped .ts files (@timeStamps true) are not supported")
    if class_names is None:
        raise DataError(
            f"{path}: no '@classLabel true <labels>' header; only classification files are "
            "supported"
        )

    expected_dims = meta.get("dimensions")
    if meta.get("univariate") and expected_dims is None:
        expected_dims = 1
    series_length = meta.get("serieslength") if meta.get("equallength") else None
    series, labels = [], []
    first_line = None
    for lineno in range(data_start + 1, len(lines) + 1):
        line = lines[lineno - 1].strip()
        if not line or line[0] in "#%":
            continue
        case = len(series) + 1
        fields = line.split(":")
        if len(fields) < 2:
            raise DataError(
                f"{path}:{lineno}: case {case} has no ':'-separated class label at the end"
            )
        *dims, label = fields
        if expected_dims is None:
            expected_dims, first_line = len(dims), lineno
        if len(dims) != expected_dims:
            where = (
                f"case 1 (line {first_line}) has {expected_dims}"
                if first_line is not None
                else f"the header declares {expected_dims}"
            )
            raise DataError(
                f"{path}:{lineno}: case {case} has {len(dims)} dimensions but {where}; "
                "inconsistent dimensions"
            )
        values = [_parse_values(path, lineno, case, d) for d in dims]
        dim_lengths = sorted({len(v) for v in values})
        if len(dim_lengths) > 1:
            raise DataError(
                f"{path}:{lineno}: the dimensions of case {case} have different lengths "
                f"{dim_lengths}; all dimensions of a case must have the same length"
            )
        if series_length is not None and dim_lengths[0] != series_length:
            raise DataError(
                f"{path}:{lineno}: case {case} has length {dim_lengths[0]} but the header "
                f"declares @seriesLength {series_length} with @equalLength true"
            )
        label = label.strip()
        if not label:
            raise DataError(f"{path}:{lineno}: case {case} has an empty class label")
        series.append(np.stack(values, axis=1))
        labels.append(label)
    if not series:
        raise DataError(f"{path}: no cases after @data")
    return SequenceDataset.from_series(series, labels, name=path, class_names=class_names)


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (cannot decode it as UTF-8)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


# -------------------------------------------------------------------------- .npz


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
    return _finish(x.astype(np.float32), lengths, labels, path, None)


def write_ts(path: str | os.PathLike, dataset: SequenceDataset, problem_name: str = "") -> None:
    """Write ``dataset`` as a UEA/UCR ``.ts`` classification file that `read_ts` reads back.

    Values are written exactly (``repr`` of each float32 value); NaN becomes ``?``.

    Example:
      >>> import tempfile, os, numpy as np
      >>> from flax_lstm.data import SequenceDataset, read_ts, write_ts
      >>> ds = SequenceDataset.from_series([np.arange(6.0).reshape(3, 2), np.ones((1, 2))], "ab")
      >>> with tempfile.TemporaryDirectory() as d:
      ...     write_ts(os.path.join(d, "x.ts"), ds)
      ...     back = read_ts(os.path.join(d, "x.ts"))
      >>> bool((back.x == ds.x).all()), back.lengths.tolist(), back.y.tolist()
      (True, [3, 1], ['a', 'b'])
    """
    labels = sorted(set(dataset.y.tolist()))
    if any(re.search(r"[\s:,]", label) or not label for label in labels):
        raise DataError(f"{path}: .ts labels cannot be empty or hold spaces, ':' or ','")
    equal = bool((dataset.lengths == dataset.max_length).all())
    name = re.sub(r"\s+", "_", problem_name or Path(path).stem) or "data"
    header = [
        f"@problemName {name}",
        "@timeStamps false",
        f"@missing {str(bool(np.isnan(dataset.x).any())).lower()}",
        f"@univariate {str(dataset.num_channels == 1).lower()}",
        f"@dimensions {dataset.num_channels}",
        f"@equalLength {str(equal).lower()}",
        *([f"@seriesLength {dataset.max_length}"] if equal else []),
        "@classLabel true " + " ".join(labels),
        "@data",
    ]
    lines = []
    for x, n, label in zip(dataset.x, dataset.lengths, dataset.y.tolist(), strict=True):
        dims = (
            ",".join("?" if math.isnan(v) else repr(v) for v in x[:n, c].astype(float).tolist())
            for c in range(dataset.num_channels)
        )
        lines.append(":".join([*dims, label]))
    Path(path).write_text("\n".join(header + lines) + "\n", encoding="utf-8")


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

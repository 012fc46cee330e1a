"""The UEA/UCR ``.ts`` classification format (sktime/aeon): `read_ts` and `write_ts`.

`read_ts` reads the header up to ``@data`` into a `_TsHeader`, then every data line into one
case: its ``:``-separated dimensions (the channels) and, last, its label.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np

from flax_lstm.data.dataset import DataError, SequenceDataset

__all__ = ["read_ts", "write_ts"]


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
    header = _read_header(path, lines)
    series, labels = _read_cases(path, lines, header)
    return SequenceDataset.from_series(series, labels, name=path, class_names=header.class_names)


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


# ------------------------------------------------------------- reading, piece by piece


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


_BOOL_KEYS = ("timestamps", "missing", "univariate", "equallength")


@dataclasses.dataclass(frozen=True)
class _TsHeader:
    """What a ``.ts`` header declares, as far as the reader needs it."""

    data_line: int  # the line number of @data; the cases follow it
    class_names: list[str]
    dimensions: int | None  # per case: @dimensions, 1 if @univariate true, else the first case's
    series_length: int | None  # @seriesLength, where @equalLength true holds it to that


def _is_blank_or_comment(line: str) -> bool:
    return not line or line[0] in "#%"


@dataclasses.dataclass
class _HeaderLines:
    """What the header lines before ``@data`` said, each under its lower-case key."""

    flags: dict[str, bool] = dataclasses.field(default_factory=dict)  # the _BOOL_KEYS
    numbers: dict[str, int] = dataclasses.field(default_factory=dict)  # dimensions, serieslength
    class_names: list[str] | None = None  # @classLabel true <labels>


def _read_header(path: str, lines: list[str]) -> _TsHeader:
    """The header lines up to ``@data``; checks that the file is a classification file."""
    meta = _HeaderLines()
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if _is_blank_or_comment(line):
            continue
        if not line.startswith("@"):
            raise DataError(f"{path}:{lineno}: expected a @header line or @data before the data")
        tokens = re.split(r"\s+", line)
        if tokens[0][1:].lower() == "data":
            break
        _read_header_line(path, lineno, tokens, meta)
    else:
        raise DataError(f"{path}: no @data line; not a .ts file?")
    if meta.flags.get("timestamps"):
        raise DataError(f"{path}: timestamped .ts files (@timeStamps true) are not supported")
    if meta.class_names is None:
        raise DataError(
            f"{path}: no '@classLabel true <labels>' header; only classification files are "
            "supported"
        )
    dimensions = meta.numbers.get("dimensions")
    if meta.flags.get("univariate") and dimensions is None:
        dimensions = 1
    return _TsHeader(
        data_line=lineno,
        class_names=meta.class_names,
        dimensions=dimensions,
        series_length=meta.numbers.get("serieslength") if meta.flags.get("equallength") else None,
    )


def _read_header_line(path: str, lineno: int, tokens: list[str], meta: _HeaderLines) -> None:
    """Record one ``@key value...`` line in ``meta`` (under its lower-case key)."""
    key = tokens[0][1:].lower()
    if key in _BOOL_KEYS:
        meta.flags[key] = _parse_bool(path, lineno, key, tokens)
    elif key == "targetlabel":
        if _parse_bool(path, lineno, key, tokens):
            raise DataError(
                f"{path}:{lineno}: this is a regression file (@targetLabel true); only "
                "classification files (@classLabel true ...) are supported"
            )
    elif key == "classlabel":
        meta.class_names = _parse_class_labels(path, lineno, tokens)
    elif key in ("dimensions", "serieslength"):
        try:
            meta.numbers[key] = int(tokens[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{lineno}: @{tokens[0][1:]} needs an integer") from None


def _parse_bool(path: str, lineno: int, key: str, tokens: list[str]) -> bool:
    if len(tokens) != 2 or tokens[1].lower() not in ("true", "false"):
        raise DataError(f"{path}:{lineno}: @{key} needs the value true or false")
    return tokens[1].lower() == "true"


def _parse_class_labels(path: str, lineno: int, tokens: list[str]) -> list[str]:
    """The labels of ``@classLabel true <labels>``."""
    if len(tokens) < 2 or tokens[1].lower() not in ("true", "false"):
        raise DataError(f"{path}:{lineno}: @classLabel needs true or false")
    if tokens[1].lower() == "false":
        raise DataError(
            f"{path}:{lineno}: @classLabel false: the file has no class labels to learn"
        )
    if len(tokens) == 2:
        raise DataError(f"{path}:{lineno}: @classLabel true must list the class labels")
    return tokens[2:]


def _read_cases(
    path: str, lines: list[str], header: _TsHeader
) -> tuple[list[np.ndarray], list[str]]:
    """Every case after ``@data``: its ``(T_i, C)`` values and its label."""
    series, labels = [], []
    dimensions, first_line = header.dimensions, None
    for lineno in range(header.data_line + 1, len(lines) + 1):
        line = lines[lineno - 1].strip()
        if _is_blank_or_comment(line):
            continue
        case = len(series) + 1
        fields = line.split(":")
        if len(fields) < 2:
            raise DataError(
                f"{path}:{lineno}: case {case} has no ':'-separated class label at the end"
            )
        *dims, label = fields
        if dimensions is None:
            dimensions, first_line = len(dims), lineno
        if len(dims) != dimensions:
            where = (
                f"case 1 (line {first_line}) has {dimensions}"
                if first_line is not None
                else f"the header declares {dimensions}"
            )
            raise DataError(
                f"{path}:{lineno}: case {case} has {len(dims)} dimensions but {where}; "
                "inconsistent dimensions"
            )
        series.append(_parse_case_values(path, lineno, case, dims, header.series_length))
        label = label.strip()
        if not label:
            raise DataError(f"{path}:{lineno}: case {case} has an empty class label")
        labels.append(label)
    if not series:
        raise DataError(f"{path}: no cases after @data")
    return series, labels


def _parse_case_values(
    path: str, lineno: int, case: int, dims: list[str], series_length: int | None
) -> np.ndarray:
    """A case's ``(T_i, C)`` values from its dimensions' texts, all of one length."""
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
    return np.stack(values, axis=1)


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

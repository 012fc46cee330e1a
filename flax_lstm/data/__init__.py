"""Data for the main job: bundled real data sets and readers for the user's own files.

Bundled (nothing is ever downloaded; see ``README.md`` in this folder for sources and
licences):

- `load_japanese_vowels`: UCI Japanese Vowels (640 utterances, 12 channels, lengths 7–29,
  9 speakers), the default data of ``flax-lstm train``.
- `load_sunspots`: yearly mean sunspot numbers 1700–2008 (NOAA NGDC, public domain).

Readers: `read_ts` (UEA/UCR ``.ts``), `read_npz` (arrays ``x``, ``y``, optional ``lengths``)
and `read_dataset` (by suffix). All return a `SequenceDataset` and raise `DataError`;
`write_ts` writes one back as a ``.ts`` file.

Example:
  >>> from flax_lstm.data import load_japanese_vowels
  >>> train, test = load_japanese_vowels()
  >>> len(train), len(test), train.num_channels, sorted(set(train.y.tolist()))[:3]
  (270, 370, 12, ['1', '2', '3'])
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from typing import NamedTuple

import numpy as np

from flax_lstm.data.readers import (
    DataError,
    SequenceDataset,
    canonical_label,
    read_dataset,
    read_npz,
    read_ts,
    write_ts,
)

__all__ = [
    "DataError",
    "SequenceDataset",
    "Sunspots",
    "canonical_label",
    "load_japanese_vowels",
    "load_sunspots",
    "read_dataset",
    "read_npz",
    "read_ts",
    "write_ts",
]

JAPANESE_VOWELS = "japanese-vowels"
"""The name under which runs record the bundled Japanese Vowels data as their source."""


def _resource(name: str):
    return resources.files(__name__).joinpath(name)


def load_japanese_vowels() -> tuple[SequenceDataset, SequenceDataset]:
    """The UCI Japanese Vowels speaker-recognition set, split as in the UEA archive.

    Nine male speakers said the Japanese vowels /ae/; each utterance is a series of 12 LPC
    cepstrum coefficients (channels) of length 7–29, labelled with its speaker ``'1'``…``'9'``.
    Train: 270 series (30 per speaker); test: 370 series.

    Source: M. Kudo, J. Toyama, M. Shimbo (1999), "Multidimensional Curve Classification
    Using Passing-Through Regions", Pattern Recognition Letters 20(11–13), 1103–1111; via the
    UCI Machine Learning Repository, CC BY 4.0.

    Returns:
      ``(train, test)`` `SequenceDataset` s: ``x`` ``(N, 29 or less, 12)`` float32,
      ``lengths`` ``(N,)``, ``y`` ``(N,)`` label strings.

    Example:
      >>> from flax_lstm.data import load_japanese_vowels
      >>> train, test = load_japanese_vowels()
      >>> train.x.shape, int(train.lengths.min()), int(test.lengths.max())
      ((270, 26, 12), 7, 29)
    """
    with _resource("japanese_vowels.npz").open("rb") as f, np.load(f) as z:
        names = tuple(z["class_names"].tolist())

        def split(name: str) -> SequenceDataset:
            return SequenceDataset(
                x=z[f"x_{name}"],
                lengths=z[f"lengths_{name}"].astype(np.int64),
                y=z[f"y_{name}"],
                name=f"{JAPANESE_VOWELS}/{name}",
                class_names=names,
            )

        return split("train"), split("test")


class Sunspots(NamedTuple):
    """Yearly mean total sunspot numbers: ``year`` (int64) and ``activity`` (float64)."""

    year: np.ndarray
    activity: np.ndarray


def load_sunspots() -> Sunspots:
    """Yearly mean sunspot numbers 1700–2008 (309 values), for forecasting examples.

    Source: NOAA National Geophysical Data Center (NGDC), public domain.

    Returns:
      `Sunspots` ``(year, activity)``, two ``(309,)`` arrays in year order.

    Example:
      >>> from flax_lstm.data import load_sunspots
      >>> year, activity = load_sunspots()
      >>> int(year[0]), int(year[-1]), float(activity[0]), float(activity[-1])
      (1700, 2008, 5.0, 2.9)
    """
    text = _resource("sunspots.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))[1:]
    year = np.array([int(r[0]) for r in rows], dtype=np.int64)
    activity = np.array([float(r[1]) for r in rows], dtype=np.float64)
    return Sunspots(year, activity)

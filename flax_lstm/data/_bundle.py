"""Rebuild the bundled ``japanese_vowels.npz`` from the UEA/UCR ``.ts`` files.

Usage (from the repository root)::

    python -m flax_lstm.data._bundle ../shared/data/japanese_vowels

The archive holds exactly what `read_ts` returns for each split (float32 values, lengths,
canonical labels), so ``load_japanese_vowels()`` equals reading the ``.ts`` files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from flax_lstm.data.readers import read_ts


def build(source_dir: str, out: str | None = None) -> Path:
    """Write ``japanese_vowels.npz`` (next to this module unless ``out``) from ``source_dir``."""
    src = Path(source_dir)
    arrays = {}
    for split in ("train", "test"):
        ds = read_ts(src / f"JapaneseVowels_{split.upper()}.ts")
        arrays[f"x_{split}"] = ds.x
        arrays[f"lengths_{split}"] = ds.lengths.astype(np.int16)
        arrays[f"y_{split}"] = ds.y
        arrays["class_names"] = np.array(ds.class_names, dtype=str)
    target = Path(out) if out else Path(__file__).with_name("japanese_vowels.npz")
    np.savez_compressed(target, **arrays)
    return target


if __name__ == "__main__":
    print(build(*sys.argv[1:]))

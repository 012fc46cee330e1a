"""Fixtures of the `flax_lstm.train` tests: data files and one uninterrupted reference run.

Session-scoped, so the reference run is trained once for every file here that compares with it.
"""

from __future__ import annotations

import pytest
from train_helpers import make_dataset, save_npz, small_config

from flax_lstm.data import write_ts
from flax_lstm.train import train


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    write_ts(d / "train.ts", make_dataset(60, 0))
    save_npz(d / "test.npz", make_dataset(30, 1))
    return {"train": str(d / "train.ts"), "test": str(d / "test.npz")}


@pytest.fixture(scope="session")
def full_run(files, tmp_path_factory):
    """An uninterrupted run that the resume tests must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return train(small_config(files), out=out, quiet=True)

"""`TrainConfig`: validation names the bad field, round trips, documentation from metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flax_lstm.train import TrainConfig, TrainError
from flax_lstm.train.config import resolve_paths


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"members": True}, "members must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"input_noise": -0.1}, "input_noise must be >= 0"),
        ({"dropout": 1.0}, "dropout must lie in [0, 1)"),
        ({"lr": float("inf")}, "lr must be a positive number"),
        ({"weight_decay": float("nan")}, "weight_decay must be >= 0"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"test": "b.ts"}, "give both --train and --test"),
    ],
)
def test_validate_names_the_bad_field(change, message):
    with pytest.raises(TrainError) as info:
        TrainConfig(**change).validate()
    assert str(info.value).startswith(message)


def test_defaults_are_valid_and_round_trip():
    config = TrainConfig()
    assert config.validate() is config
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert list(config.to_dict()) == [f.name for f in dataclasses.fields(TrainConfig)]
    with pytest.raises(TrainError, match=r"unknown training settings \['nope'\]"):
        TrainConfig.from_dict({**config.to_dict(), "nope": 1})


def test_differences_and_paths():
    a, b = TrainConfig(lr=0.5), TrainConfig()
    assert a.differences(b) == ["lr=0.5 (run has 0.003)"] and not b.differences(TrainConfig())
    resolved = resolve_paths(TrainConfig(train="a.ts", test="b.ts"))
    assert resolved.train == str(Path("a.ts").absolute())
    assert resolved.test == str(Path("b.ts").absolute())
    assert resolve_paths(b) is b


def test_every_field_is_documented():
    doc = " ".join(TrainConfig.__doc__.split())
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and f.metadata["group"] in ("data", "model", "opt")
        assert f" {f.name}: {f.metadata['help']} (default: " in doc

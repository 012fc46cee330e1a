"""`TrainConfig`: validation names the bad field, round trips, documentation from metadata
(the derived settings' rules formatted from `flax_lstm.train.derive`'s constants)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import python_process

from flax_lstm.train import TrainConfig, TrainError, derive
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


# Each derived setting's rule, by the `derive` constants its help text states.
RULE_CONSTANTS = {
    "epochs": ("SERIES_BUDGET", "MIN_EPOCHS"),
    "batch_size": ("BATCHES_PER_EPOCH", "MIN_BATCH_SIZE", "MAX_BATCH_SIZE"),
    "val_fraction": ("VAL_FRACTION", "MIN_VALIDATION"),
    "patch": ("MAX_UNPATCHED", "TARGET_STEPS"),
    "length_buckets": ("LENGTH_BUCKETS", "MAX_UNPATCHED", "RAGGED"),
}

# Other values for every constant, none of them the value of another: the help must follow.
CHANGED = {
    "MAX_UNPATCHED": 47, "TARGET_STEPS": 23, "VAL_FRACTION": 0.125, "MIN_VALIDATION": 57,
    "SERIES_BUDGET": 12_345, "MIN_EPOCHS": 111, "BATCHES_PER_EPOCH": 7, "MIN_BATCH_SIZE": 3,
    "MAX_BATCH_SIZE": 29, "LENGTH_BUCKETS": 5, "RAGGED": 0.625,
}  # fmt: skip

# In a fresh process: change derive's constants, rebuild the config and its flags, and print
# each derived field's default text, the whole ``flax-lstm train --help`` and the docstring.
HELP_WITH_CHANGED_CONSTANTS = """
import contextlib, dataclasses, importlib, io, json, os, sys

os.environ["COLUMNS"] = "1000"
from flax_lstm.train import derive
for name, value in json.loads(sys.argv[1]).items():
    setattr(derive, name, value)
from flax_lstm.train import cli as train_cli, config
importlib.reload(config)
importlib.reload(train_cli)
from flax_lstm import cli

text = io.StringIO()
with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
    cli.main(["train", "--help"])
fields = dataclasses.fields(config.TrainConfig)
rules = {f.name: f.metadata["default_help"] for f in fields if f.default is None}
doc = config.TrainConfig.__doc__
print(json.dumps({"rules": rules, "help": text.getvalue(), "doc": doc}))
"""


def _stated(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _states(text: str, value: float) -> bool:
    """Whether ``text`` has ``value`` as a number of its own (not a part of another)."""
    return (
        re.search(rf"(?<!\d)(?<!\d[.,]){re.escape(_stated(value))}(?!\d|[.,]\d)", text) is not None
    )


def test_every_derive_constant_is_stated_in_its_rule():
    constants = {name for name in derive.__all__ if name.isupper()}
    assert {c for names in RULE_CONSTANTS.values() for c in names} == constants
    assert set(CHANGED) == constants
    for field in dataclasses.fields(TrainConfig):
        for name in RULE_CONSTANTS.get(field.name, ()):
            assert _states(field.metadata["default_help"], getattr(derive, name)), (field, name)


def test_help_follows_the_derive_constants():
    """Change every rule's number in `derive`: ``--help`` and the docstring say the new ones."""
    proc = python_process.run("-c", HELP_WITH_CHANGED_CONSTANTS, json.dumps(CHANGED))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["rules"]) == set(RULE_CONSTANTS) | {"train", "test"}
    flat_help, flat_doc = (" ".join(out[key].split()) for key in ("help", "doc"))
    for field, names in RULE_CONSTANTS.items():
        rule = out["rules"][field]
        for name in names:
            assert _states(rule, CHANGED[name]), (field, name, rule)
        assert f"(default: {rule})" in flat_help, field
        assert f"(default: {rule})." in flat_doc, field

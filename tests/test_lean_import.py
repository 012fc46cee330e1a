"""The core stays lean: ``import flax_lstm`` and `flax_lstm.lstm` load no application library.

matplotlib, orbax, tqdm and torch are for the training application (`flax_lstm.train`), which
imports them itself when it plots, checkpoints or shows progress; tests import torch, so the
check runs in a fresh interpreter.
"""

from __future__ import annotations

import python_process

SCRIPT = """
import sys

import jax
import jax.numpy as jnp

import flax_lstm as fl
import flax_lstm.linen
import flax_lstm.nnx
import flax_lstm.streaming

config = fl.LSTMConfig(input_size=2, hidden_size=3)
params = fl.init_params(jax.random.key(0), config)
output, _ = fl.lstm(params, jnp.ones((4, 1, 2)), config=config)
assert output.shape == (4, 1, 3), output.shape
heavy = ("matplotlib", "orbax", "tqdm", "torch")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print(loaded)
"""


def test_core_imports_no_application_library():
    proc = python_process.run("-c", SCRIPT)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout

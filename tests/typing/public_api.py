"""The public API's types as a user's code sees them (pyright checks each `assert_type`).

Checked by CI's pyright run (``.ci/run``, tests/typing is in pyproject.toml's include); not
run by pytest.
"""

from __future__ import annotations

from typing import assert_type

import jax
import jax.numpy as jnp

import flax_lstm as fl


def public_api_types() -> None:
    config = fl.LSTMConfig(input_size=3, hidden_size=5)
    params = fl.init_params(jax.random.key(0), config)
    output, state = fl.lstm(params, jnp.ones((7, 2, 3)), config=config)
    assert_type(fl.lstm(params, jnp.ones((7, 2, 3)), config=config), tuple[jax.Array, fl.LSTMState])
    assert_type(output, jax.Array)
    assert_type(state, fl.LSTMState)
    assert_type(fl.lstm_plan(params, jnp.ones((7, 2, 3)), config=config), fl.Plan)
    assert_type(fl.__version__, str)

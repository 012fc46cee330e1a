"""What the NNX and Linen modules (`flax_lstm.nnx`, `flax_lstm.linen`) share.

Both modules hold their options and parameters in their framework's way and hand everything
else to the helpers here: option checks, the initial state, torch import, and the one
`flax_lstm.lstm` call (`call_lstm`). An option the modules pass through to `flax_lstm.lstm`
unchanged is named once, in `LSTM_OPTIONS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import torch_io

# The modules check their option with the functional API's own check (and error).
from flax_lstm._checks import check_recurrent_dropout as check_recurrent_dropout
from flax_lstm.cell import LSTMState
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Params
from flax_lstm.stack import Output as Output
from flax_lstm.stack import OutputWithStates as OutputWithStates
from flax_lstm.stack import lstm, zero_state

Array = jax.Array

# The module attributes `call_lstm` passes to `flax_lstm.lstm` as the keywords of the same name.
LSTM_OPTIONS = ("dtype", "recurrent_dropout", "impl")


def needs_dropout_key(config: LSTMConfig, recurrent_dropout: float) -> bool:
    """Whether a forward in training mode uses a dropout key at all."""
    return (config.dropout > 0 and config.num_layers > 1) or recurrent_dropout > 0


def batch_size_of(x: Any, batch_first: bool) -> int | None:
    """N of a batched (3-D) input; None for any other, which has no batch axis to broadcast an
    initial state to (unbatched, or a rank that `flax_lstm.lstm` rejects before it reads
    ``hx``)."""
    if np.ndim(x) != 3:
        return None
    return int(np.shape(x)[0 if batch_first else 1])


def zero_initial_state(config: LSTMConfig, dtype: Any) -> LSTMState:
    """Zero ``(h0, c0)`` shared by all rows, both in ``dtype`` (a learnable initial state's
    value before training): ``(D·num_layers, H_out)``, ``(D·num_layers, H)``."""
    return zero_state(config, (), dtype, cell_dtype=dtype)


def broadcast_initial_state(h0: Array, c0: Array, batch: int | None) -> LSTMState:
    """A shared initial state ``(D·num_layers, H)`` broadcast to ``batch`` rows (axis 1)."""
    if batch is None:
        return LSTMState(h0, c0)
    return LSTMState(
        jnp.broadcast_to(h0[:, None], (h0.shape[0], batch, h0.shape[1])),
        jnp.broadcast_to(c0[:, None], (c0.shape[0], batch, c0.shape[1])),
    )


def initial_state(
    config: LSTMConfig, dtype: Any, learned: tuple[Array, Array] | None, batch: int | None
) -> LSTMState:
    """The modules' ``initial_state``: the ``learned`` ``(h0, c0)`` or zeros, for ``batch`` rows."""
    h0, c0 = zero_initial_state(config, dtype) if learned is None else learned
    return broadcast_initial_state(h0, c0, batch)


def call_lstm(
    module: Any,
    params: Params,
    x: Any,
    hx: Any,
    initial: tuple[Array, Array] | None,
    *,
    config: LSTMConfig,
    train: bool,
    make_dropout_key: Callable[[], Array],
    seq_lengths: Any,
    return_all_states: bool,
) -> Output | OutputWithStates:
    """The one `flax_lstm.lstm` call of both modules, with the module's `LSTM_OPTIONS`.

    ``initial`` (the learnable ``(h0, c0)``, or None) fills a missing ``hx``. In training
    (``train``), ``make_dropout_key()`` is called for a key when the module has dropout.
    """
    dropout_key = None
    if train and needs_dropout_key(config, module.recurrent_dropout):
        dropout_key = make_dropout_key()
    if hx is None and initial is not None:
        hx = broadcast_initial_state(*initial, batch_size_of(x, config.batch_first))
    return lstm(
        params,
        x,
        hx,
        config=config,
        seq_lengths=seq_lengths,
        dropout_key=dropout_key,
        return_all_states=return_all_states,
        **{name: getattr(module, name) for name in LSTM_OPTIONS},
    )


def lstm_from_torch(
    source: Any, batch_first: bool | None, dropout: float | None, param_dtype: Any
) -> tuple[dict[str, Any], Params]:
    """Constructor keywords (config fields and ``param_dtype``) and params of a torch LSTM.

    ``param_dtype`` None keeps the torch weights' dtype (see `flax_lstm.from_torch`).
    """
    config, params = torch_io.from_torch(
        source, batch_first=batch_first, dropout=dropout, dtype=param_dtype
    )
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    fields["param_dtype"] = params[0]["w_ih"].dtype if param_dtype is None else param_dtype
    return fields, params


def cell_from_torch(source: Any, param_dtype: Any) -> tuple[dict[str, Any], dict[str, Array]]:
    """Constructor keywords (sizes, ``bias``, ``param_dtype``) and params of a torch cell."""
    params = torch_io.cell_params_from_torch(source, dtype=param_dtype)
    hidden_size, input_size = params["w_ih"].shape[0] // 4, params["w_ih"].shape[1]
    fields = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "bias": "b_ih" in params,
        "param_dtype": params["w_ih"].dtype if param_dtype is None else param_dtype,
    }
    return fields, params

"""Build, call and differentiate either module kind (NNX or Linen) the same way.

The tests that check the same behaviour of `flax_lstm.nnx` and `flax_lstm.linen` are written
once against this adapter and parametrised over ``KINDS``; what only one kind has (NNX's
train/eval mode and dropout stream, Linen's input-size inference) stays in test_nnx.py and
test_linen.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from flax import nnx

import flax_lstm as fl

KINDS = ("linen", "nnx")


@dataclasses.dataclass
class Made:
    """A module of one kind with its parameters (Linen keeps them in ``variables``)."""

    kind: str
    module: Any
    variables: Any = None


@nnx.jit(static_argnames=("deterministic", "return_all_states"))
def nnx_call(model, x, hx, seq_lengths, key, deterministic, return_all_states):
    return model(
        x, hx, seq_lengths=seq_lengths, deterministic=deterministic, rngs=key,
        return_all_states=return_all_states,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("module", "deterministic", "return_all_states"))
def _linen_call(module, variables, x, hx, seq_lengths, key, deterministic, return_all_states):
    return module.apply(
        variables, x, hx, seq_lengths=seq_lengths, deterministic=deterministic,
        return_all_states=return_all_states, rngs=None if key is None else {"dropout": key},
    )  # fmt: skip


def construct(kind: str, input_size: int, hidden_size: int, **options) -> Any:
    """Only the constructor (Linen's runs its checks there, before ``init``)."""
    if kind == "nnx":
        return fl.nnx.LSTM(input_size, hidden_size, rngs=nnx.Rngs(0), **options)
    return fl.linen.LSTM(hidden_size, **options)


def make_lstm(kind: str, input_size: int, hidden_size: int, num_layers: int = 1, **opts) -> Made:
    """A fresh LSTM (seed 0) for inputs of ``input_size`` features."""
    if kind == "nnx":
        return Made(kind, construct(kind, input_size, hidden_size, num_layers=num_layers, **opts))
    module = construct(kind, input_size, hidden_size, num_layers=num_layers, **opts)
    x = np.zeros((1, input_size), np.float32)  # unbatched: the same for batch_first
    return Made(kind, module, jax.jit(module.init)(jax.random.key(0), x))


def from_torch(kind: str, source: Any, **kwargs) -> Made:
    if kind == "nnx":
        return Made(kind, fl.nnx.LSTM.from_torch(source, rngs=nnx.Rngs(0), **kwargs))
    return Made(kind, *fl.linen.LSTM.from_torch(source, **kwargs))


def call(made: Made, x, hx=None, *, seq_lengths=None, train=False, key=None, states=False):
    """The jitted forward; ``train`` applies dropout (with ``key``, or NNX's own stream)."""
    if made.kind == "nnx":
        return nnx_call(made.module, x, hx, seq_lengths, key, not train, states)
    return _linen_call(made.module, made.variables, x, hx, seq_lengths, key, not train, states)


def call_eagerly(made: Made, x, hx=None, **kwargs):
    if made.kind == "nnx":
        return made.module(x, hx, **kwargs)
    return made.module.apply(made.variables, x, hx, **kwargs)


def lstm_params(made: Made) -> fl.Params:
    if made.kind == "nnx":
        return made.module.lstm_params()
    return made.module.lstm_params(made.variables)


def config(made: Made) -> fl.LSTMConfig:
    if made.kind == "nnx":
        return made.module.config
    input_size = int(np.shape(lstm_params(made)[0]["w_ih"])[-1])
    return made.module.lstm_config(input_size, warn=False)


def params_of(made: Made) -> dict[str, Any]:
    """The parameters as a plain nested dict (NNX: ``layers`` [...], Linen: ``layer_k``)."""
    if made.kind == "nnx":
        return nnx.to_pure_dict(nnx.state(made.module, nnx.Param))
    return made.variables["params"]


def set_params(made: Made, **arrays) -> Made:
    """``made`` with top-level parameters (e.g. ``h0``, ``w_ih``) replaced."""
    if made.kind == "nnx":
        for name, value in arrays.items():
            getattr(made.module, name)[...] = jax.numpy.asarray(value)
        return made
    return Made(made.kind, made.module, {"params": {**made.variables["params"], **arrays}})


def initial_state(made: Made, batch_size=None) -> fl.LSTMState:
    if made.kind == "nnx":
        return made.module.initial_state(batch_size)
    return made.module.initial_state(made.variables, batch_size=batch_size)


def to_torch_state_dict(made: Made, grads=None, **kwargs) -> dict[str, Any]:
    """torch's state dict of the parameters, or of ``grads`` from `value_and_grad`."""
    if made.kind == "nnx":
        return made.module.to_torch_state_dict(grads, **kwargs)
    return made.module.to_torch_state_dict(made.variables if grads is None else grads, **kwargs)


def value_and_grad(made: Made, loss, *args):
    """``loss(forward, *args)`` and its gradients, jitted; ``forward`` calls the module.

    Returns ``((value, aux), (param_grads, *arg_grads))``: ``param_grads`` is what the
    module's ``to_torch_state_dict`` takes (NNX: a `flax.nnx.State`; Linen: a params dict).
    """
    argnums = tuple(range(len(args) + 1))
    if made.kind == "nnx":  # the model itself is the forward
        grad_fn = nnx.value_and_grad(loss, argnums=argnums, has_aux=True)
        return nnx.jit(grad_fn)(made.module, *args)

    def linen_loss(params, *args):
        return loss(functools.partial(made.module.apply, {"params": params}), *args)

    grad_fn = jax.value_and_grad(linen_loss, argnums=argnums, has_aux=True)
    return jax.jit(grad_fn)(made.variables["params"], *args)


def pure(grads) -> dict[str, Any]:
    """Gradients of `value_and_grad` as a plain dict (top-level names as `params_of`)."""
    return nnx.to_pure_dict(grads) if isinstance(grads, nnx.State) else grads


def construct_cell(kind: str, input_size: int, hidden_size: int, **options) -> Any:
    if kind == "nnx":
        return fl.nnx.LSTMCell(input_size, hidden_size, rngs=nnx.Rngs(0), **options)
    return fl.linen.LSTMCell(hidden_size, **options)


def make_cell(kind: str, input_size: int, hidden_size: int, params=None) -> Made:
    """A cell, with the given `flax_lstm.lstm_cell` params or freshly initialised ones."""
    module = construct_cell(kind, input_size, hidden_size)
    if kind == "nnx":
        made = Made(kind, module)
        return made if params is None else set_params(made, **params)
    if params is None:
        params = module.init(jax.random.key(0), np.zeros((input_size,), np.float32))["params"]
    return Made(kind, module, {"params": dict(params)})


def cell_from_torch(kind: str, source: Any) -> Made:
    if kind == "nnx":
        return Made(kind, fl.nnx.LSTMCell.from_torch(source))
    return Made(kind, *fl.linen.LSTMCell.from_torch(source))


def call_cell(made: Made, x, hx=None) -> fl.LSTMState:
    if made.kind == "nnx":
        return made.module(x, hx)
    return made.module.apply(made.variables, x, hx)


def cell_params(made: Made) -> dict[str, Any]:
    if made.kind == "nnx":
        return made.module.cell_params()
    return made.variables["params"]

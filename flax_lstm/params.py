"""Parameters: their layout and torch's initialisation (conversion to and from torch's state
dicts: `flax_lstm.torch_io`).

Layout: ``params`` is a list with one dict per layer. Each array carries a leading direction
axis D (1, or 2 when bidirectional) and then torch's own shape:

================  ======================  ==============================
key               shape                   torch name (suffix ``_reverse`` for direction 1)
================  ======================  ==============================
``w_ih``          (D, 4H, in_k)           ``weight_ih_l{k}``
``w_hh``          (D, 4H, H_out)          ``weight_hh_l{k}``
``b_ih``          (D, 4H)                 ``bias_ih_l{k}`` (only with ``bias``)
``b_hh``          (D, 4H)                 ``bias_hh_l{k}`` (only with ``bias``)
``w_hr``          (D, proj_size, H)       ``weight_hr_l{k}`` (only with ``proj_size > 0``)
================  ======================  ==============================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flax_lstm import _checks, _random
from flax_lstm.config import LSTMConfig

Array = jax.Array
LayerParams = dict[str, Array]
Params = list[LayerParams]

__all__ = ["cell_params", "init_cell_params", "init_params"]


def _uniform_dict(key: Array, shapes: Mapping[str, tuple[int, ...]], bound: float, dtype: Any):
    keys = jax.random.split(key, len(shapes))
    return {
        name: _random.uniform(k, shape, dtype, -bound, bound)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def init_params(key: Array, config: LSTMConfig, dtype: Any = jnp.float32) -> Params:
    """Initialise parameters as torch does: every entry ~ U(-1/√hidden_size, 1/√hidden_size).

    Args:
      key: a JAX PRNG key.
      config: the `LSTMConfig`.
      dtype: parameter (storage) dtype.

    Returns:
      A list of ``config.num_layers`` dicts; see the module docstring for keys and shapes.

    Example:
      >>> import jax, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=4, hidden_size=8, bidirectional=True)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> {k: v.shape for k, v in params[0].items()}
      {'w_ih': (2, 32, 4), 'w_hh': (2, 32, 8), 'b_ih': (2, 32), 'b_hh': (2, 32)}
    """
    if not isinstance(config, LSTMConfig):
        raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
    params = _init_params(key, config, jnp.dtype(dtype))
    # jit returns dicts with sorted keys; keep torch's order, as from_torch_state_dict does.
    order = _checks.expected_layer_shapes(1, 1, 1, True)  # w_ih, w_hh, b_ih, b_hh, w_hr
    return [{name: layer[name] for name in order if name in layer} for layer in params]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_params(key: Array, config: LSTMConfig, dtype: Any) -> Params:
    # Jitted: one compiled program per config instead of one per weight shape (eager init of a
    # two-layer bidirectional LSTM took about 2 s, nearly all of it compiling random ops).
    d = config.num_directions
    bound = 1.0 / math.sqrt(config.hidden_size)
    layer_keys = jax.random.split(key, config.num_layers)
    params = []
    for k in range(config.num_layers):
        shapes = _checks.expected_layer_shapes(
            config.layer_input_size(k), config.hidden_size, config.proj_size, config.bias
        )
        params.append(
            _uniform_dict(layer_keys[k], {n: (d, *s) for n, s in shapes.items()}, bound, dtype)
        )
    return params


def init_cell_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    proj_size: int = 0,
    dtype: Any = jnp.float32,
) -> dict[str, Array]:
    """Initialise one cell's parameters (torch.nn.LSTMCell's init) for `lstm_cell`.

    Returns ``{'w_ih': (4H, in), 'w_hh': (4H, H_out), 'b_ih': (4H,), 'b_hh': (4H,)}`` plus
    ``'w_hr': (proj_size, H)`` when ``proj_size > 0``.

    Example:
      >>> import jax, flax_lstm as fl
      >>> p = fl.init_cell_params(jax.random.key(0), 3, 5, bias=False)
      >>> sorted(p)
      ['w_hh', 'w_ih']
    """
    config = LSTMConfig(input_size, hidden_size, bias=bias, proj_size=proj_size)
    shapes = _checks.expected_layer_shapes(input_size, hidden_size, config.proj_size, config.bias)
    return _uniform_dict(key, shapes, 1.0 / math.sqrt(hidden_size), dtype)


def cell_params(params: Params, layer: int = 0, direction: int = 0) -> dict[str, Array]:
    """The parameters of one layer and direction, in the form `lstm_cell` takes.

    Example:
      >>> import jax, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=4, hidden_size=8, num_layers=2)
      >>> p = fl.cell_params(fl.init_params(jax.random.key(0), config), layer=1)
      >>> p['w_ih'].shape
      (32, 8)
    """
    return {name: value[direction] for name, value in params[layer].items()}

"""Parameters: torch's initialisation, and lossless conversion to and from torch state dicts.

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
import numpy as np

from flax_lstm import _checks
from flax_lstm.config import LSTMConfig

Array = jax.Array
LayerParams = dict[str, Array]
Params = list[LayerParams]

__all__ = [
    "cell_params",
    "config_from_torch",
    "from_torch_state_dict",
    "init_cell_params",
    "init_params",
    "to_torch_state_dict",
]

_TORCH_NAMES = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_hr": "weight_hr",
}


def _uniform_dict(key: Array, shapes: Mapping[str, tuple[int, ...]], bound: float, dtype: Any):
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, dtype, -bound, bound)
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
    return [{name: layer[name] for name in _TORCH_NAMES if name in layer} for layer in params]


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


def _torch_name(key: str, layer: int, direction: int) -> str:
    return f"{_TORCH_NAMES[key]}_l{layer}{'_reverse' if direction else ''}"


def to_torch_state_dict(params: Any, config: LSTMConfig) -> dict[str, np.ndarray]:
    """Convert params, or any pytree shaped like them (gradients), to torch's state dict.

    Names and shapes are exactly those of ``torch.nn.LSTM(...).state_dict()`` and in its order;
    values are NumPy arrays of the same dtype (lossless). Load them with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Example:
      >>> import jax, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=4, hidden_size=8, proj_size=2)
      >>> sd = fl.to_torch_state_dict(fl.init_params(jax.random.key(0), config), config)
      >>> [(k, v.shape) for k, v in sd.items()]  # doctest: +NORMALIZE_WHITESPACE
      [('weight_ih_l0', (32, 4)), ('weight_hh_l0', (32, 2)), ('bias_ih_l0', (32,)),
       ('bias_hh_l0', (32,)), ('weight_hr_l0', (2, 8))]
    """
    _checks.check_params(params, config)
    state_dict = {}
    for k, layer in enumerate(params):
        for d in range(config.num_directions):
            for key in _TORCH_NAMES:
                if key in layer:
                    state_dict[_torch_name(key, k, d)] = np.array(layer[key][d])  # a writable copy
    return state_dict


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is never imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: keep the bits
            import ml_dtypes

            return value.view(dtype=_torch_int16()).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise TypeError(f"state_dict[{name!r}] is not an array: {type(value).__name__}") from e


def _torch_int16():
    import torch

    return torch.int16


def from_torch_state_dict(
    state_dict: Mapping[str, Any], config: LSTMConfig, dtype: Any = None
) -> Params:
    """Build params from a ``torch.nn.LSTM`` state dict (torch tensors or NumPy arrays).

    Lossless: the values keep their dtype unless ``dtype`` is given. Every key torch's LSTM
    with ``config`` has must be present (KeyError names a missing one); an unexpected key or a
    misshapen value is a ValueError that names it.

    Example:
      >>> import torch, flax_lstm as fl
      >>> module = torch.nn.LSTM(4, 8, num_layers=2)
      >>> config = fl.config_from_torch(module)
      >>> params = fl.from_torch_state_dict(module.state_dict(), config)
      >>> params[1]['w_ih'].shape
      (1, 32, 8)
    """
    if not isinstance(config, LSTMConfig):
        raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    params: Params = []
    expected_names = set()
    for k in range(config.num_layers):
        shapes = _checks.expected_layer_shapes(
            config.layer_input_size(k), config.hidden_size, config.proj_size, config.bias
        )
        layer = {}
        for key, shape in shapes.items():
            per_direction = []
            for d in range(config.num_directions):
                name = _torch_name(key, k, d)
                expected_names.add(name)
                if name not in state_dict:
                    raise KeyError(f"state_dict is missing {name!r} (expected shape {shape})")
                value = _to_numpy(name, state_dict[name])
                _checks.check_shape(f"state_dict[{name!r}]", value, shape)
                per_direction.append(value)
            stacked = np.stack(per_direction)
            layer[key] = jnp.asarray(stacked, dtype=dtype)
        params.append(layer)
    extra = sorted(set(state_dict) - expected_names)
    if extra:
        raise ValueError(f"state_dict has unexpected keys for this config: {extra}")
    return params


def config_from_torch(module: Any) -> LSTMConfig:
    """The `LSTMConfig` of a ``torch.nn.LSTM`` module (its constructor arguments).

    Example:
      >>> import torch, flax_lstm as fl
      >>> fl.config_from_torch(torch.nn.LSTM(3, 6, bidirectional=True, batch_first=True))
      LSTMConfig(input_size=3, hidden_size=6, num_layers=1, bias=True, batch_first=True, \
dropout=0.0, bidirectional=True, proj_size=0)
    """
    try:
        kwargs = {
            name: getattr(module, name)
            for name in (
                "input_size",
                "hidden_size",
                "num_layers",
                "bias",
                "batch_first",
                "dropout",
                "bidirectional",
                "proj_size",
            )
        }
    except AttributeError as e:
        raise TypeError(f"module must be a torch.nn.LSTM, got {type(module).__name__}") from e
    if getattr(module, "mode", "LSTM") != "LSTM":
        raise TypeError(f"module must be a torch.nn.LSTM, got mode {module.mode!r}")
    return LSTMConfig(**kwargs)

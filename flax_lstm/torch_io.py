"""Conversion to and from PyTorch: ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` and their state dicts.

`from_torch` reads a ``torch.nn.LSTM`` (or its state dict) into a config and params
(`from_torch_state_dict` with a known config, `config_from_state_dict` / `config_from_torch` for
the config alone); `to_torch_state_dict` writes params back, as NumPy arrays or torch tensors.
`cell_params_from_torch` and `cell_to_torch_state_dict` do the same for one
``torch.nn.LSTMCell``. Values keep their dtype (see `from_torch_state_dict` for float64). torch
is imported only where a tensor is made or read; the params layout is `flax_lstm.params`'s.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from flax_lstm import _checks
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Params

Array = jax.Array

__all__ = [
    "cell_params_from_torch",
    "cell_to_torch_state_dict",
    "config_from_state_dict",
    "config_from_torch",
    "from_torch",
    "from_torch_state_dict",
    "to_torch_state_dict",
]

_TORCH_NAMES = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_hr": "weight_hr",
}
# torch.nn.LSTMCell has the first four, without the layer suffix (and no projection).
_CELL_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")


def _torch_name(key: str, layer: int, direction: int) -> str:
    return f"{_TORCH_NAMES[key]}_l{layer}{'_reverse' if direction else ''}"


def _as_tensor(value: np.ndarray) -> Any:
    """A torch tensor of ``value`` with the same dtype and bits (bfloat16 included)."""
    import torch  # only here: the package does not need torch otherwise

    if value.dtype == ml_dtypes.bfloat16:  # torch.from_numpy knows no bfloat16: move the bits
        return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(value)


def _export(state_dict: dict[str, np.ndarray], as_tensors: bool) -> dict[str, Any]:
    return {k: _as_tensor(v) for k, v in state_dict.items()} if as_tensors else state_dict


def to_torch_state_dict(
    params: Any, config: LSTMConfig, *, as_tensors: bool = False
) -> dict[str, Any]:
    """Convert params, or any pytree shaped like them (gradients), to torch's state dict.

    Args:
      params: ``config.num_layers`` layer dicts, as `flax_lstm.init_params` makes for ``config``
        (``w_ih`` ``(D, 4H, in_k)``, ...; see the module docstring).
      config: the `LSTMConfig`.
      as_tensors: return torch tensors (torch is imported only then) instead of NumPy
        arrays; bfloat16 keeps its bits, which ``torch.from_numpy`` cannot do.

    Returns:
      ``{name: value}`` with exactly the names, shapes and order of
      ``torch.nn.LSTM(...).state_dict()`` (e.g. ``weight_ih_l0`` ``(4H, in)``), values of the
      same dtype (lossless): NumPy arrays, or with ``as_tensors`` torch tensors for
      ``module.load_state_dict``.

    Example:
      >>> import jax, torch, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=4, hidden_size=8, proj_size=2)
      >>> sd = fl.to_torch_state_dict(fl.init_params(jax.random.key(0), config), config)
      >>> [(k, v.shape) for k, v in sd.items()]  # doctest: +NORMALIZE_WHITESPACE
      [('weight_ih_l0', (32, 4)), ('weight_hh_l0', (32, 2)), ('bias_ih_l0', (32,)),
       ('bias_hh_l0', (32,)), ('weight_hr_l0', (2, 8))]
      >>> params = fl.init_params(jax.random.key(0), config, dtype=jax.numpy.bfloat16)
      >>> module = torch.nn.LSTM(4, 8, proj_size=2).to(torch.bfloat16)
      >>> module.load_state_dict(fl.to_torch_state_dict(params, config, as_tensors=True))
      <All keys matched successfully>
    """
    _checks.check_params(params, config)
    state_dict = {}
    for k, layer in enumerate(params):
        for d in range(config.num_directions):
            for key in _TORCH_NAMES:
                if key in layer:
                    state_dict[_torch_name(key, k, d)] = np.array(layer[key][d])  # a writable copy
    return _export(state_dict, as_tensors)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is never imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: keep the bits
            return value.view(dtype=_torch_int16()).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise TypeError(f"state_dict[{name!r}] is not an array: {type(value).__name__}") from e


def _torch_int16():
    import torch

    return torch.int16


def _warn_if_narrowed(dtypes: set[np.dtype]) -> None:
    """Warn about value dtypes that JAX stores narrower (float64 with jax_enable_x64 off)."""
    narrowed = sorted(str(t) for t in dtypes if jax.dtypes.canonicalize_dtype(t) != t)
    if narrowed:
        warnings.warn(
            f"state_dict values of dtype {', '.join(narrowed)} are stored as "
            f"{jax.dtypes.canonicalize_dtype(np.dtype(narrowed[0]))} because jax_enable_x64 is "
            "off: enable it (jax.config.update('jax_enable_x64', True)) to keep them, or pass "
            "dtype= to choose the dtype",
            UserWarning,
            stacklevel=3,
        )


def from_torch_state_dict(
    state_dict: Mapping[str, Any], config: LSTMConfig, dtype: Any = None
) -> Params:
    """Build params from a ``torch.nn.LSTM`` state dict (torch tensors or NumPy arrays).

    Lossless: the values keep their dtype unless ``dtype`` is given, except that JAX stores
    float64 as float32 while ``jax_enable_x64`` is off; then a UserWarning says so (enable
    x64, or pass ``dtype=`` to choose the dtype and silence it). Every key torch's LSTM with
    ``config`` has must be present (KeyError names a missing one); an unexpected key or a
    misshapen value is a ValueError that names it.

    Args:
      state_dict: ``torch.nn.LSTM(...).state_dict()``, or the same names with NumPy arrays
        (``weight_ih_l0`` ``(4H, in)``, ...).
      config: the `LSTMConfig` of the torch module (e.g. `config_from_torch`).
      dtype: storage dtype of the params; None keeps the values' dtype.

    Returns:
      Params (list of layer dicts; ``w_ih`` ``(D, 4H, in_k)``, ...) for `flax_lstm.lstm`.

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
    value_dtypes = set()
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
                value_dtypes.add(value.dtype)
            stacked = np.stack(per_direction)
            layer[key] = jnp.asarray(stacked, dtype=dtype)
        params.append(layer)
    extra = sorted(set(state_dict) - expected_names)
    if extra:
        raise ValueError(f"state_dict has unexpected keys for this config: {extra}")
    if dtype is None:
        _warn_if_narrowed(value_dtypes)
    return params


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def config_from_state_dict(
    state_dict: Mapping[str, Any], *, batch_first: bool = False, dropout: float = 0.0
) -> LSTMConfig:
    """The `LSTMConfig` of a ``torch.nn.LSTM`` state dict, its sizes read off the weights.

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``bidirectional`` and
    ``proj_size`` follow from the names and shapes; `from_torch_state_dict` then checks every
    key and shape against the config.

    Args:
      state_dict: ``torch.nn.LSTM(...).state_dict()`` (torch tensors or NumPy arrays):
        ``weight_ih_l0`` ``(4H, input_size)``, ...
      batch_first, dropout: not in a state dict: given here (torch's defaults).

    Returns:
      The `LSTMConfig`.

    Example:
      >>> import torch, flax_lstm as fl
      >>> sd = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2).state_dict()
      >>> config = fl.config_from_state_dict(sd, batch_first=True)
      >>> config.input_size, config.hidden_size, config.num_layers, config.proj_size
      (3, 6, 2, 2)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"expected a torch.nn.LSTM or its state_dict, got {type(state_dict).__name__}"
        )
    if "weight_ih_l0" not in state_dict:
        raise KeyError(
            "state_dict is missing 'weight_ih_l0': not the state dict of a torch.nn.LSTM"
        )
    w_ih = _shape(state_dict["weight_ih_l0"])
    if len(w_ih) != 2 or w_ih[0] % 4:
        raise ValueError(f"state_dict['weight_ih_l0'] must have shape (4H, in), got {w_ih}")
    num_layers = 0
    while f"weight_ih_l{num_layers}" in state_dict:
        num_layers += 1
    proj = _shape(state_dict["weight_hr_l0"])[0] if "weight_hr_l0" in state_dict else 0
    return LSTMConfig(
        input_size=w_ih[1],
        hidden_size=w_ih[0] // 4,
        num_layers=num_layers,
        bias="bias_ih_l0" in state_dict,
        batch_first=batch_first,
        dropout=dropout,
        bidirectional="weight_ih_l0_reverse" in state_dict,
        proj_size=proj,
    )


def from_torch(
    source: Any,
    *,
    batch_first: bool | None = None,
    dropout: float | None = None,
    dtype: Any = None,
) -> tuple[LSTMConfig, Params]:
    """The config and params of a ``torch.nn.LSTM``, or of its state dict.

    Args:
      source: a ``torch.nn.LSTM`` (its constructor arguments give the config) or its
        ``state_dict()`` (torch tensors or NumPy arrays; the config is read off the weights,
        see `config_from_state_dict`).
      batch_first, dropout: override the module's; for a state dict, default False and 0.0.
      dtype: storage dtype of the params; None keeps the weights' dtype (see
        `from_torch_state_dict` for float64).

    Returns:
      ``(config, params)``: the `LSTMConfig` and params (``w_ih`` ``(D, 4H, in_k)``, ...) for
      ``flax_lstm.lstm(params, x, config=config)``.

    Example:
      >>> import torch, flax_lstm as fl
      >>> config, params = fl.from_torch(torch.nn.LSTM(3, 5, batch_first=True))
      >>> config.batch_first, params[0]['w_hh'].shape
      (True, (1, 20, 5))
      >>> config, _ = fl.from_torch(torch.nn.LSTM(3, 5).state_dict(), dropout=0.0)
      >>> config.batch_first
      False
    """
    if hasattr(source, "state_dict") and not isinstance(source, Mapping):
        config = config_from_torch(source)
        overrides = {
            k: v for k, v in (("batch_first", batch_first), ("dropout", dropout)) if v is not None
        }
        if overrides:
            config = dataclasses.replace(config, **overrides)
        state_dict = source.state_dict()
    else:
        config = config_from_state_dict(
            source, batch_first=bool(batch_first), dropout=dropout or 0.0
        )
        state_dict = source
    return config, from_torch_state_dict(state_dict, config, dtype=dtype)


def cell_params_from_torch(source: Any, dtype: Any = None) -> dict[str, Array]:
    """The params of a ``torch.nn.LSTMCell``, or of its state dict, for `lstm_cell`.

    Args:
      source: a ``torch.nn.LSTMCell`` or its ``state_dict()`` (``weight_ih`` ``(4H, in)``,
        ``weight_hh`` ``(4H, H)``, and ``bias_ih``, ``bias_hh`` ``(4H,)`` with bias).
      dtype: storage dtype; None keeps the weights' dtype.

    Returns:
      ``{'w_ih': (4H, in), 'w_hh': (4H, H), 'b_ih': (4H,), 'b_hh': (4H,)}`` (no biases
      without bias), as `flax_lstm.init_cell_params` makes them.

    Example:
      >>> import torch, flax_lstm as fl
      >>> p = fl.cell_params_from_torch(torch.nn.LSTMCell(3, 5))
      >>> {k: v.shape for k, v in p.items()}
      {'w_ih': (20, 3), 'w_hh': (20, 5), 'b_ih': (20,), 'b_hh': (20,)}
    """
    state_dict = source.state_dict() if hasattr(source, "state_dict") else source
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"expected a torch.nn.LSTMCell or its state_dict, got {type(source).__name__}"
        )
    unexpected = sorted(set(state_dict) - {_TORCH_NAMES[k] for k in _CELL_KEYS})
    if unexpected:
        raise ValueError(f"not a torch.nn.LSTMCell state dict: unexpected keys {unexpected}")
    # One direction of a one-layer LSTM has the same parameters under suffixed names.
    renamed = {f"{k}_l0": v for k, v in state_dict.items()}
    params = from_torch_state_dict(renamed, config_from_state_dict(renamed), dtype=dtype)
    return {k: v[0] for k, v in params[0].items()}


def cell_to_torch_state_dict(
    params: Mapping[str, Any], *, as_tensors: bool = False
) -> dict[str, Any]:
    """``torch.nn.LSTMCell``'s state dict of cell params, or of a pytree shaped like them.

    Args:
      params: ``{'w_ih': (4H, in), 'w_hh': (4H, H), 'b_ih': (4H,), 'b_hh': (4H,)}``
        (biases optional), e.g. from `flax_lstm.init_cell_params` or gradients.
      as_tensors: return torch tensors (bfloat16 bit-exact) instead of NumPy arrays.

    Returns:
      ``{'weight_ih': ..., 'weight_hh': ..., 'bias_ih': ..., 'bias_hh': ...}`` in torch's
      order, same shapes and dtype.

    Example:
      >>> import jax, torch, flax_lstm as fl
      >>> p = fl.init_cell_params(jax.random.key(0), 3, 5)
      >>> sd = fl.cell_to_torch_state_dict(p, as_tensors=True)
      >>> torch.nn.LSTMCell(3, 5).load_state_dict(sd)
      <All keys matched successfully>
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    unexpected = sorted(set(params) - set(_CELL_KEYS))
    if unexpected:
        raise ValueError(f"not torch.nn.LSTMCell parameters: unexpected keys {unexpected}")
    state_dict = {_TORCH_NAMES[k]: np.array(params[k]) for k in _CELL_KEYS if k in params}
    return _export(state_dict, as_tensors)


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

"""Parameters: their layout and their initialisation (conversion to and from torch's state
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

Initialisation: by default every entry is drawn from torch's U(-1/√H, 1/√H) (`torch_uniform`).
``kernel_init`` (``w_ih``), ``recurrent_kernel_init`` (``w_hh``) and ``bias_init`` (``b_ih``,
``b_hh``) replace it, as on Flax's layers: each is a Flax initializer
``(key, shape, dtype) -> array``, called once per parameter with the parameter's stored shape
(torch's layout, the fan-in on the last axis: pass ``in_axis=-1, out_axis=-2`` to Flax's
variance-scaling initializers, and ``batch_axis=0`` for `init_params`' direction axis). An
initializer wrapped with ``flax.nnx.with_partitioning`` or ``flax.linen.with_partitioning``
returns its box unchanged, which the Flax modules turn into partitioning metadata. ``w_hr``
keeps torch's initialisation. One key per layer (`init_params`) or per cell
(`init_cell_params`) is split into one key per parameter, in the order of the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from flax_lstm import _checks, _random
from flax_lstm.config import LSTMConfig

Array = jax.Array
LayerParams = dict[str, Array]
Params = list[LayerParams]
# A Flax initializer: ``(key, shape, dtype) -> array`` (or a Flax partitioning box of one).
Initializer = Callable[..., Any]

__all__ = ["cell_params", "init_cell_params", "init_params", "torch_uniform"]


def torch_uniform(hidden_size: int) -> Initializer:
    """torch's LSTM initializer, U(-1/√hidden_size, 1/√hidden_size), as a Flax initializer.

    The default of every parameter; wrap it to keep torch's initialisation and add metadata,
    e.g. ``nnx.with_partitioning(fl.torch_uniform(H), (None, 'model', None))``.

    Args:
      hidden_size: H, which sets the bound.

    Returns:
      ``init(key, shape, dtype=float32) -> Array``.

    Example:
      >>> import jax, flax_lstm as fl
      >>> w = fl.torch_uniform(16)(jax.random.key(0), (64, 3))
      >>> w.shape, bool(abs(w).max() <= 0.25)
      ((64, 3), True)
    """
    bound = 1.0 / math.sqrt(hidden_size)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return _random.uniform(key, shape, dtype, -bound, bound)

    return init


# (kernel_init, recurrent_kernel_init, bias_init); None stands for torch_uniform.
_Inits = tuple[Initializer | None, Initializer | None, Initializer | None]


_T = TypeVar("_T")


def by_parameter(kernel: _T, recurrent_kernel: _T, bias: _T, projection: _T) -> dict[str, _T]:
    """A per-role setting (an initializer, Flax metadata) for each parameter, by name: ``w_ih``
    takes the kernel's, ``w_hh`` the recurrent kernel's, ``b_ih`` and ``b_hh`` the bias's,
    ``w_hr`` the projection's."""
    return {
        "w_ih": kernel,
        "w_hh": recurrent_kernel,
        "b_ih": bias,
        "b_hh": bias,
        "w_hr": projection,
    }


def _initializers(hidden_size: int, inits: _Inits) -> dict[str, Initializer]:
    """Each parameter's initializer, by name (`torch_uniform` where ``inits`` has None)."""
    default = torch_uniform(hidden_size)
    kernel, recurrent, bias = (init or default for init in inits)
    return by_parameter(kernel, recurrent, bias, default)


def _draw(
    key: Array, shapes: Mapping[str, tuple[int, ...]], hidden_size: int, inits: _Inits, dtype: Any
) -> dict[str, Any]:
    """One parameter dict: ``key`` split into one key per parameter, each drawn by its init."""
    by_name = _initializers(hidden_size, inits)
    keys = jax.random.split(key, len(shapes))
    return {
        name: by_name[name](k, shape, dtype)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def _check_initializers(inits: _Inits) -> _Inits:
    names = ("kernel_init", "recurrent_kernel_init", "bias_init")
    for name, init in zip(names, inits, strict=True):
        if init is not None and not callable(init):
            raise TypeError(f"{name} must be an initializer (key, shape, dtype), got {init!r}")
    return inits


def init_params(
    key: Array,
    config: LSTMConfig,
    dtype: Any = jnp.float32,
    *,
    kernel_init: Initializer | None = None,
    recurrent_kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
) -> Params:
    """Initialise parameters; by default as torch does, every entry ~ U(-1/√H, 1/√H).

    Args:
      key: a JAX PRNG key, split into one key per layer and then one per parameter.
      config: the `LSTMConfig`.
      dtype: parameter (storage) dtype.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers for ``w_ih``,
        ``w_hh`` and both biases, called with the stored shape ``(D, 4H, in_k)``,
        ``(D, 4H, H_out)``, ``(D, 4H)``; None: `torch_uniform` (see the module docstring).

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
    inits = _check_initializers((kernel_init, recurrent_kernel_init, bias_init))
    # torch's init, jitted: one compiled program per config instead of one per weight shape
    # (random ops compile slowly on CPU, see flax_lstm._random). Other initializers run as
    # Flax's layers run them: eagerly, free to return partitioning boxes.
    draw = _init_layers_jit if inits == (None, None, None) else _init_layers
    params = draw(key, config, jnp.dtype(dtype), inits)
    # jit returns dicts with sorted keys; keep torch's order, as from_torch_state_dict does.
    order = _checks.expected_layer_shapes(1, 1, 1, True)  # w_ih, w_hh, b_ih, b_hh, w_hr
    return [{name: layer[name] for name in order if name in layer} for layer in params]


def _init_layers(key: Array, config: LSTMConfig, dtype: Any, inits: _Inits) -> Params:
    d = config.num_directions
    layer_keys = jax.random.split(key, config.num_layers)
    params = []
    for k in range(config.num_layers):
        shapes = _checks.expected_layer_shapes(
            config.layer_input_size(k), config.hidden_size, config.proj_size, config.bias
        )
        shapes = {n: (d, *s) for n, s in shapes.items()}
        params.append(_draw(layer_keys[k], shapes, config.hidden_size, inits, dtype))
    return params


_init_layers_jit = jax.jit(_init_layers, static_argnums=(1, 2, 3))


def init_cell_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    proj_size: int = 0,
    dtype: Any = jnp.float32,
    kernel_init: Initializer | None = None,
    recurrent_kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
) -> dict[str, Array]:
    """Initialise one cell's parameters for `lstm_cell`; by default torch.nn.LSTMCell's init.

    The one initialisation of `flax_lstm.nnx.LSTMCell` and `flax_lstm.linen.LSTMCell`.

    Args:
      key: a JAX PRNG key, split into one key per parameter.
      input_size, hidden_size, bias, proj_size: the cell's sizes and options.
      dtype: parameter (storage) dtype.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers for ``w_ih``
        ``(4H, in)``, ``w_hh`` ``(4H, H_out)`` and both biases ``(4H,)``; None:
        `torch_uniform` (see the module docstring).

    Returns:
      ``{'w_ih': (4H, in), 'w_hh': (4H, H_out), 'b_ih': (4H,), 'b_hh': (4H,)}`` plus
      ``'w_hr': (proj_size, H)`` when ``proj_size > 0``.

    Example:
      >>> import jax, flax_lstm as fl
      >>> p = fl.init_cell_params(jax.random.key(0), 3, 5, bias=False)
      >>> sorted(p)
      ['w_hh', 'w_ih']
    """
    config = LSTMConfig(input_size, hidden_size, bias=bias, proj_size=proj_size)
    inits = _check_initializers((kernel_init, recurrent_kernel_init, bias_init))
    shapes = _checks.expected_layer_shapes(input_size, hidden_size, config.proj_size, config.bias)
    return _draw(key, shapes, hidden_size, inits, jnp.dtype(dtype))


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

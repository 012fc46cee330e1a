"""Argument checks shared by the functional core and the wrappers.

Every check runs on static shapes and dtypes, so it raises the same clear ValueError or
TypeError eagerly and while `jax.jit` traces, before anything reaches XLA.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(name: str, value: Any) -> jax.Array:
    """``value`` as a JAX array of a floating dtype, or a TypeError naming ``name``."""
    try:
        arr = jnp.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array of floats, got {type(value).__name__}") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {arr.dtype}")
    return arr


def check_recurrent_dropout(rate: Any) -> float:
    """``rate`` as a float in [0, 1), or a ValueError naming ``recurrent_dropout``."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= float(rate) < 1:
        raise ValueError(f"recurrent_dropout must be in [0, 1), got {rate!r}")
    return float(rate)


def check_pair(name: str, value: Any) -> tuple[Any, Any]:
    """``value`` as a pair ``(h, c)``, or a TypeError naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (h, c) of arrays, got {type(value).__name__}")
    return value[0], value[1]


def check_shape(name: str, value: Any, expected: tuple[int, ...]) -> None:
    shape = tuple(np.shape(value))
    if shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {shape}")


def expected_layer_shapes(
    input_size: int, hidden_size: int, proj_size: int, bias: bool
) -> dict[str, tuple[int, ...]]:
    """Shapes of one direction's parameters, torch layout: ``{'w_ih': (4H, in), ...}``."""
    out = proj_size or hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "w_ih": (4 * hidden_size, input_size),
        "w_hh": (4 * hidden_size, out),
    }
    if bias:
        shapes["b_ih"] = shapes["b_hh"] = (4 * hidden_size,)
    if proj_size:
        shapes["w_hr"] = (proj_size, hidden_size)
    return shapes


def _check_keys(name: str, params: Any, expected: Mapping[str, Any]) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a dict of arrays, got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{name} must have keys {sorted(expected)}; missing {missing}, unexpected {extra}"
        )


def check_cell_params(params: Any, name: str = "params") -> None:
    """Check one direction's parameters, the argument ``name``, for internal consistency
    (sizes read off ``w_ih``)."""
    if not isinstance(params, Mapping) or "w_ih" not in params:
        raise TypeError(f"{name} must be a dict with at least 'w_ih' and 'w_hh'")
    w_ih = params["w_ih"]
    if np.ndim(w_ih) != 2 or np.shape(w_ih)[0] % 4:
        raise ValueError(f"{name}['w_ih'] must have shape (4H, in), got {np.shape(w_ih)}")
    hidden, in_size = np.shape(w_ih)[0] // 4, np.shape(w_ih)[1]
    proj = np.shape(params["w_hr"])[0] if "w_hr" in params else 0
    expected = expected_layer_shapes(in_size, hidden, proj, "b_ih" in params)
    _check_keys(name, params, expected)
    for key, shape in expected.items():
        check_shape(f"{name}[{key!r}]", params[key], shape)


def check_params(params: Any, config: Any) -> None:
    """Check that ``params`` is what `init_params` makes for ``config``: layers, keys, shapes."""
    if not isinstance(params, Sequence) or len(params) != config.num_layers:
        got = len(params) if isinstance(params, Sequence) else type(params).__name__
        raise ValueError(
            f"params must be a list of {config.num_layers} layer dicts (config.num_layers), "
            f"got {got}"
        )
    d = config.num_directions
    for k, layer in enumerate(params):
        expected = expected_layer_shapes(
            config.layer_input_size(k), config.hidden_size, config.proj_size, config.bias
        )
        _check_keys(f"params[{k}]", layer, expected)
        for key, shape in expected.items():
            check_shape(f"params[{k}][{key!r}]", layer[key], (d, *shape))

"""`LSTMConfig`: the static description of an LSTM, validated exactly as `torch.nn.LSTM`."""

from __future__ import annotations

import dataclasses
import numbers
import warnings

__all__ = ["LSTMConfig"]


def _check_int(name: str, value: object) -> int:
    # torch raises TypeError for a non-int size; bool is an int in Python but never a size.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise TypeError(f"{name} should be a bool, got: {value!r}")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """Hyper-parameters of a multi-layer LSTM, with the meaning of `torch.nn.LSTM`'s arguments.

    The config is frozen and hashable, so it can be a static argument of `jax.jit`.

    Args:
      input_size: features per time step of the input, ``in_0``.
      hidden_size: size of the cell state ``c`` (``H_cell``), and of ``h`` without a projection.
      num_layers: number of stacked layers.
      bias: if False, the layers have no ``b_ih``/``b_hh``.
      batch_first: input and output are ``(N, L, F)`` instead of ``(L, N, F)``. Never applies to
        ``h``/``c``.
      dropout: probability of inverted dropout on the output of every layer but the last.
      bidirectional: run a reverse direction too and concatenate both outputs.
      proj_size: if > 0, ``h`` is projected to this size after every step (``H_out``).

    Derived sizes: ``num_directions`` (D), ``output_size`` (H_out = proj_size or hidden_size),
    ``num_states`` (D·num_layers, the leading axis of ``h``/``c``), ``layer_input_size(k)``
    (input_size for k = 0, D·H_out after).

    Example:
      >>> import flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
      >>> config.num_directions, config.output_size, config.layer_input_size(1)
      (2, 16, 32)
      >>> config.num_states  # h_0 is (4, N, 16): row layer·D + direction
      4
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__  # frozen: normalise in place once, here only.
        setattr_(self, "input_size", _check_int("input_size", self.input_size))
        setattr_(self, "hidden_size", _check_int("hidden_size", self.hidden_size))
        setattr_(self, "num_layers", _check_int("num_layers", self.num_layers))
        setattr_(self, "proj_size", _check_int("proj_size", self.proj_size))
        for name in ("bias", "batch_first", "bidirectional"):
            setattr_(self, name, _check_bool(name, getattr(self, name)))
        dropout = self.dropout
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, numbers.Real)
            or not 0 <= dropout <= 1
        ):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of "
                f"an element being zeroed, got: {dropout!r}"
            )
        setattr_(self, "dropout", float(dropout))
        if self.input_size <= 0:
            raise ValueError(f"input_size must be greater than zero, got: {self.input_size}")
        if self.hidden_size <= 0:
            raise ValueError(f"hidden_size must be greater than zero, got: {self.hidden_size}")
        if self.num_layers <= 0:
            raise ValueError(f"num_layers must be greater than zero, got: {self.num_layers}")
        if self.proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections, "
                f"got: {self.proj_size}"
            )
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size, got proj_size={self.proj_size} "
                f"and hidden_size={self.hidden_size}"
            )
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={self.dropout} and "
                f"num_layers={self.num_layers}",
                UserWarning,
                stacklevel=3,
            )

    @property
    def num_directions(self) -> int:
        """D: 2 if bidirectional else 1."""
        return 2 if self.bidirectional else 1

    @property
    def num_states(self) -> int:
        """D·num_layers: one ``(h, c)`` per layer and direction, the leading axis of ``h_0``,
        ``c_0``, ``h_n`` and ``c_n`` (row ``layer·D + direction``)."""
        return self.num_directions * self.num_layers

    @property
    def output_size(self) -> int:
        """H_out: the size of ``h`` (proj_size if > 0, else hidden_size)."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        """Input features of layer ``layer``: input_size for layer 0, D·H_out after."""
        return self.input_size if layer == 0 else self.num_directions * self.output_size

"""Flax Linen modules over the functional core: `LSTM` (a ``torch.nn.LSTM``) and `LSTMCell`.

The modules declare the parameters and call `flax_lstm.lstm` / `flax_lstm.lstm_cell` once per
forward; there is no second copy of the recurrence here. The input size is inferred from the
input at ``init``. An LSTM's ``params`` collection holds ``layer_0``, ``layer_1``, ...: one dict
per layer with exactly the keys and shapes of `flax_lstm.init_params` (torch layout with a
leading direction axis), plus ``h0``/``c0`` with ``learnable_initial_state``.

Dropout (between layers, and the optional recurrent dropout) is applied when
``deterministic=False``, with keys from the ``'dropout'`` RNG stream
(``module.apply(..., rngs={'dropout': key})``): the same key gives the same masks.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import flax_lstm as fl
  >>> module = fl.linen.LSTM(hidden_size=5, num_layers=2, dropout=0.1)
  >>> x = jnp.ones((7, 2, 3))  # (L, N, input_size)
  >>> variables = module.init(jax.random.key(0), x)
  >>> output, (h_n, c_n) = module.apply(variables, x)  # deterministic: no dropout
  >>> output, (h_n, c_n) = module.apply(variables, x, deterministic=False,
  ...                                   rngs={'dropout': jax.random.key(1)})
  >>> output.shape, h_n.shape, sorted(variables['params'])
  ((7, 2, 5), (2, 2, 5), ['layer_0', 'layer_1'])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, overload

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import _flax_cell, _modules
from flax_lstm._flax_cell import LSTMCarry
from flax_lstm._modules import Output, OutputWithStates
from flax_lstm.cell import LSTMState, lstm_cell
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Initializer, Params, init_cell_params, init_params
from flax_lstm.plan import Implementation
from flax_lstm.torch_io import cell_to_torch_state_dict, to_torch_state_dict

Array = jax.Array

__all__ = ["LSTM", "LSTMCell"]


def _params_collection(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``params`` collection (or ``variables`` itself), partitioning boxes removed."""
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a mapping, got {type(variables).__name__}")
    return nn.meta.unbox(variables.get("params", variables))


def _input_size(module: nn.Module, x: Any, w_ih_path: tuple[str, ...], ranks: tuple[int, ...]):
    """The input size: that of the existing ``w_ih`` at ``w_ih_path`` in the ``params``
    collection (apply), else ``x.shape[-1]`` (init); 1 for an ``x`` whose rank is not in
    ``ranks``, so that the functional core raises its own error for it."""
    first, *rest = w_ih_path
    if module.has_variable("params", first):
        w_ih = nn.meta.unbox(module.get_variable("params", first))
        for name in rest:
            w_ih = w_ih[name]
        return int(np.shape(w_ih)[-1])
    shape = np.shape(x)
    return int(shape[-1]) if len(shape) in ranks and shape[-1] > 0 else 1


def _drawn_once(init_all: Callable[[Array], Any]) -> Callable[[Array, Any], Any]:
    """A ``self.param`` initializer ``(key, name) -> init_all(key)[name]`` that calls
    ``init_all`` once, with the key Flax gives the first parameter created
    (``self.make_rng('params')``): all of a module's parameters come from that one key."""
    drawn: list[Any] = []

    def init(key: Array, name: Any) -> Any:
        if not drawn:
            drawn.append(init_all(key))
        return drawn[0][name]

    return init


class LSTM(nn.Module):
    """A multi-layer (bidirectional) LSTM with the semantics of ``torch.nn.LSTM``.

    With D = 2 if bidirectional else 1, H_out = proj_size or hidden_size, H = hidden_size.
    The input size is inferred from ``x.shape[-1]`` at ``init``.

    Attributes:
      hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size: as
        ``torch.nn.LSTM`` (see `flax_lstm.LSTMConfig`; the same validation and errors, raised
        when the module is constructed).
      param_dtype: storage dtype of the parameters.
      dtype, recurrent_dropout, impl: passed to `flax_lstm.lstm` (see there); recurrent
        dropout applies only with ``deterministic=False``; ``impl`` is a
        `flax_lstm.Implementation` or its ``recurrence`` as a string.
      learnable_initial_state: learn ``(h_0, c_0)`` as parameters ``h0`` and ``c0``, zeros at
        first and shared by every batch row (shapes: `initial_state` without N), used when a
        call gets no ``hx``; not part of torch's state dict.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers of every layer's
        ``w_ih`` ``(D, 4H, in_k)``, ``w_hh`` ``(D, 4H, H_out)`` and biases ``(D, 4H)``, called
        with those shapes (see `flax_lstm.init_params`); None: torch's U(-1/√H, 1/√H)
        (`flax_lstm.torch_uniform`). One wrapped with ``nn.with_partitioning`` stores
        ``nn.Partitioned`` boxes, e.g. names ``(None, 'model', None)`` for the 4H gate axis.

    The weights are `flax_lstm.init_params` of one key, the module's
    ``self.make_rng('params')`` at ``init``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax_lstm as fl
      >>> module = fl.linen.LSTM(5, num_layers=2, batch_first=True)
      >>> x = jnp.ones((2, 7, 3))  # (N, L, input_size)
      >>> variables = module.init(jax.random.key(0), x)
      >>> output, (h_n, c_n) = module.apply(variables, x, seq_lengths=jnp.array([7, 4]))
      >>> output.shape, h_n.shape, variables['params']['layer_1']['w_ih'].shape
      ((2, 7, 5), (2, 2, 5), (1, 20, 5))
    """

    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    recurrent_dropout: float = 0.0
    learnable_initial_state: bool = False
    impl: Implementation | str | None = None
    kernel_init: Initializer | None = None
    recurrent_kernel_init: Initializer | None = None
    bias_init: Initializer | None = None

    def __post_init__(self) -> None:
        # Validate the arguments now, as torch does; the dropout warning is given at init.
        self.lstm_config(1, warn=False)
        _modules.check_recurrent_dropout(self.recurrent_dropout)
        Implementation.of(self.impl)  # a clear error now, not at the first call
        super().__post_init__()

    @nn.nowrap
    def lstm_config(self, input_size: int, *, warn: bool = True) -> LSTMConfig:
        """The `flax_lstm.LSTMConfig` of this module for inputs of ``input_size`` features.

        Args:
          input_size: features of the input (``x.shape[-1]``).
          warn: give torch's warning for dropout with a single layer.

        Example:
          >>> import flax_lstm as fl
          >>> fl.linen.LSTM(8, num_layers=2).lstm_config(3).layer_input_size(1)
          8
        """
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", UserWarning)
            return LSTMConfig(
                input_size,
                self.hidden_size,
                self.num_layers,
                bias=self.bias,
                batch_first=self.batch_first,
                dropout=self.dropout,
                bidirectional=self.bidirectional,
                proj_size=self.proj_size,
            )

    @nn.nowrap
    def lstm_params(self, variables: Mapping[str, Any]) -> Params:
        """The parameters as a list of layer dicts (`flax_lstm.init_params` layout).

        Args:
          variables: the module's variables, its ``params`` collection, or a pytree shaped
            like it (e.g. gradients).

        Returns:
          ``[variables['params']['layer_0'], ...]``, for `flax_lstm.lstm` and
          `flax_lstm.to_torch_state_dict`.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> import flax_lstm as fl
          >>> module = fl.linen.LSTM(5, num_layers=2)
          >>> variables = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((7, 3)))
          >>> [p['w_ih'].shape for p in module.lstm_params(variables)]
          [(1, 20, 3), (1, 20, 5)]
        """
        params = _params_collection(variables)
        return [params[f"layer_{k}"] for k in range(self.num_layers)]

    @nn.compact
    def __call__(
        self,
        x: Any,
        hx: tuple[Any, Any] | None = None,
        *,
        seq_lengths: Any = None,
        deterministic: bool = True,
        return_all_states: bool = False,
    ) -> Output | OutputWithStates:
        """Run the LSTM over ``x``; the arguments and results of `flax_lstm.lstm`.

        Args:
          x: the input, ``(L, N, input_size)``; ``(N, L, input_size)`` with ``batch_first``;
            ``(L, input_size)`` unbatched.
          hx, seq_lengths, return_all_states: as in `flax_lstm.lstm`. ``hx`` defaults to
            `initial_state`; passing the last call's ``(h_n, c_n)`` streams in chunks.
          deterministic: True (default) disables dropout; False applies it with keys from
            the ``'dropout'`` RNG stream.

        Returns:
          The `flax_lstm.lstm` result: ``output`` ``(L, N, D·H_out)``, ``(h_n, c_n)`` each
          ``(D·num_layers, N, ·)``, and with ``return_all_states`` the per-step
          `flax_lstm.LSTMState` (``(L, D·num_layers, N, ·)``).
        """
        input_size = _input_size(self, x, ("layer_0", "w_ih"), ranks=(2, 3))
        config = self.lstm_config(input_size, warn=self.is_initializing())

        def init_all(key: Array) -> Params:  # every layer from one key, as fl.nnx.LSTM
            return init_params(
                key, config, self.param_dtype, kernel_init=self.kernel_init,
                recurrent_kernel_init=self.recurrent_kernel_init, bias_init=self.bias_init,
            )  # fmt: skip

        init = _drawn_once(init_all)
        params = [self.param(f"layer_{k}", init, k) for k in range(config.num_layers)]
        initial = None
        if self.learnable_initial_state:
            h0, c0 = _modules.zero_initial_state(config, self.param_dtype)
            initial = (self.param("h0", lambda _: h0), self.param("c0", lambda _: c0))
        return _modules.call_lstm(
            self, params, x, hx, initial, config=config, train=not deterministic,
            make_dropout_key=lambda: self.make_rng("dropout"), seq_lengths=seq_lengths,
            return_all_states=return_all_states,
        )  # fmt: skip

    @nn.nowrap
    def initial_state(
        self, variables: Mapping[str, Any] | None = None, batch_size: int | None = None
    ) -> LSTMState:
        """The state a call starts from without ``hx``: zeros, or the learned ``(h0, c0)``.

        Args:
          variables: the module's variables (needed only with ``learnable_initial_state``).
          batch_size: N; None for an unbatched input.

        Returns:
          `flax_lstm.LSTMState` ``(h, c)``: ``(D·num_layers, N, H_out)``,
          ``(D·num_layers, N, H)`` (no N when ``batch_size`` is None). Pass it as
          ``initial`` to `flax_lstm.streaming.reset_state`.

        Example:
          >>> import flax_lstm as fl
          >>> fl.linen.LSTM(4, num_layers=2).initial_state(batch_size=3).c.shape
          (2, 3, 4)
        """
        learned = None
        if self.learnable_initial_state:
            if variables is None:
                raise ValueError("initial_state needs the variables with learnable_initial_state")
            params = _params_collection(variables)
            learned = jnp.asarray(params["h0"]), jnp.asarray(params["c0"])
        config = self.lstm_config(1, warn=False)
        return _modules.initial_state(config, self.param_dtype, learned, batch_size)

    @nn.nowrap
    def to_torch_state_dict(
        self, variables: Mapping[str, Any], *, as_tensors: bool = False
    ) -> dict[str, Any]:
        """``torch.nn.LSTM``'s state dict of the parameters (`flax_lstm.to_torch_state_dict`).

        Args:
          variables: the module's variables, its ``params`` collection, or a pytree shaped
            like it (e.g. gradients). A learnable initial state is left out.
          as_tensors: torch tensors (bfloat16 bit-exact) instead of NumPy arrays.

        Returns:
          ``{name: array}`` with the names, shapes, order and dtypes of
          ``torch.nn.LSTM(...).state_dict()`` (``weight_ih_l0`` ``(4H, input_size)``, ...).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> import flax_lstm as fl
          >>> module = fl.linen.LSTM(5, bias=False)
          >>> variables = module.init(jax.random.key(0), jnp.ones((7, 3)))
          >>> {k: v.shape for k, v in module.to_torch_state_dict(variables).items()}
          {'weight_ih_l0': (20, 3), 'weight_hh_l0': (20, 5)}
        """
        params = self.lstm_params(variables)
        config = self.lstm_config(int(np.shape(params[0]["w_ih"])[-1]), warn=False)
        return to_torch_state_dict(params, config, as_tensors=as_tensors)

    @classmethod
    def from_torch(
        cls,
        source: Any,
        *,
        batch_first: bool | None = None,
        dropout: float | None = None,
        param_dtype: Any = None,
        **kwargs: Any,
    ) -> tuple[LSTM, dict[str, Any]]:
        """The module and variables of a ``torch.nn.LSTM``: its configuration, exact weights.

        Args:
          source, batch_first, dropout: as `flax_lstm.from_torch`: a ``torch.nn.LSTM`` or its
            ``state_dict()``; ``batch_first``, ``dropout`` override the torch module's.
          param_dtype: storage dtype; None (default) keeps the torch weights' dtype.
          **kwargs: other module attributes (``recurrent_dropout``, ``dtype``, ...). With
            ``learnable_initial_state``, ``h0``/``c0`` start at zeros.

        Returns:
          ``(module, variables)``; ``module.apply(variables, x)`` is torch's eval mode.

        Example:
          >>> import torch, jax.numpy as jnp
          >>> import flax_lstm as fl
          >>> torch_lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
          >>> module, variables = fl.linen.LSTM.from_torch(torch_lstm)
          >>> output, (h_n, c_n) = module.apply(variables, jnp.ones((2, 4, 3)))
          >>> output.shape
          (2, 4, 5)
        """
        fields, params = _modules.lstm_from_torch(source, batch_first, dropout, param_dtype)
        input_size = fields.pop("input_size")
        module = cls(**fields, **kwargs)
        collection: dict[str, Any] = {f"layer_{k}": layer for k, layer in enumerate(params)}
        if module.learnable_initial_state:
            config = module.lstm_config(input_size, warn=False)
            collection["h0"], collection["c0"] = _modules.zero_initial_state(
                config, module.param_dtype
            )
        return module, {"params": collection}


class LSTMCell(nn.RNNCellBase):
    """One LSTM step with ``torch.nn.LSTMCell`` semantics, over `flax_lstm.lstm_cell`.

    The input size is inferred at ``init``. Parameters: ``w_ih`` ``(4H, input_size)``,
    ``w_hh`` ``(4H, H)``, and with ``bias`` ``b_ih``, ``b_hh`` ``(4H,)``: at ``init``,
    `flax_lstm.init_cell_params` of one key, ``self.make_rng('params')``.

    The cell takes two calls, told apart by the type of the first argument:

    - torch's ``cell(x, hx=None) -> LSTMState(h, c)``, ``hx = (h, c)`` (zeros when None);
    - Flax's RNN cell protocol, ``cell(carry, x) -> (carry, y)`` with the carry a
      `flax_lstm.LSTMCarry` ``(c, h)`` (Flax's order, from `initialize_carry`) or a plain
      ``(c, h)`` tuple, and ``y = h``; so ``nn.RNN(cell)``, ``nn.Bidirectional`` and
      ``nn.scan`` take the cell as they take ``nn.OptimizedLSTMCell``.

    A tuple first is Flax's carry, an array first is torch's input; an `flax_lstm.LSTMState`
    as Flax's carry, or an `flax_lstm.LSTMCarry` as torch's ``hx``, is a TypeError.

    Attributes:
      hidden_size: H, the size of ``h`` and ``c``.
      bias: if False, no ``b_ih``/``b_hh``.
      dtype: compute dtype; None: promoted from input and parameters. ``c`` is kept in at
        least float32.
      param_dtype: storage dtype of the parameters.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers of ``w_ih``
        ``(4H, input_size)``, ``w_hh`` ``(4H, H)`` and both biases ``(4H,)``, called with
        those (torch's) shapes; None: torch's U(-1/√H, 1/√H) (`flax_lstm.torch_uniform`).
        One wrapped with ``nn.with_partitioning`` stores ``nn.Partitioned`` boxes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> import flax_lstm as fl
      >>> cell = fl.linen.LSTMCell(5)
      >>> x = jnp.ones((2, 3))
      >>> variables = cell.init(jax.random.key(0), x)
      >>> h, c = cell.apply(variables, x)          # torch's call: zero state
      >>> h, c = cell.apply(variables, x, (h, c))  # next step
      >>> h.shape, c.shape
      ((2, 5), (2, 5))
      >>> rnn = nn.RNN(cell)  # Flax's protocol
      >>> xs = jnp.ones((2, 7, 3))  # (N, L, input_size)
      >>> rnn.apply(rnn.init(jax.random.key(0), xs), xs).shape
      (2, 7, 5)
    """

    hidden_size: int
    bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer | None = None
    recurrent_kernel_init: Initializer | None = None
    bias_init: Initializer | None = None

    def __post_init__(self) -> None:
        LSTMConfig(1, self.hidden_size, bias=self.bias)  # validate as torch
        super().__post_init__()

    @property
    def num_feature_axes(self) -> int:
        """Flax's RNN protocol: ``x`` has one feature axis (the last)."""
        return 1

    @nn.nowrap
    def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> LSTMCarry:
        """Flax's RNN protocol: the zero carry (torch's initial state) for inputs of a shape.

        Args:
          rng: unused (the carry is zeros); in the signature of Flax's cells.
          input_shape: the shape of one step's ``x``: batch axes, then the input size.

        Returns:
          `flax_lstm.LSTMCarry` ``(c, h)``, each ``(*batch, H)``; ``h`` in ``dtype`` (else
          ``param_dtype``), ``c`` in at least float32.

        Example:
          >>> import jax, flax_lstm as fl
          >>> fl.linen.LSTMCell(5).initialize_carry(jax.random.key(0), (2, 3)).c.shape
          (2, 5)
        """
        del rng
        return _flax_cell.zero_carry(input_shape, self.hidden_size, self.dtype, self.param_dtype)

    # fmt: off
    @overload
    def __call__(self, x: Any, hx: tuple[Any, Any] | None = None) -> LSTMState: ...
    @overload
    def __call__(self, x: tuple[Any, Any], hx: Any) -> tuple[LSTMCarry, Array]: ...
    # fmt: on

    @nn.compact
    def __call__(self, x: Any, hx: Any = None) -> LSTMState | tuple[Any, Array]:
        """One step: torch's ``cell(x, hx)`` or Flax's ``cell(carry, x)`` (see the class); the
        first call creates the parameters for the input's size.

        Args:
          x: torch's call: ``(N, input_size)``, or ``(input_size,)`` for one sequence.
            Flax's call: the carry, `flax_lstm.LSTMCarry` ``(c, h)`` or a ``(c, h)`` tuple.
          hx: torch's call: the previous ``(h, c)``, both ``(N, H)`` (or ``(H,)``), or None.
            Flax's call: the input ``(*batch, input_size)``.

        Returns:
          torch's call: the next `flax_lstm.LSTMState`, ``h`` in the compute dtype, ``c`` in
          float32 or wider. Flax's call: ``(carry', h')``, the carry of the type and dtypes
          it came in.
        """
        flax_call = _flax_cell.is_flax_call(x, hx)
        inputs = hx if flax_call else x
        # Flax's call takes any number of batch axes; torch's one or none.
        ranks = tuple(range(1, np.ndim(inputs) + 1)) if flax_call else (1, 2)
        input_size = _input_size(self, inputs, ("w_ih",), ranks=ranks)

        def init_all(key: Array) -> dict[str, Array]:  # from one key, as fl.nnx.LSTMCell
            return init_cell_params(
                key, input_size, self.hidden_size, bias=self.bias, dtype=self.param_dtype,
                kernel_init=self.kernel_init, recurrent_kernel_init=self.recurrent_kernel_init,
                bias_init=self.bias_init,
            )  # fmt: skip

        init = _drawn_once(init_all)
        names = ("w_ih", "w_hh", "b_ih", "b_hh") if self.bias else ("w_ih", "w_hh")
        params = {name: self.param(name, init, name) for name in names}

        def step(x: Any, hx: Any) -> LSTMState:
            return lstm_cell(params, x, hx, dtype=self.dtype)

        return _flax_cell.flax_step(step, x, hx) if flax_call else step(x, hx)

    @nn.nowrap
    def to_torch_state_dict(
        self, variables: Mapping[str, Any], *, as_tensors: bool = False
    ) -> dict[str, Any]:
        """``torch.nn.LSTMCell``'s state dict of the variables (or gradients).

        Args:
          variables: the cell's variables, its ``params`` collection, or a pytree like it.
          as_tensors: return torch tensors (bfloat16 bit-exact), not NumPy arrays.

        Returns:
          `flax_lstm.cell_to_torch_state_dict` of the params: ``weight_ih`` ``(4H, in)``,
          ``weight_hh`` ``(4H, H)``, and with ``bias`` ``bias_ih``, ``bias_hh`` ``(4H,)``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> import flax_lstm as fl
          >>> cell = fl.linen.LSTMCell(5)
          >>> variables = cell.init(jax.random.key(0), jnp.ones((3,)))
          >>> list(cell.to_torch_state_dict(variables))
          ['weight_ih', 'weight_hh', 'bias_ih', 'bias_hh']
        """
        return cell_to_torch_state_dict(_params_collection(variables), as_tensors=as_tensors)

    @classmethod
    def from_torch(
        cls, source: Any, *, param_dtype: Any = None, **kwargs: Any
    ) -> tuple[LSTMCell, dict[str, Any]]:
        """The module and variables of a ``torch.nn.LSTMCell`` (or its state dict).

        Example:
          >>> import torch, flax_lstm as fl
          >>> cell, variables = fl.linen.LSTMCell.from_torch(torch.nn.LSTMCell(3, 5))
          >>> variables['params']['w_ih'].shape
          (20, 3)
        """
        fields, params = _modules.cell_from_torch(source, param_dtype)
        del fields["input_size"]  # inferred from the input
        return cls(**fields, **kwargs), {"params": params}

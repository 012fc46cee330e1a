"""Flax NNX modules over the functional core: `LSTM` (a ``torch.nn.LSTM``) and `LSTMCell`.

The modules own the parameters and call `flax_lstm.lstm` / `flax_lstm.lstm_cell` once per
forward; there is no second copy of the recurrence here. The LSTM's parameters are stored as
``model.layers``: a list with one dict of `flax.nnx.Param` per layer, with exactly the keys and
shapes of `flax_lstm.init_params` (torch layout with a leading direction axis), so
`flax_lstm.to_torch_state_dict` and `flax_lstm.from_torch_state_dict` apply to them.

Dropout (between layers, and the optional recurrent dropout) follows the NNX conventions of
`flax.nnx.Dropout`: it is active while ``deterministic`` is False (``model.train()``) and off
after ``model.eval()``; each call draws a fresh key from the module's own ``'dropout'`` stream,
forked from the ``rngs`` given to the constructor (see the example of `LSTM`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from flax import nnx

from flax_lstm import _flax_cell, _modules
from flax_lstm._flax_cell import LSTMCarry
from flax_lstm._modules import Output, OutputWithStates
from flax_lstm.cell import LSTMState, lstm_cell
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Initializer, Params, by_parameter, init_cell_params, init_params
from flax_lstm.plan import Implementation
from flax_lstm.torch_io import cell_to_torch_state_dict, to_torch_state_dict

Array = jax.Array
RngsArg = nnx.Rngs | nnx.RngStream | Array | None  # a call's dropout stream or key

__all__ = ["LSTM", "LSTMCell"]


def _check_rngs(rngs: Any) -> None:
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")


def _dropout_key(rngs: Any, own: nnx.RngStream | None) -> Array:
    source = rngs if rngs is not None else own
    if isinstance(source, nnx.Rngs):
        return source["dropout"]()
    if isinstance(source, nnx.RngStream):
        return source()
    if isinstance(source, jax.Array):
        return source
    raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a key, got {type(source)}")


class LSTM(nnx.Module):
    """A multi-layer (bidirectional) LSTM with the semantics of ``torch.nn.LSTM``.

    With D = 2 if bidirectional else 1, H_out = proj_size or hidden_size, H = hidden_size.

    Args:
      input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        proj_size: as ``torch.nn.LSTM`` (see `flax_lstm.LSTMConfig`; the same validation and
        errors).
      dtype, recurrent_dropout, impl: passed to `flax_lstm.lstm`, which documents them
        (compute dtype, None: promoted; variational dropout on ``h``, only in training mode,
        0 keeps torch parity; the implementation, a `flax_lstm.Implementation` or its
        ``recurrence`` as a string).
      learnable_initial_state: learn ``(h_0, c_0)`` as parameters ``h0`` ``(D·num_layers,
        H_out)`` and ``c0`` ``(D·num_layers, H)`` (zeros at first, shared by every batch row),
        used when a call gets no ``hx``; not part of torch's state dict.
      param_dtype: storage dtype of the parameters.
      deterministic: initial mode; False (default, as `flax.nnx.Dropout` and torch) applies
        dropout. ``model.train()`` / ``model.eval()`` set it.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers of every layer's
        ``w_ih`` ``(D, 4H, in_k)``, ``w_hh`` ``(D, 4H, H_out)`` and biases ``(D, 4H)``, called
        with those shapes (see `flax_lstm.init_params`); None: torch's U(-1/√H, 1/√H)
        (`flax_lstm.torch_uniform`). One wrapped with ``nnx.with_partitioning`` gives the
        parameters their sharding, e.g. ``(None, 'model', None)`` for the 4H gate axis.
      kernel_metadata, recurrent_kernel_metadata, bias_metadata: metadata of those
        `flax.nnx.Param` (as on Flax's layers), e.g. ``{'out_sharding': (None, 'model',
        None)}``. ``w_hr`` keeps torch's init and no metadata.
      rngs: `flax.nnx.Rngs`. The weights are `flax_lstm.init_params` of one key,
        ``rngs.params()``; with dropout or recurrent dropout, a ``dropout`` stream (or
        ``default``) is forked for the module's own dropout keys.

    Attributes:
      config: the static `flax_lstm.LSTMConfig`.
      layers: list of one dict of `flax.nnx.Param` per layer, keys and shapes of
        `flax_lstm.init_params`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import flax_lstm as fl
      >>> model = fl.nnx.LSTM(3, 5, 2, batch_first=True, dropout=0.1, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 7, 3))  # (N, L, input_size)
      >>> output, (h_n, c_n) = model(x)  # training mode: dropout between the layers
      >>> model.eval()  # no dropout: torch.nn.LSTM(3, 5, 2, dropout=0.1).eval() semantics
      >>> output, (h_n, c_n) = model(x, seq_lengths=jnp.array([7, 4]))
      >>> output.shape, h_n.shape, c_n.shape
      ((2, 7, 5), (2, 2, 5), (2, 2, 5))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        recurrent_dropout: float = 0.0,
        learnable_initial_state: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        impl: Implementation | str | None = None,
        deterministic: bool = False,
        kernel_init: Initializer | None = None,
        recurrent_kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        recurrent_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        rngs: nnx.Rngs,
    ) -> None:
        self.config = LSTMConfig(
            input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, proj_size=proj_size,
        )  # fmt: skip
        self.recurrent_dropout = _modules.check_recurrent_dropout(recurrent_dropout)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.impl = Implementation.of(impl)
        self.deterministic = deterministic
        _check_rngs(rngs)
        params = init_params(
            rngs.params(), self.config, param_dtype, kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_kernel_init, bias_init=bias_init,
        )  # fmt: skip
        # Each parameter's `flax.nnx.Param` metadata; ``w_hr`` takes none.
        meta = by_parameter(kernel_metadata, recurrent_kernel_metadata, bias_metadata, {})
        self.layers = nnx.data(
            [{k: nnx.Param(v, **meta[k]) for k, v in layer.items()} for layer in params]
        )
        if learnable_initial_state:
            h0, c0 = _modules.zero_initial_state(self.config, param_dtype)
            self.h0, self.c0 = nnx.Param(h0), nnx.Param(c0)
        else:
            self.h0 = self.c0 = nnx.data(None)
        self.rngs = nnx.data(self._dropout_stream(rngs))

    def _dropout_stream(self, rngs: nnx.Rngs) -> nnx.RngStream | None:
        if not _modules.needs_dropout_key(self.config, self.recurrent_dropout):
            return None
        try:
            stream = rngs["dropout"]
        except KeyError as e:
            raise ValueError(
                "dropout needs a 'dropout' (or 'default') stream in rngs, e.g. "
                "nnx.Rngs(params=0, dropout=1)"
            ) from e
        return stream.fork()

    @property
    def learnable_initial_state(self) -> bool:
        """Whether ``(h_0, c_0)`` are learned parameters (``h0``, ``c0``)."""
        return self.h0 is not None

    def lstm_params(self) -> Params:
        """The parameters as plain arrays, in the layout of `flax_lstm.init_params`.

        Returns:
          A list of one dict per layer (``w_ih`` ``(D, 4H, in_k)``, ``w_hh``, ...), to pass to
          `flax_lstm.lstm` with ``config=model.config``.

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> model = fl.nnx.LSTM(3, 5, num_layers=2, rngs=nnx.Rngs(0))
          >>> [p['w_ih'].shape for p in model.lstm_params()]
          [(1, 20, 3), (1, 20, 5)]
        """
        return [{k: v[...] for k, v in layer.items()} for layer in self.layers]

    def initial_state(self, batch_size: int | None = None) -> LSTMState:
        """The state a call starts from without ``hx``: zeros, or the learned ``(h0, c0)``.

        Args:
          batch_size: N; None for an unbatched input.

        Returns:
          `flax_lstm.LSTMState` ``(h, c)``: ``(D·num_layers, N, H_out)``,
          ``(D·num_layers, N, H)`` (no N when ``batch_size`` is None), in ``param_dtype``.
          Pass it as ``initial`` to `flax_lstm.streaming.reset_state`.

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> model = fl.nnx.LSTM(3, 5, learnable_initial_state=True, rngs=nnx.Rngs(0))
          >>> model.initial_state(batch_size=2).h.shape
          (1, 2, 5)
        """
        return _modules.initial_state(self.config, self.param_dtype, self._learned(), batch_size)

    def _learned(self) -> tuple[Array, Array] | None:
        if self.h0 is None or self.c0 is None:  # both or neither (see __init__)
            return None
        return self.h0[...], self.c0[...]

    # fmt: off
    @overload
    def __call__(
        self, x: Any, hx: tuple[Any, Any] | None = None, *, seq_lengths: Any = None,
        return_all_states: Literal[False] = False, deterministic: bool | None = None,
        rngs: RngsArg = None,
    ) -> Output: ...
    @overload
    def __call__(
        self, x: Any, hx: tuple[Any, Any] | None = None, *, seq_lengths: Any = None,
        return_all_states: Literal[True], deterministic: bool | None = None,
        rngs: RngsArg = None,
    ) -> OutputWithStates: ...
    # fmt: on

    def __call__(
        self,
        x: Any,
        hx: tuple[Any, Any] | None = None,
        *,
        seq_lengths: Any = None,
        return_all_states: bool = False,
        deterministic: bool | None = None,
        rngs: RngsArg = None,
    ) -> Output | OutputWithStates:
        """Run the LSTM over ``x``; the arguments and results of `flax_lstm.lstm`.

        Args:
          x, hx, seq_lengths, return_all_states: as `flax_lstm.lstm`: ``x``
            ``(L, N, input_size)`` (``(N, L, input_size)`` with ``batch_first``, unbatched
            ``(L, input_size)``), ``hx`` ``(h_0, c_0)`` (default: `initial_state`; the last
            call's ``(h_n, c_n)`` streams a sequence in chunks, see `flax_lstm.streaming`).
          deterministic: overrides the module's mode for this call (True: no dropout).
          rngs: overrides the module's dropout stream for this call (an `flax.nnx.Rngs`, a
            stream or a key).

        Returns:
          ``(output, (h_n, c_n))`` as `flax_lstm.lstm`: ``(L, N, D·H_out)``,
          ``(D·num_layers, N, H_out)``, ``(D·num_layers, N, H)``; with ``return_all_states`` a
          third element, the per-step `flax_lstm.LSTMState` ``(L, D·num_layers, N, H_out)``,
          ``(L, D·num_layers, N, H)``.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> model = fl.nnx.LSTM(3, 5, num_layers=2, rngs=nnx.Rngs(0))
          >>> out, (h_n, c_n), states = model(jnp.ones((7, 3)), return_all_states=True)
          >>> states.h.shape, states.c.shape  # unbatched: (L, D·num_layers, H)
          ((7, 2, 5), (7, 2, 5))
          >>> bool(jnp.allclose(states.h[-1], h_n))
          True
        """
        train = not (self.deterministic if deterministic is None else deterministic)
        return _modules.call_lstm(
            self, self.lstm_params(), x, hx, self._learned(), config=self.config, train=train,
            make_dropout_key=lambda: _dropout_key(rngs, self.rngs), seq_lengths=seq_lengths,
            return_all_states=return_all_states,
        )  # fmt: skip

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by `flax.nnx.view`: ``deterministic=True`` disables dropout.

        Args:
          deterministic: the mode of the view (None: unchanged).

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> model = fl.nnx.LSTM(3, 5, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
          >>> nnx.view(model, deterministic=True).deterministic, model.deterministic
          (True, False)
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def to_torch_state_dict(self, state: Any = None, *, as_tensors: bool = False) -> dict[str, Any]:
        """``torch.nn.LSTM``'s state dict of the parameters (`flax_lstm.to_torch_state_dict`).

        Args:
          state: optional `flax.nnx.State` shaped like the module's parameters, e.g. the
            gradients from `flax.nnx.grad`; default: the module's own parameters. A learnable
            initial state is not part of torch's state dict and is left out.
          as_tensors: torch tensors (bfloat16 bit-exact) instead of NumPy arrays.

        Returns:
          ``{name: array}`` with the names, shapes, order and dtypes of
          ``torch.nn.LSTM(...).state_dict()`` (``weight_ih_l0`` ``(4H, input_size)``, ...).

        Example:
          >>> import torch
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> model = fl.nnx.LSTM(3, 5, num_layers=2, rngs=nnx.Rngs(0))
          >>> sd = model.to_torch_state_dict(as_tensors=True)
          >>> torch.nn.LSTM(3, 5, num_layers=2).load_state_dict(sd)
          <All keys matched successfully>
        """
        layers = self.lstm_params() if state is None else nnx.to_pure_dict(state)["layers"]
        params = [dict(layers[k]) for k in range(self.config.num_layers)]
        return to_torch_state_dict(params, self.config, as_tensors=as_tensors)

    @classmethod
    def from_torch(
        cls,
        source: Any,
        *,
        rngs: nnx.Rngs,
        batch_first: bool | None = None,
        dropout: float | None = None,
        param_dtype: Any = None,
        **kwargs: Any,
    ) -> LSTM:
        """Build the module with a ``torch.nn.LSTM``'s configuration and exact weights.

        Args:
          source, batch_first, dropout: as `flax_lstm.from_torch` (a torch LSTM or its state
            dict; ``batch_first`` and ``dropout`` override the module's).
          rngs: `flax.nnx.Rngs` (for the dropout stream).
          param_dtype: storage dtype; default: the torch weights' own dtype (lossless).
          **kwargs: other constructor options (``recurrent_dropout``, ``dtype``, ...).

        Returns:
          The `LSTM`, in training mode as a fresh torch module (``.eval()``: torch's eval).

        Example:
          >>> import torch
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> torch_lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
          >>> model = fl.nnx.LSTM.from_torch(torch_lstm, rngs=nnx.Rngs(0))
          >>> model.config.batch_first, model.layers[1]['w_ih'].shape
          (True, (1, 20, 5))
        """
        fields, params = _modules.lstm_from_torch(source, batch_first, dropout, param_dtype)
        _check_rngs(rngs)
        # Build the structure without drawing random weights, then fill in torch's.
        model = nnx.eval_shape(lambda: cls(**fields, rngs=nnx.Rngs(0), **kwargs))
        for layer, values in zip(model.layers, params, strict=True):
            for name, value in values.items():
                layer[name].set_value(value)
        if model.h0 is not None and model.c0 is not None:
            h0, c0 = _modules.zero_initial_state(model.config, model.param_dtype)
            model.h0.set_value(h0)
            model.c0.set_value(c0)
        model.rngs = model._dropout_stream(rngs)
        return model


class LSTMCell(nnx.RNNCellBase):
    """One LSTM step with ``torch.nn.LSTMCell`` semantics, over `flax_lstm.lstm_cell`.

    The cell takes two calls, told apart by the type of the first argument:

    - torch's ``cell(x, hx=None) -> LSTMState(h, c)``, ``hx = (h, c)`` (zeros when None);
    - Flax's RNN cell protocol, ``cell(carry, x) -> (carry, y)`` with the carry a
      `flax_lstm.LSTMCarry` ``(c, h)`` (Flax's order, from `initialize_carry`) or a plain
      ``(c, h)`` tuple, and ``y = h``; so ``nnx.RNN(cell)``, ``nnx.Bidirectional`` and
      ``nnx.scan`` take the cell as they take ``nnx.OptimizedLSTMCell``.

    A tuple first is Flax's carry, an array first is torch's input; an `flax_lstm.LSTMState`
    as Flax's carry, or an `flax_lstm.LSTMCarry` as torch's ``hx``, is a TypeError.

    Args:
      input_size: features of ``x``.
      hidden_size: H, the size of ``h`` and ``c``.
      bias: if False, no ``b_ih``/``b_hh``.
      dtype: compute dtype; None: promoted from input and parameters. ``c`` is kept in at
        least float32.
      param_dtype: storage dtype of the parameters.
      kernel_init, recurrent_kernel_init, bias_init: Flax initializers of ``w_ih``
        ``(4H, input_size)``, ``w_hh`` ``(4H, H)`` and both biases ``(4H,)``, called with
        those (torch's) shapes; None: torch's U(-1/√H, 1/√H) (`flax_lstm.torch_uniform`).
        One wrapped with ``nnx.with_partitioning`` gives the parameter its sharding.
      kernel_metadata, recurrent_kernel_metadata, bias_metadata: metadata of the
        `flax.nnx.Param` of ``w_ih``, ``w_hh`` and the biases (as on Flax's layers), e.g.
        ``{'out_sharding': ('model', None)}``.
      rngs: `flax.nnx.Rngs`; the weights are `flax_lstm.init_cell_params` of one key,
        ``rngs.params()``.

    Attributes:
      w_ih ``(4H, input_size)``, w_hh ``(4H, H)``, b_ih, b_hh ``(4H,)`` (`flax.nnx.Param`;
      the biases are None without ``bias``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import flax_lstm as fl
      >>> cell = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
      >>> h, c = cell(jnp.ones((2, 3)))          # torch's call: zero state
      >>> h, c = cell(jnp.ones((2, 3)), (h, c))  # next step
      >>> h.shape, c.shape
      ((2, 5), (2, 5))
      >>> nnx.RNN(cell)(jnp.ones((2, 7, 3))).shape  # Flax's protocol: (N, L, H)
      (2, 7, 5)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        recurrent_kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        recurrent_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        rngs: nnx.Rngs,
    ) -> None:
        _check_rngs(rngs)
        params = init_cell_params(
            rngs.params(), input_size, hidden_size, bias=bias, dtype=param_dtype,
            kernel_init=kernel_init, recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init,
        )  # fmt: skip
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bias
        self.dtype, self.param_dtype = dtype, param_dtype
        self.b_ih = self.b_hh = nnx.data(None)  # without bias
        metadata = by_parameter(kernel_metadata, recurrent_kernel_metadata, bias_metadata, {})
        for name, value in params.items():
            setattr(self, name, nnx.Param(value, **metadata[name]))

    @property
    def num_feature_axes(self) -> int:
        """Flax's RNN protocol: ``x`` has one feature axis (the last)."""
        return 1

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: nnx.Rngs | nnx.RngStream | None = None
    ) -> LSTMCarry:
        """Flax's RNN protocol: the zero carry (torch's initial state) for inputs of a shape.

        Args:
          input_shape: the shape of one step's ``x``: batch axes, then ``input_size``.
          rngs: unused (the carry is zeros); in the signature of Flax's cells.

        Returns:
          `flax_lstm.LSTMCarry` ``(c, h)``, each ``(*batch, H)``; ``h`` in ``dtype`` (else
          ``param_dtype``), ``c`` in at least float32.

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> cell = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
          >>> cell.initialize_carry((2, 3)).h.shape
          (2, 5)
        """
        del rngs
        return _flax_cell.zero_carry(input_shape, self.hidden_size, self.dtype, self.param_dtype)

    def cell_params(self) -> dict[str, Array]:
        """The parameters as plain arrays, in the layout `flax_lstm.lstm_cell` takes.

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> sorted(fl.nnx.LSTMCell(3, 5, bias=False, rngs=nnx.Rngs(0)).cell_params())
          ['w_hh', 'w_ih']
        """
        names = ("w_ih", "w_hh", "b_ih", "b_hh") if self.bias else ("w_ih", "w_hh")
        return {name: getattr(self, name)[...] for name in names}

    # fmt: off
    @overload
    def __call__(self, x: Any, hx: tuple[Any, Any] | None = None) -> LSTMState: ...
    @overload
    def __call__(self, x: tuple[Any, Any], hx: Any) -> tuple[LSTMCarry, Array]: ...
    # fmt: on

    def __call__(self, x: Any, hx: Any = None) -> LSTMState | tuple[Any, Array]:
        """One step: torch's ``cell(x, hx)`` or Flax's ``cell(carry, x)`` (see the class).

        Args:
          x: torch's call: ``(N, input_size)`` or unbatched ``(input_size,)``. Flax's call:
            the carry, `flax_lstm.LSTMCarry` ``(c, h)`` or a ``(c, h)`` tuple.
          hx: torch's call: optional ``(h, c)``, each ``(N, H)`` (unbatched ``(H,)``); zeros
            when None. Flax's call: the input ``(*batch, input_size)``.

        Returns:
          torch's call: `flax_lstm.LSTMState` ``(h', c')``, ``h'`` in the compute dtype,
          ``c'`` in at least float32. Flax's call: ``(carry', h')``, the carry of the type and
          dtypes it came in.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> cell = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
          >>> x = jnp.ones((2, 3))
          >>> carry, y = cell(cell.initialize_carry(x.shape), x)  # Flax's (c, h)
          >>> h, c = cell(x)                                      # torch's (h, c)
          >>> bool((y == h).all() and (carry.c == c).all())
          True
        """
        if _flax_cell.is_flax_call(x, hx):
            return _flax_cell.flax_step(self._step, x, hx)
        return self._step(x, hx)

    def _step(self, x: Any, hx: Any) -> LSTMState:
        return lstm_cell(self.cell_params(), x, hx, dtype=self.dtype)

    def to_torch_state_dict(self, state: Any = None, *, as_tensors: bool = False) -> dict[str, Any]:
        """``torch.nn.LSTMCell``'s state dict of the parameters.

        Args:
          state: optional `flax.nnx.State` shaped like the cell's parameters, e.g. gradients
            from `flax.nnx.grad`; default: the cell's own parameters.
          as_tensors: torch tensors (bfloat16 bit-exact) instead of NumPy arrays.

        Returns:
          ``{'weight_ih': (4H, in), 'weight_hh': (4H, H), 'bias_ih': (4H,), 'bias_hh': (4H,)}``
          (no biases without ``bias``), see `flax_lstm.cell_to_torch_state_dict`.

        Example:
          >>> from flax import nnx
          >>> import flax_lstm as fl
          >>> cell = fl.nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))
          >>> list(cell.to_torch_state_dict())
          ['weight_ih', 'weight_hh', 'bias_ih', 'bias_hh']
        """
        params = self.cell_params() if state is None else nnx.to_pure_dict(state)
        return cell_to_torch_state_dict(params, as_tensors=as_tensors)

    @classmethod
    def from_torch(cls, source: Any, *, param_dtype: Any = None, **kwargs: Any) -> LSTMCell:
        """Build the cell from a ``torch.nn.LSTMCell`` or its state dict, with exact weights.

        Args:
          source: a ``torch.nn.LSTMCell`` or its ``state_dict()``.
          param_dtype: storage dtype; default: the torch weights' dtype.
          **kwargs: other constructor options (``dtype``).

        Example:
          >>> import torch, flax_lstm as fl
          >>> cell = fl.nnx.LSTMCell.from_torch(torch.nn.LSTMCell(3, 5))
          >>> cell.w_hh.shape
          (20, 5)
        """
        fields, params = _modules.cell_from_torch(source, param_dtype)
        cell = nnx.eval_shape(lambda: cls(**fields, rngs=nnx.Rngs(0), **kwargs))
        for name, value in params.items():
            getattr(cell, name).set_value(value)
        return cell

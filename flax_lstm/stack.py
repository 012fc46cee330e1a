"""`lstm`: layers × directions over the recurrence, with torch.nn.LSTM's calling convention."""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import _checks, _random
from flax_lstm import plan as plans
from flax_lstm.cell import LSTMState, accumulation_dtype
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Params
from flax_lstm.plan import Implementation, Plan
from flax_lstm.recurrence import LayerWeights, reverse_sequences, run_layer

Array = jax.Array
# `lstm`'s results: ``(output, (h_n, c_n))``, and with ``return_all_states`` the per-step states.
Output = tuple[Array, LSTMState]
OutputWithStates = tuple[Array, LSTMState, LSTMState]

__all__ = ["lstm", "lstm_plan"]


def _check_seq_lengths(seq_lengths: Any, batch: int | None, seq_len: int) -> Array:
    lengths = jnp.asarray(seq_lengths)
    expected = () if batch is None else (batch,)
    if lengths.shape != expected:
        what = "a scalar for unbatched input" if batch is None else f"shape ({batch},)"
        raise ValueError(f"seq_lengths must be {what}, got shape {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must have an integer dtype, got {lengths.dtype}")
    try:
        values = np.asarray(seq_lengths)
    except jax.errors.JAXTypeError:  # a tracer under jit/vmap: clamped below, see lstm()
        values = None
    if values is not None and values.size and (values.min() < 0 or values.max() > seq_len):
        raise ValueError(
            f"seq_lengths must lie in [0, {seq_len}] (the input's sequence length), got "
            f"values in [{values.min()}, {values.max()}]"
        )
    return jnp.clip(lengths, 0, seq_len).astype(jnp.int32)


class _Call(NamedTuple):
    """A validated call of `lstm`: its arrays, compute dtype and plan."""

    x: Array
    h0: Array | None
    c0: Array | None
    lengths: Array | None
    dtype: jnp.dtype
    plan: Plan


def _check_input(x: Array, config: LSTMConfig) -> tuple[int, int]:
    """``(seq_len, batch)`` of a checked input (batch 1 when unbatched)."""
    if x.ndim not in (2, 3):
        raise ValueError(
            "input must be 3-D (L, N, input_size) / (N, L, input_size) with batch_first, or 2-D "
            f"(L, input_size) unbatched; got shape {x.shape}"
        )
    if x.shape[-1] != config.input_size:
        raise ValueError(
            f"input.size(-1) must be equal to input_size. Expected {config.input_size}, "
            f"got {x.shape[-1]} (input shape {x.shape})"
        )
    batched = x.ndim == 3
    seq_len = x.shape[1] if batched and config.batch_first else x.shape[0]
    batch = (x.shape[0] if config.batch_first else x.shape[1]) if batched else 1
    if seq_len == 0:
        raise ValueError(f"input must have at least one time step, got shape {x.shape}")
    return seq_len, batch


def zero_state(
    config: LSTMConfig, batch_shape: tuple[int, ...], dtype: Any, *, cell_dtype: Any = None
) -> LSTMState:
    """The state `lstm` starts from when ``hx`` is None: zeros, ``h`` in the compute ``dtype``
    and ``c`` in its accumulation dtype (``cell_dtype`` None) or ``cell_dtype``.

    Shapes ``(D·num_layers, *batch_shape, H_out)`` and ``(D·num_layers, *batch_shape, H)``.
    `flax_lstm.streaming.zero_state` is its public face.
    """
    c_dtype = accumulation_dtype(dtype) if cell_dtype is None else cell_dtype
    return LSTMState(
        jnp.zeros((config.num_states, *batch_shape, config.output_size), dtype),
        jnp.zeros((config.num_states, *batch_shape, config.hidden_size), c_dtype),
    )


def _check_hx(
    hx: Any, config: LSTMConfig, batch_shape: tuple[int, ...]
) -> tuple[Array, Array] | tuple[None, None]:
    if hx is None:
        return None, None
    h0, c0 = _checks.check_pair("hx", hx)
    h0 = _checks.as_float_array("hx[0] (h_0)", h0)
    c0 = _checks.as_float_array("hx[1] (c_0)", c0)
    _checks.check_shape("hx[0] (h_0)", h0, (config.num_states, *batch_shape, config.output_size))
    _checks.check_shape("hx[1] (c_0)", c0, (config.num_states, *batch_shape, config.hidden_size))
    return h0, c0


def _prepare(
    params, input, hx, *, config, seq_lengths, dropout_key, dtype, recurrent_dropout, impl
) -> _Call:
    """Check the arguments of `lstm` (clear errors before anything is traced) and plan it."""
    if not isinstance(config, LSTMConfig):
        raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
    _checks.check_params(params, config)
    x = _checks.as_float_array("input", input)
    seq_len, batch = _check_input(x, config)
    _checks.check_recurrent_dropout(recurrent_dropout)
    batched = x.ndim == 3
    h0, c0 = _check_hx(hx, config, (batch,) if batched else ())
    lengths = None
    if seq_lengths is not None:
        lengths = _check_seq_lengths(seq_lengths, batch if batched else None, seq_len)
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, params[0]["w_ih"])
    plan = plans.resolve(
        impl,
        config=config,
        dtype=dtype,
        steps=seq_len,
        batch=batch,
        platform=plans.platform_of(input, params[0]["w_ih"]),
        recurrent_dropout=recurrent_dropout > 0 and dropout_key is not None,
    )
    return _Call(x, h0, c0, lengths, dtype, plan)


# fmt: off
@overload
def lstm(
    params: Params, input: Any, hx: tuple[Any, Any] | None = None, *, config: LSTMConfig,
    seq_lengths: Any = None, dropout_key: Array | None = None, dtype: Any = None,
    recurrent_dropout: float = 0.0, return_all_states: Literal[False] = False,
    impl: Implementation | str | None = None,
) -> Output: ...
@overload
def lstm(
    params: Params, input: Any, hx: tuple[Any, Any] | None = None, *, config: LSTMConfig,
    seq_lengths: Any = None, dropout_key: Array | None = None, dtype: Any = None,
    recurrent_dropout: float = 0.0, return_all_states: Literal[True],
    impl: Implementation | str | None = None,
) -> OutputWithStates: ...
# fmt: on


def lstm(
    params: Params,
    input: Any,
    hx: tuple[Any, Any] | None = None,
    *,
    config: LSTMConfig,
    seq_lengths: Any = None,
    dropout_key: Array | None = None,
    dtype: Any = None,
    recurrent_dropout: float = 0.0,
    return_all_states: bool = False,
    impl: Implementation | str | None = None,
) -> Output | OutputWithStates:
    """Run a multi-layer (bidirectional) LSTM with the semantics of ``torch.nn.LSTM``.

    With D = 2 if bidirectional else 1, H_out = proj_size or hidden_size, H = hidden_size:

    Args:
      params: from `init_params` or `from_torch_state_dict`.
      input: ``(L, N, input_size)``, ``(N, L, input_size)`` with ``config.batch_first``, or
        unbatched ``(L, input_size)``.
      hx: optional ``(h_0, c_0)``: ``(D·num_layers, N, H_out)`` and ``(D·num_layers, N, H)``
        (unbatched: no N axis); row ``layer·D + direction``. Zeros when None.
      config: the `LSTMConfig` (static under `jax.jit`).
      seq_lengths: optional ``(N,)`` integer lengths (a scalar for unbatched input), with the
        semantics of ``pack_padded_sequence(..., enforce_sorted=False)``: outputs past each
        length are zero, ``h_n``/``c_n`` are the states at the sequence's last valid step, and
        the reverse direction starts at step ``len - 1``. A length of 0 returns ``h_0``/``c_0``.
        Concrete values outside ``[0, L]`` raise ValueError; traced values (under `jax.jit` or
        `jax.vmap`) cannot be checked and are clamped to ``[0, L]``.
      dropout_key: PRNG key for dropout. Without one, no dropout is applied (evaluation mode).
        With one, inverted dropout with rate ``config.dropout`` is applied to the output of
        every layer but the last (never to ``h_n``/``c_n``).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); default: promoted dtype of input and params.
        Gates and the cell state are computed in at least float32.
      recurrent_dropout: rate of variational (Gal & Ghahramani) dropout on ``h`` before
        ``W_hh``: one mask per sequence, layer and direction, reused at every step. Only applied
        when ``dropout_key`` is given. Not part of torch's LSTM; 0 keeps torch parity.
      return_all_states: also return the per-step states (see Returns).
      impl: how to compute, not what: None or ``"auto"`` (the measured defaults of the
        platform), ``"kernel"`` (the compiled CPU kernel, or an error where it does not apply),
        ``"scan"`` (`jax.lax.scan`, no compiled code), or a `flax_lstm.Implementation` with the
        backward (``"custom"``, ``"autodiff"`` for `jax.jvp`, ``"remat"`` for long sequences)
        and the scan's settings. Every choice computes the same function up to float rounding.
        `flax_lstm.lstm_plan` says which path a call takes, and why.

    Returns:
      ``(output, (h_n, c_n))``, the state an `LSTMState`: ``output`` is ``(L, N, D·H_out)``
      (or batch-first, or ``(L, D·H_out)`` unbatched), forward direction in ``[..., :H_out]``;
      ``h_n`` and ``c_n`` have the shapes of ``h_0``/``c_0``. ``output`` and ``h_n`` are in the
      compute dtype, ``c_n`` in its accumulation dtype (float32 for bfloat16 compute).
      With ``return_all_states`` a third element `LSTMState` ``(h, c)`` holds the states of
      every layer and direction after every step, ``(L, D·num_layers, N, H_out)`` and
      ``(L, D·num_layers, N, H)`` (batch-first: ``(N, L, D·num_layers, ·)``; unbatched: no
      N), in input time order and zero past each sequence's length.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=5, num_layers=2, batch_first=True)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> x = jnp.ones((4, 7, 3))  # (N, L, input_size)
      >>> lengths = jnp.array([7, 5, 2, 1])
      >>> output, (h_n, c_n) = fl.lstm(params, x, config=config, seq_lengths=lengths)
      >>> output.shape, h_n.shape, c_n.shape
      ((4, 7, 5), (2, 4, 5), (2, 4, 5))
      >>> bool((output[3, 1:] == 0).all())
      True
    """
    call = _prepare(
        params, input, hx, config=config, seq_lengths=seq_lengths, dropout_key=dropout_key,
        dtype=dtype, recurrent_dropout=recurrent_dropout, impl=impl,
    )  # fmt: skip
    return _forward(
        params,
        call.x,
        call.h0,
        call.c0,
        call.lengths,
        dropout_key,
        config=config,
        dtype=call.dtype,
        recurrent_dropout=float(recurrent_dropout),
        return_all_states=bool(return_all_states),
        plan=call.plan,
    )


def lstm_plan(
    params: Params,
    input: Any,
    hx: tuple[Any, Any] | None = None,
    *,
    config: LSTMConfig,
    seq_lengths: Any = None,
    dropout_key: Array | None = None,
    dtype: Any = None,
    recurrent_dropout: float = 0.0,
    impl: Implementation | str | None = None,
) -> Plan:
    """The `flax_lstm.Plan` that `lstm` follows for these arguments: which path, and why.

    Takes `lstm`'s arguments (and checks them as it does); computes nothing.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=32)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> x = jnp.ones((50, 4, 3))
      >>> fl.lstm_plan(params, x, config=config, impl="scan").recurrence
      'scan'
      >>> print(fl.lstm_plan(params, x, config=config, impl=fl.Implementation(unroll=4,
      ...     recurrence="scan", platform="gpu")))  # doctest: +NORMALIZE_WHITESPACE
      lax.scan (custom backward, unroll 4, input projection hoisted, directions fused; no
      compiled code) on gpu: recurrence='scan' was requested
    """
    return _prepare(
        params, input, hx, config=config, seq_lengths=seq_lengths, dropout_key=dropout_key,
        dtype=dtype, recurrent_dropout=recurrent_dropout, impl=impl,
    ).plan  # fmt: skip


def _time_major(
    x: Array, h0: Array | None, c0: Array | None, config: LSTMConfig, dtype: Any
) -> tuple[Array, Array, Array]:
    """Input as (L, N, F) and ``(h0, c0)`` as (D·layers, N, ·) in the compute/accumulation
    dtypes (zeros when None)."""
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None]
    elif config.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    if h0 is None or c0 is None:  # both or neither (_check_hx)
        h, c = zero_state(config, (x.shape[1],), dtype)
        return x, h, c
    if unbatched:
        h0, c0 = h0[:, None], c0[:, None]
    return x, h0.astype(dtype), c0.astype(accumulation_dtype(dtype))


def _layer_weights(layer, config: LSTMConfig, dtype: Any) -> LayerWeights:
    acc = accumulation_dtype(dtype)
    return LayerWeights(
        w_ih=layer["w_ih"].astype(dtype),
        b=(layer["b_ih"] + layer["b_hh"]).astype(acc) if config.bias else None,
        w_hh=layer["w_hh"].astype(dtype),
        w_hr=layer["w_hr"].astype(dtype) if "w_hr" in layer else None,
    )


def _recurrent_mask(key, rate: float, shape: tuple[int, ...], dtype: Any) -> Array:
    keep = _random.bernoulli(jax.random.fold_in(key, 1), 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _directions(weights: LayerWeights, sl: slice) -> LayerWeights:
    """The weights of the directions ``sl`` of a layer."""
    return LayerWeights(
        w_ih=weights.w_ih[sl],
        b=None if weights.b is None else weights.b[sl],
        w_hh=weights.w_hh[sl],
        w_hr=None if weights.w_hr is None else weights.w_hr[sl],
    )


def _layer(
    x: Array,
    weights: LayerWeights,
    h0: Array,
    c0: Array,
    lengths: Array | None,
    mask: Array | None,
    rmask: Array | None,
    plan: Plan,
    all_c: bool,
) -> tuple[list[Array], list[Array] | None, list[Array], list[Array]]:
    """One layer, every direction: per direction ``hs`` and, with ``all_c``, ``cs`` (L, N, ·)
    in input time order and zero past each length (``cs`` None without), and the last
    ``h`` and ``c`` per direction."""
    d = h0.shape[0]
    # Direction 1 reads its input reversed within each sequence's length.
    inputs = [x] if d == 1 else [x, reverse_sequences(x, lengths)]
    # Both directions in one loop (plan.fuse_directions) or one loop per direction.
    groups = [range(d)] if plan.fuse_directions else [range(i, i + 1) for i in range(d)]
    parts = []
    for group in groups:
        sl = slice(group.start, group.stop)
        parts.append(
            run_layer(
                jnp.stack([inputs[i] for i in group], axis=1),
                _directions(weights, sl),
                h0[sl],
                c0[sl],
                mask,
                None if rmask is None else rmask[sl],
                plan=plan,
                all_c=all_c,
            )
        )
    # The last step holds h_n and c_n: masked steps keep the state of each sequence's end.
    hs = [h[:, j] for h, _ in parts for j in range(h.shape[1])]
    cs: list[Array] | None = None
    if all_c:
        cs = [c[:, j] for _, c in parts for j in range(c.shape[1])]
        c_last = [c[-1] for c in cs]
    else:
        c_last = [c[j] for _, c in parts for j in range(c.shape[0])]
    h_last = [h[-1] for h in hs]
    for j in range(1, d):
        hs[j] = reverse_sequences(hs[j], lengths)
        if cs is not None:
            cs[j] = reverse_sequences(cs[j], lengths)
    if mask is not None:
        hs = [jnp.where(mask[..., None], h, 0) for h in hs]
        if cs is not None:
            cs = [jnp.where(mask[..., None], c, 0) for c in cs]
    return hs, cs, h_last, c_last


def _to_caller_layout(
    output: Array,
    h_n: Array,
    c_n: Array,
    states: LSTMState | None,
    batched: bool,
    batch_first: bool,
) -> tuple[Array, Array, Array, LSTMState | None]:
    """The outputs in the caller's layout: unbatched (no N), batch-first, or time-major."""
    if not batched:
        output, h_n, c_n = output[:, 0], h_n[:, 0], c_n[:, 0]
        if states is not None:
            states = LSTMState(states.h[:, :, 0], states.c[:, :, 0])
    elif batch_first:
        output = jnp.swapaxes(output, 0, 1)
        if states is not None:
            # (L, D·num_layers, N, H) -> (N, L, D·num_layers, H): the batch axis first.
            states = LSTMState(jnp.moveaxis(states.h, 2, 0), jnp.moveaxis(states.c, 2, 0))
    return output, h_n, c_n, states


@functools.partial(
    jax.jit, static_argnames=("config", "dtype", "recurrent_dropout", "return_all_states", "plan")
)
def _forward(
    params, x, h0, c0, lengths, dropout_key, *, config, dtype, recurrent_dropout,
    return_all_states, plan,
) -> Output | OutputWithStates:  # fmt: skip
    """The computation of `lstm` on validated arguments, compiled once per configuration.

    Jitted so that eager calls reuse one compiled program instead of dispatching every
    operation; under an outer `jax.jit` it is inlined.
    """
    batched = x.ndim == 3
    x, h0, c0 = _time_major(x, h0, c0, config, dtype)
    seq_len, batch = x.shape[0], x.shape[1]
    d, num_layers = config.num_directions, config.num_layers
    mask = None
    if lengths is not None:
        lengths = lengths.reshape(batch)
        mask = jnp.arange(seq_len)[:, None] < lengths[None, :]  # (L, N)
        # Padding never reaches the GEMMs, so NaN/inf there cannot leak into any gradient.
        x = jnp.where(mask[:, :, None], x, 0)
    layer_keys = jax.random.split(dropout_key, num_layers) if dropout_key is not None else None
    use_dropout = num_layers > 1 and config.dropout > 0  # both only with layer_keys
    use_rdrop = recurrent_dropout > 0

    x = x.astype(dtype)
    h_n, c_n, all_h, all_c = [], [], [], []
    for k, layer in enumerate(params):
        rmask = None
        if use_rdrop and layer_keys is not None:
            shape = (d, batch, config.output_size)
            rmask = _recurrent_mask(layer_keys[k], recurrent_dropout, shape, dtype)
        rows = slice(k * d, (k + 1) * d)
        hs, cs, h_last, c_last = _layer(
            x, _layer_weights(layer, config, dtype), h0[rows], c0[rows], lengths, mask, rmask,
            plan, return_all_states,
        )  # fmt: skip
        h_n.extend(h_last)
        c_n.extend(c_last)
        if cs is not None:  # every step's c: given exactly with return_all_states
            all_h.append(jnp.stack(hs, axis=1))
            all_c.append(jnp.stack(cs, axis=1))
        x = hs[0] if d == 1 else jnp.concatenate(hs, axis=-1)  # (L, N, D·H_out)
        if use_dropout and layer_keys is not None and k < num_layers - 1:
            x = _random.dropout(jax.random.fold_in(layer_keys[k], 0), x, config.dropout)

    states = None
    if return_all_states:
        states = LSTMState(jnp.concatenate(all_h, axis=1), jnp.concatenate(all_c, axis=1))
    output, h_n, c_n, states = _to_caller_layout(
        x, jnp.stack(h_n), jnp.stack(c_n), states, batched, config.batch_first
    )
    if states is not None:  # given exactly with return_all_states
        return output, LSTMState(h_n, c_n), states
    return output, LSTMState(h_n, c_n)

"""`lstm`: layers × directions over the recurrence, with torch.nn.LSTM's calling convention."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import _checks, kernel
from flax_lstm.cell import LSTMState, accumulation_dtype
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Params
from flax_lstm.recurrence import kernel_ineligible, reverse_sequences, run_layer

Array = jax.Array

__all__ = ["default_unroll", "lstm"]


def default_unroll() -> int:
    """The scan unroll factor used when ``unroll`` is None: 1 on CPU, 8 on GPU/TPU."""
    return 1 if jax.default_backend() == "cpu" else 8


def _dropout(key: Array, x: Array, rate: float) -> Array:
    """Inverted dropout: zero with probability ``rate``, scale the rest by 1/(1-rate)."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


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
    unroll: int | None = None,
    hoist_input: bool | None = None,
    fuse_directions: bool | None = None,
    remat: bool = False,
    custom_vjp: bool = True,
    cpu_kernel: bool | None = None,
):
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
      unroll: `lax.scan` unroll; default `default_unroll()`.
      hoist_input: compute the input projection for all steps as one GEMM before the loop
        (default on GPU/TPU) instead of step by step inside it (default on CPU, where it is
        faster); the result is the same up to float rounding. The CPU kernel computes it in
        its per-step GEMM either way.
      fuse_directions: run both directions of a bidirectional layer in one scan over a
        direction axis (default on GPU/TPU: half the sequential steps) instead of one scan
        each (default on the CPU scan path, where the fused step measured slower: 143 vs 108
        ms, B32 T128 H256 bidirectional forward on one core). With the CPU kernel the default is
        one kernel call for both directions.
      remat: keep no (L, N, 4H) tensors for the backward: the gates are recomputed there and
        the weight gradients accumulated inside the reverse loop. Slower; for very long
        sequences (B1 L100000 H64 fwd+bwd: 98 MiB of temporaries instead of 196 MiB with the
        CPU kernel and 293 MiB on the scan path). Runs the scan path.
      custom_vjp: use the hand-written backward (weight gradients as one GEMM after the loop);
        False differentiates the scan with plain autodiff (and allows forward-mode `jax.jvp`).
      cpu_kernel: run each layer's recurrence in the compiled CPU kernel (`flax_lstm.kernel`)
        instead of `lax.scan`. None (default): wherever it applies, that is on the CPU backend,
        in float32 (or bfloat16 on CPUs with AVX512_BF16), without ``proj_size``, recurrent
        dropout or ``remat``, with ``custom_vjp``, for at least 16 steps × sequences (shorter
        calls, such as streaming one step at a time, are faster on the scan), and once the
        kernel has been built (else the scan, with a warning if the build failed).
        True demands it (ValueError where it does not apply, RuntimeError if it cannot be
        built); False never uses it. The results agree with the scan's to float rounding.

    Returns:
      ``(output, (h_n, c_n))``: ``output`` is ``(L, N, D·H_out)`` (or batch-first, or
      ``(L, D·H_out)`` unbatched), forward direction in ``[..., :H_out]``; ``h_n`` and ``c_n``
      have the shapes of ``h_0``/``c_0``. ``output`` and ``h_n`` are in the compute dtype,
      ``c_n`` in its accumulation dtype (float32 for bfloat16 compute).
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
    if not isinstance(config, LSTMConfig):
        raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
    _checks.check_params(params, config)
    x = _checks.as_float_array("input", input)
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
    if not 0 <= recurrent_dropout < 1:
        raise ValueError(f"recurrent_dropout must be in [0, 1), got {recurrent_dropout}")
    batched = x.ndim == 3
    seq_len = x.shape[1] if batched and config.batch_first else x.shape[0]
    batch = (x.shape[0] if config.batch_first else x.shape[1]) if batched else 1
    if seq_len == 0:
        raise ValueError(f"input must have at least one time step, got shape {x.shape}")
    d_l = config.num_directions * config.num_layers
    batch_shape = (batch,) if batched else ()
    h0 = c0 = None
    if hx is not None:
        h0, c0 = _checks.check_pair("hx", hx)
        h0 = _checks.as_float_array("hx[0] (h_0)", h0)
        c0 = _checks.as_float_array("hx[1] (c_0)", c0)
        _checks.check_shape("hx[0] (h_0)", h0, (d_l, *batch_shape, config.output_size))
        _checks.check_shape("hx[1] (c_0)", c0, (d_l, *batch_shape, config.hidden_size))
    lengths = None
    if seq_lengths is not None:
        lengths = _check_seq_lengths(seq_lengths, batch if batched else None, seq_len)
    on_cpu = jax.default_backend() == "cpu"
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, params[0]["w_ih"])
    use_kernel = _use_kernel(
        cpu_kernel,
        seq_len * batch,
        on_cpu,
        config,
        dtype,
        recurrent_dropout > 0 and dropout_key is not None,
        remat,
        custom_vjp,
    )
    return _forward(
        params,
        x,
        h0,
        c0,
        lengths,
        dropout_key,
        config=config,
        dtype=dtype,
        recurrent_dropout=float(recurrent_dropout),
        return_all_states=bool(return_all_states),
        unroll=default_unroll() if unroll is None else int(unroll),
        hoist_input=not on_cpu if hoist_input is None else bool(hoist_input),
        # The kernel runs both directions in one call (its threads stay up between them).
        fuse_directions=(
            (not on_cpu or use_kernel) if fuse_directions is None else bool(fuse_directions)
        ),
        remat=bool(remat),
        custom_vjp=bool(custom_vjp),
        cpu_kernel=use_kernel,
    )


# Below this many (step, sequence) pairs per call the kernel's per-call packing of the weights
# costs more than it saves (B1 H256: T1 254 vs 152 µs, T16 635 vs 785; B4 T4 367 vs 321 µs).
_KERNEL_MIN_ROWS = 16


def _use_kernel(
    requested: bool | None,
    rows: int,
    on_cpu: bool,
    config: LSTMConfig,
    dtype: Any,
    recurrent_dropout: bool,
    remat: bool,
    custom_vjp: bool,
) -> bool:
    """Whether `lstm` runs its recurrences in the compiled CPU kernel (see ``cpu_kernel``)."""
    if requested is False:
        return False
    if not on_cpu:
        blocker = f"the {jax.default_backend()} backend (it is a CPU kernel)"
    else:
        blocker = kernel_ineligible(
            dtype,
            projection=bool(config.proj_size),
            recurrent_dropout=recurrent_dropout,
            remat=remat,
            custom_vjp=custom_vjp,
        )
    if blocker is not None:
        if requested:
            raise ValueError(f"cpu_kernel=True, but the CPU kernel does not support {blocker}")
        return False
    if requested:
        error = kernel.build_error(dtype)
        if error is not None:
            raise RuntimeError(f"cpu_kernel=True, but the CPU kernel is not available: {error}")
        return True
    return rows >= _KERNEL_MIN_ROWS and kernel.available(dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "dtype",
        "recurrent_dropout",
        "return_all_states",
        "unroll",
        "hoist_input",
        "fuse_directions",
        "remat",
        "custom_vjp",
        "cpu_kernel",
    ),
)
def _forward(
    params,
    x,
    h0,
    c0,
    lengths,
    dropout_key,
    *,
    config,
    dtype,
    recurrent_dropout,
    return_all_states,
    unroll,
    hoist_input,
    fuse_directions,
    remat,
    custom_vjp,
    cpu_kernel,
):
    """The computation of `lstm` on validated arguments, compiled once per configuration.

    Jitted so that eager calls reuse one compiled program instead of dispatching every
    operation (about 0.5 s per eager call before); under an outer `jax.jit` it is inlined.
    """
    batched = x.ndim == 3
    if not batched:
        x = x[:, None]
    elif config.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    seq_len, batch = x.shape[0], x.shape[1]
    d, num_layers = config.num_directions, config.num_layers
    out_size, hidden = config.output_size, config.hidden_size
    cd, acc = dtype, accumulation_dtype(dtype)
    if h0 is None:
        h0 = jnp.zeros((d * num_layers, batch, out_size), cd)
        c0 = jnp.zeros((d * num_layers, batch, hidden), acc)
    else:
        if not batched:
            h0, c0 = h0[:, None], c0[:, None]
        h0, c0 = h0.astype(cd), c0.astype(acc)

    mask = None
    if lengths is not None:
        lengths = lengths.reshape(batch)
        mask = jnp.arange(seq_len)[:, None] < lengths[None, :]  # (L, N)
        # Padding never reaches the GEMMs, so NaN/inf there cannot leak into any gradient.
        x = jnp.where(mask[:, :, None], x, 0)

    use_dropout = dropout_key is not None and num_layers > 1 and config.dropout > 0
    use_rdrop = dropout_key is not None and recurrent_dropout > 0
    layer_keys = jax.random.split(dropout_key, num_layers) if dropout_key is not None else None

    x = x.astype(cd)
    h_n, c_n, all_h, all_c = [], [], [], []
    for k, layer in enumerate(params):
        # Direction 1 reads its input reversed within each sequence's length.
        inputs = [x] if d == 1 else [x, reverse_sequences(x, lengths)]
        bias = (layer["b_ih"] + layer["b_hh"]).astype(acc) if config.bias else None
        rmask = None
        if use_rdrop:
            rkey = jax.random.fold_in(layer_keys[k], 1)
            keep = jax.random.bernoulli(rkey, 1.0 - recurrent_dropout, (d, batch, out_size))
            rmask = keep.astype(cd) / jnp.asarray(1.0 - recurrent_dropout, cd)
        weights = (
            layer["w_ih"].astype(cd),
            bias,
            layer["w_hh"].astype(cd),
            layer["w_hr"].astype(cd) if "w_hr" in layer else None,
            h0[k * d : (k + 1) * d],
            c0[k * d : (k + 1) * d],
        )
        # Both directions in one scan (GPU default) or one scan per direction (CPU default).
        parts = []
        for group in [range(d)] if fuse_directions else [range(i, i + 1) for i in range(d)]:
            sl = slice(group.start, group.stop)
            parts.append(
                run_layer(
                    jnp.stack([inputs[i] for i in group], axis=1),
                    *(None if w is None else w[sl] for w in weights),
                    mask,
                    None if rmask is None else rmask[sl],
                    hoist_input=hoist_input,
                    unroll=unroll,
                    remat=remat,
                    custom_vjp=custom_vjp,
                    all_c=return_all_states,
                    kernel=cpu_kernel,
                )
            )
        # Per direction (L, N, ·), back in input time order and zero past each length.
        # The last step holds h_n and c_n: masked steps keep the state of each sequence's end.
        # The cell state of every step comes back only when it is asked for.
        h_dirs = [hs[:, j] for hs, _ in parts for j in range(hs.shape[1])]
        h_n.extend(h[-1] for h in h_dirs)
        if return_all_states:
            c_dirs = [cs[:, j] for _, cs in parts for j in range(cs.shape[1])]
            c_n.extend(c[-1] for c in c_dirs)
        else:
            c_n.extend(c_last[j] for _, c_last in parts for j in range(c_last.shape[0]))
        for j in range(1, d):
            h_dirs[j] = reverse_sequences(h_dirs[j], lengths)
            if return_all_states:
                c_dirs[j] = reverse_sequences(c_dirs[j], lengths)
        if mask is not None:
            h_dirs = [jnp.where(mask[..., None], h, 0) for h in h_dirs]
            if return_all_states:
                c_dirs = [jnp.where(mask[..., None], c, 0) for c in c_dirs]
        if return_all_states:
            all_h.append(jnp.stack(h_dirs, axis=1))
            all_c.append(jnp.stack(c_dirs, axis=1))
        x = h_dirs[0] if d == 1 else jnp.concatenate(h_dirs, axis=-1)  # (L, N, D·H_out)
        if use_dropout and k < num_layers - 1:
            x = _dropout(jax.random.fold_in(layer_keys[k], 0), x, config.dropout)

    output = x
    h_n, c_n = jnp.stack(h_n), jnp.stack(c_n)
    states = None
    if return_all_states:
        states = LSTMState(jnp.concatenate(all_h, axis=1), jnp.concatenate(all_c, axis=1))
    if not batched:
        output, h_n, c_n = output[:, 0], h_n[:, 0], c_n[:, 0]
        if states is not None:
            states = LSTMState(states.h[:, :, 0], states.c[:, :, 0])
    elif config.batch_first:
        output = jnp.swapaxes(output, 0, 1)
        if states is not None:
            # (L, D·num_layers, N, H) -> (N, L, D·num_layers, H): the batch axis first.
            states = LSTMState(jnp.moveaxis(states.h, 2, 0), jnp.moveaxis(states.c, 2, 0))
    if return_all_states:
        return output, (h_n, c_n), states
    return output, (h_n, c_n)

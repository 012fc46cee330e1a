"""Streaming: chunked calls carrying (h_n, c_n) equal one call over the whole sequence (with
seq_lengths too), and resetting chosen rows between chunks restarts exactly those rows."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flax_lstm as fl
from flax_lstm import linen as fl_linen
from flax_lstm import nnx as fl_nnx
from flax_lstm import streaming

L, N, F, CHUNK = 12, 3, 3, 5
LENGTHS = np.array([12, 7, 3])


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@nnx.jit
def _nnx_call(model, x, hx, lengths):
    return model(x, hx, seq_lengths=lengths)


@functools.partial(jax.jit, static_argnames="module")
def _linen_call(module, variables, x, hx, lengths):
    return module.apply(variables, x, hx, seq_lengths=lengths)


def _stream(call, x, lengths, time_axis=0, reset_at=None, initial=None):
    """Run ``call(chunk, hx, chunk_lengths)`` chunk by chunk; optionally reset rows."""
    outs, hx = [], None
    for start in range(0, x.shape[time_axis], CHUNK):
        if reset_at is not None and start == reset_at[0]:
            hx = streaming.reset_state(hx, reset_at[1], initial)
        stop = min(start + CHUNK, x.shape[time_axis])
        chunk = jax.lax.slice_in_dim(x, start, stop, axis=time_axis)
        n = None if lengths is None else streaming.chunk_lengths(lengths, start, CHUNK)
        out, hx = call(chunk, hx, n)
        outs.append(out)
    return jnp.concatenate(outs, axis=time_axis), hx


@pytest.mark.parametrize("with_lengths", [False, True])
def test_nnx_chunks_equal_one_call(with_lengths):
    model = fl_nnx.LSTM(F, 4, 2, proj_size=2, rngs=nnx.Rngs(0))
    x = _x((L, N, F))
    lengths = jnp.asarray(LENGTHS) if with_lengths else None
    full, (h_n, c_n) = _nnx_call(model, x, None, lengths)
    out, (h, c) = _stream(lambda *a: _nnx_call(model, *a), x, lengths)
    np.testing.assert_allclose(out, full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h, h_n, atol=1e-6, rtol=0)
    np.testing.assert_allclose(c, c_n, atol=1e-6, rtol=0)
    if with_lengths:  # padding stays zero in every chunk
        for row, length in enumerate(LENGTHS):
            assert (out[length:, row] == 0).all()


def test_linen_batch_first_learnable_initial_state_chunks_equal_one_call():
    module = fl_linen.LSTM(4, num_layers=2, batch_first=True, learnable_initial_state=True)
    x = _x((N, L, F))
    variables = module.init(jax.random.key(0), x)
    params = {**variables["params"], "h0": _x((2, 4), 1), "c0": _x((2, 4), 2)}
    variables = {"params": params}
    lengths = jnp.asarray(LENGTHS)
    full, (h_n, c_n) = _linen_call(module, variables, x, None, lengths)

    def call(chunk, hx, n):
        return _linen_call(module, variables, chunk, hx, n)

    out, (h, c) = _stream(call, x, lengths, time_axis=1)
    np.testing.assert_allclose(out, full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h, h_n, atol=1e-6, rtol=0)
    np.testing.assert_allclose(c, c_n, atol=1e-6, rtol=0)


def test_reset_rows_between_chunks():
    """Row 0 starts a new sequence at step 10: from there it equals a fresh run on its own,
    from the learned initial state; the other rows carry on as if nothing happened."""
    model = fl_nnx.LSTM(F, 4, 2, learnable_initial_state=True, rngs=nnx.Rngs(0))
    model.h0[...] = jnp.asarray(_x((2, 4), 1))
    model.c0[...] = jnp.asarray(_x((2, 4), 2))
    x = _x((L, N, F))
    full, (h_n, _) = _nnx_call(model, x, None, None)
    reset = jnp.array([True, False, False])
    out, (h, _) = _stream(
        lambda *a: _nnx_call(model, *a),
        x,
        None,
        reset_at=(10, reset),
        initial=model.initial_state(),  # (D·layers, H), shared by the rows
    )
    np.testing.assert_allclose(out[:, 1:], full[:, 1:], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[:10, 0], full[:10, 0], atol=1e-6, rtol=0)
    fresh, (h_fresh, _) = _nnx_call(model, x[10:, :1], None, None)
    np.testing.assert_allclose(out[10:, :1], fresh, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h[:, :1], h_fresh, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h[:, 1:], h_n[:, 1:], atol=1e-6, rtol=0)


def test_reset_state_keeps_shapes_and_dtypes_and_jits():
    h = jnp.ones((4, 3, 2), jnp.bfloat16)
    c = jnp.ones((4, 3, 5), jnp.float32)
    reset = jnp.array([False, True, True])
    for initial in (None, (jnp.zeros((4, 2)), jnp.zeros((4, 5)))):
        h2, c2 = jax.jit(streaming.reset_state)((h, c), reset, initial)
        assert (h2.dtype, c2.dtype) == (jnp.bfloat16, jnp.float32)
        assert h2.shape == h.shape and c2.shape == c.shape
        np.testing.assert_array_equal(h2[:, 0], 1)
        np.testing.assert_array_equal(h2[:, 1:], 0)
        np.testing.assert_array_equal(c2[:, 1:], 0)
    # A per-row initial state, and an unbatched state with a scalar flag.
    initial = (jnp.full((4, 3, 2), 2.0), jnp.full((4, 3, 5), 3.0))
    h3, c3 = streaming.reset_state((h, c), reset, initial)
    np.testing.assert_array_equal(h3[:, 2], 2)
    np.testing.assert_array_equal(c3[:, 0], 1)
    h4, _ = streaming.reset_state((h[:, 0], c[:, 0]), jnp.array(True))
    np.testing.assert_array_equal(h4, 0)


@pytest.mark.parametrize(
    ("hx", "reset", "initial", "error"),
    [
        ((np.ones((2, 3, 4)),) * 2, np.ones(2, bool), None, "reset must have shape"),
        ((np.ones((2, 3, 4)),) * 2, np.ones(3), None, "reset must be boolean"),
        ((np.ones((2, 3, 4)),) * 2, np.ones(3, bool), (np.ones((2, 4)),) * 3, "pair"),
        ((np.ones((2, 3, 4)),) * 2, np.ones(3, bool), (np.ones((3, 4)),) * 2, "initial"),
        (np.ones((2, 3, 4)), np.ones(3, bool), None, "pair"),
        ((np.ones((2, 3, 4)), np.ones((2, 2, 4))), np.ones(3, bool), None, "hx must be"),
    ],
)
def test_reset_state_errors(hx, reset, initial, error):
    with pytest.raises((ValueError, TypeError), match=error):
        streaming.reset_state(hx, reset, initial)


def test_reset_state_takes_the_pairs_lstm_takes():
    """reset_state reads ``hx`` with the same pair check as fl.lstm: what one takes (any
    sequence of two arrays), the other takes; what one rejects, the other rejects alike."""
    config = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), config)
    x = np.ones((2, 1, 3), np.float32)
    h, c = np.ones((1, 1, 4), np.float32), np.ones((1, 1, 4), np.float32)
    for hx in (collections.UserList([h, c]), fl.LSTMState(h, c), [h, c]):
        fl.lstm(params, x, hx, config=config)
        got = streaming.reset_state(hx, jnp.array([True]), collections.UserList([h, c]))
        np.testing.assert_array_equal(got.h, h)
    for bad in ("hc", (h, c, c), h):
        with pytest.raises(TypeError) as want:
            fl.lstm(params, x, bad, config=config)
        with pytest.raises(TypeError) as got:
            streaming.reset_state(bad, jnp.array([True]))
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("batch_size", [2, None])
def test_zero_state_is_the_state_lstm_starts_from(dtype, batch_size):
    """Sequences of length 0 return the state `fl.lstm` starts from: the same arrays, dtypes."""
    config = fl.LSTMConfig(3, 6, 2, bidirectional=True, proj_size=2)
    params = fl.init_params(jax.random.key(0), config)
    shape = (4, 3) if batch_size is None else (4, batch_size, 3)
    lengths = jnp.zeros(() if batch_size is None else (batch_size,), jnp.int32)
    _, start = fl.lstm(params, _x(shape), config=config, seq_lengths=lengths, dtype=dtype)
    zero = streaming.zero_state(config, batch_size, dtype=dtype)
    for got, want in zip(zero, start, strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
        np.testing.assert_array_equal(got, want)
    assert zero.h.dtype == dtype and zero.c.dtype == jnp.float32  # c in at least float32


def test_zero_state_and_chunk_lengths():
    config = fl.LSTMConfig(3, 6, 2, bidirectional=True, proj_size=2)
    h, c = streaming.zero_state(config, 5)
    assert h.shape == (4, 5, 2) and c.shape == (4, 5, 6) and not h.any()
    assert streaming.zero_state(config).h.shape == (4, 2)
    np.testing.assert_array_equal(
        streaming.chunk_lengths(np.array([12, 7, 3]), 5, 5), np.array([5, 2, 0])
    )
    with pytest.raises(TypeError, match="integer"):
        streaming.chunk_lengths(np.array([1.5]), 0, 5)
    with pytest.raises(ValueError, match="chunk_size"):
        streaming.chunk_lengths(np.array([3]), 0, 0)

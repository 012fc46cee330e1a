"""Determinism (issue 14): the outputs and gradients of `flax_lstm.lstm` are bitwise equal run
to run, and on the CPU kernel across ``FLAX_LSTM_NUM_THREADS`` values.

The kernel splits each step by hidden units (every unit's arithmetic is done by one thread, in
the same order whatever the thread count) and sums the bias gradient in a fixed order; the
weight gradients are XLA GEMMs. The thread count is read when a call is traced, so each count
runs in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_process

import flax_lstm as fl

SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
import flax_lstm as fl
config = fl.LSTMConfig(input_size=12, hidden_size=64, num_layers=2, bidirectional=True)
params = fl.init_params(jax.random.key(0), config)
x = jax.random.normal(jax.random.key(1), (30, 6, 12))
lengths = jnp.array([30, 21, 17, 9, 4, 1])

def loss(p, x):
    out, (h, c) = fl.lstm(p, x, config=config, seq_lengths=lengths, impl=sys.argv[2])
    return (out ** 2).sum() + h.sum() + c.sum(), out

(_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
leaves = {f"g{i}": np.asarray(g) for i, g in enumerate(jax.tree.leaves(grads))}
np.savez(sys.argv[1], out=np.asarray(out), **leaves)
"""


def _run(tmp_path: Path, impl: str, threads: str, tag: str) -> dict[str, np.ndarray]:
    path = tmp_path / f"{impl}-{threads}-{tag}.npz"
    python_process.run("-c", SCRIPT, str(path), impl, FLAX_LSTM_NUM_THREADS=threads)
    with np.load(path) as f:
        return dict(f)


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("impl", ["kernel", "scan"])
def test_bitwise_equal_run_to_run_and_across_thread_counts(impl, tmp_path):
    if impl == "kernel" and not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    counts = ["1", "2", "4"] if impl == "kernel" else ["2"]
    runs = {n: _run(tmp_path, impl, n, "a") for n in counts}
    again = _run(tmp_path, impl, counts[-1], "b")
    assert _bitwise_equal(runs[counts[-1]], again)
    for n in counts[1:]:
        assert _bitwise_equal(runs[counts[0]], runs[n]), f"threads {counts[0]} vs {n}"


def test_bitwise_equal_calls_in_one_process():
    config = fl.LSTMConfig(input_size=5, hidden_size=32, bidirectional=True)
    params = fl.init_params(jax.random.key(0), config)
    x = jax.random.normal(jax.random.key(1), (20, 3, 5))
    grad = jax.jit(jax.grad(lambda p, x: (fl.lstm(p, x, config=config)[0] ** 2).sum(), (0, 1)))
    first, second = grad(params, x), grad(params, x + jnp.zeros_like(x))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

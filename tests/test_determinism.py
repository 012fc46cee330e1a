"""Determinism (issue 14): the outputs and gradients of `flax_lstm.lstm` are bitwise equal run
to run, and on the CPU kernel across ``FLAX_LSTM_NUM_THREADS`` values and when a thread
computes a teammate's item again (a stolen item, see ``run_items`` in the kernel's
``work_items.h``).

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
from kernel_checks import bf16_kernel, cxxflags, needs_kernel, require_bf16_kernel

import flax_lstm as fl

# argv: the .npz to write, the implementation, and optionally a case of CASES (default "ragged"),
# "-bfloat16" appended for its bfloat16 form.
SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
import flax_lstm as fl
CASES = {
    "ragged": (dict(input_size=12, hidden_size=64, num_layers=2, bidirectional=True),
               (30, 6, 12), [30, 21, 17, 9, 4, 1]),
    # 3 sequences hoist the input projection (blocks of 64 steps); 16 units of one direction
    # are one item a step, so the kernel shares whole rows instead of fixed runs (see run_items;
    # two directions would be two items, one run per thread).
    "hoisted": (dict(input_size=5, hidden_size=16), (70, 3, 5), [70, 64, 9]),
    # Both directions' items of a step share one row of work, here in fixed runs.
    "hoisted-bidirectional": (dict(input_size=5, hidden_size=16, bidirectional=True),
                              (70, 3, 5), [70, 64, 9]),
}
case = sys.argv[3] if len(sys.argv) > 3 else "ragged"
kwargs, shape, lens = CASES[case.removesuffix("-bfloat16")]
dtype = jnp.bfloat16 if case.endswith("-bfloat16") else jnp.float32
config = fl.LSTMConfig(**kwargs)
params = fl.init_params(jax.random.key(0), config, dtype=dtype)
x = jax.random.normal(jax.random.key(1), shape).astype(dtype)
lengths = jnp.array(lens)

def loss(p, x):
    out, (h, c) = fl.lstm(p, x, config=config, seq_lengths=lengths, impl=sys.argv[2])
    out, h, c = (a.astype(jnp.float32) for a in (out, h, c))
    return (out ** 2).sum() + h.sum() + c.sum(), out

(_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
# float32 holds every bfloat16 exactly; .npz keeps no bfloat16
leaves = {f"g{i}": np.asarray(g, np.float32) for i, g in enumerate(jax.tree.leaves(grads))}
np.savez(sys.argv[1], out=np.asarray(out), **leaves)
"""

# The stolen items of this process, printed after SCRIPT (the library exports the count).
STOLEN = """
import ctypes
from flax_lstm._kernel import build
print(ctypes.CDLL(str(build.LIBRARY[0])).FlaxLstmStolenItems())
"""


def _run(
    tmp_path: Path, impl: str, threads: str, tag: str, case: str = "ragged"
) -> dict[str, np.ndarray]:
    path = tmp_path / f"{impl}-{threads}-{tag}-{case}.npz"
    python_process.run("-c", SCRIPT, str(path), impl, case, FLAX_LSTM_NUM_THREADS=threads)
    with np.load(path) as f:
        return dict(f)


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("impl", "case"),
    [("kernel", "ragged"), ("kernel", "hoisted-bidirectional"), ("scan", "ragged")],
)
def test_bitwise_equal_run_to_run_and_across_thread_counts(impl, case, tmp_path):
    if impl == "kernel" and not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    counts = ["1", "2", "4"] if impl == "kernel" else ["2"]
    runs = {n: _run(tmp_path, impl, n, "a", case) for n in counts}
    again = _run(tmp_path, impl, counts[-1], "b", case)
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


@pytest.fixture(scope="module")
def steal_cache(tmp_path_factory) -> Path:
    """One cache folder for the stealing test build, shared by its cases."""
    return tmp_path_factory.mktemp("steal_test")


@needs_kernel
@pytest.mark.parametrize(
    "case", ["ragged", "hoisted", pytest.param("ragged-bfloat16", marks=bf16_kernel)]
)
def test_stolen_items_give_the_same_bits(case, steal_cache, tmp_path):
    """A test build in which waiting threads steal at once and every 7th item's holder sleeps
    first (``-DFLAX_LSTM_STEAL_TEST=1``): items are written by the threads that stole them, and
    the outputs and gradients are the bits of one thread's run."""
    if case.endswith("-bfloat16"):
        require_bf16_kernel()
    one = _run(tmp_path, "kernel", "1", "one", case)
    path = tmp_path / "stolen.npz"
    proc = python_process.run(
        "-c",
        SCRIPT + STOLEN,
        str(path),
        "kernel",
        case,
        timeout=900,
        FLAX_LSTM_NUM_THREADS="2",
        FLAX_LSTM_CXXFLAGS=cxxflags("-DFLAX_LSTM_STEAL_TEST=1"),
        FLAX_LSTM_CACHE_DIR=str(steal_cache),
    )
    assert int(proc.stdout.split()[-1]) > 0, "no item was stolen"
    with np.load(path) as f:
        assert _bitwise_equal(one, dict(f))

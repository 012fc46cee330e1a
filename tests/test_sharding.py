"""Both recurrences partition along the batch under `jax.sharding` (issue 14).

With 4 forced CPU devices (a process of its own: ``tests/sharded_check.py``) and the batch
sharded over ``data``, the compiled forward and gradient of `flax_lstm.lstm` hold no
all-gather: each device runs its own rows (the CPU kernel through its partitioned FFI call, the
scan as it is) and the weight gradients are partial sums reduced by all-reduce. The results
equal the unsharded call: the forward bit for bit, the gradients up to the order of the sum
over the batch. Unsharded, the kernel's call lowers to the plain FFI call.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import python_process
from kernel_checks import needs_kernel

import flax_lstm as fl

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def sharded_cases() -> list[dict]:
    proc = python_process.run(str(HERE / "sharded_check.py"), timeout=600, unset=("XLA_FLAGS",))
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@needs_kernel
def test_sharded_calls_hold_no_all_gather_and_equal_the_unsharded(sharded_cases):
    cases = [c for c in sharded_cases if c["impl"] not in ("transposed_copy", "vmapped_members")]
    assert {c["impl"] for c in cases} == {"kernel", "scan-cpu", "scan-gpu-defaults", "auto"}
    for c in cases:
        name = " ".join(f"{k}={c[k]}" for k in ("impl", "bidirectional", "lengths", "dtype"))
        fwd, grad = c["forward"], c["gradient"]
        assert fwd["collectives"]["all-gather"] == 0, name
        assert grad["collectives"]["all-gather"] == 0, name
        assert fwd["collectives"]["all-to-all"] == grad["collectives"]["all-to-all"] == 0, name
        assert fwd["collectives"]["all-reduce"] == 0, name  # nothing to reduce in the forward
        assert grad["collectives"]["all-reduce"] >= 1, name  # the weight gradients, once
        assert fwd["sharded_out"] and grad["sharded_out"], name  # per-row outputs stay sharded
        assert fwd["diff"] == 0.0, name
        tol = 1e-5 if c["dtype"] == "float32" else 2e-2
        assert grad["diff"] < tol, (name, grad["diff"])


@needs_kernel
def test_sharded_transposed_copy_stays_sharded(sharded_cases):
    (c,) = [c for c in sharded_cases if c["impl"] == "transposed_copy"]
    assert c["equal"] and c["sharded_out"]
    assert sum(c["collectives"].values()) == 0


@needs_kernel
def test_unsharded_kernel_call_is_the_plain_ffi_call():
    config = fl.LSTMConfig(input_size=4, hidden_size=16, bidirectional=True)
    params = fl.init_params(jax.random.key(0), config)
    x = jnp.ones((8, 4, 4))

    def loss(p, x):
        return fl.lstm(p, x, config=config, impl="kernel")[0].sum()

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    assert "flax_lstm_cpu_forward" in text and "flax_lstm_cpu_backward" in text
    assert "CustomSPMDPartitioning" not in text
    assert "all-reduce" not in text and "all-gather" not in text


@needs_kernel
def test_sharded_vmapped_members(sharded_cases):
    """An ensemble vmapped over members (as flax_lstm.train runs it) stays partitioned."""
    (c,) = [c for c in sharded_cases if c["impl"] == "vmapped_members"]
    assert c["collectives"]["all-gather"] == 0
    assert c["diff"] < 1e-5


@pytest.fixture(scope="module")
def partitioned_cases() -> list[dict]:
    proc = python_process.run(str(HERE / "partitioned_check.py"), timeout=900, unset=("XLA_FLAGS",))
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_gate_axis_partitioned_modules_equal_the_unsharded(partitioned_cases):
    """Tensor parallelism (issue 24): ``with_partitioning`` initializers shard the 4H gate axis
    of the NNX and Linen modules over ``model`` (2 devices, and 2 × 2 with the batch over
    ``data``); forward and gradient equal the unsharded module's.

    The compiled collectives: the CPU kernel runs whole weight matrices, so its program
    all-gathers ``w_ih``, ``w_hh`` and the summed biases once (three all-gathers, no loop),
    and with a ``data`` axis all-reduces the weight gradients once. The scan keeps the gates
    sharded and reshuffles them inside its loop (all-to-all, collective-permute and
    all-gathers of the state), so on CPU the kernel is the cheaper tensor-parallel path.
    """
    kinds = {(c["kind"], c["impl"], c["mesh"]) for c in partitioned_cases}
    scan_cases = {("nnx", "scan", "model"), ("nnx", "scan", "data_model"),
                  ("linen", "scan", "data_model")}  # fmt: skip
    assert scan_cases <= kinds
    if fl.kernel.available():
        assert len(kinds) == 6
    for c in partitioned_cases:
        name = f"{c['kind']} {c['impl']} {c['mesh']}"
        fwd, grad = c["forward"]["collectives"], c["gradient"]["collectives"]
        assert c["w_ih"] == [None, "model", None], name  # the spec's entries: jax's repr varies
        assert c["forward"]["diff"] < 1e-6, (name, c["forward"]["diff"])
        assert c["gradient"]["diff"] < 1e-5, (name, c["gradient"]["diff"])
        assert fwd["all-reduce"] == 0, name  # nothing to sum in the forward
        if c["impl"] == "kernel":
            assert fwd == {"all-gather": 3, "all-reduce": 0, "all-to-all": 0,
                           "collective-permute": 0}, name  # fmt: skip
            assert grad["all-gather"] == 3 and grad["all-to-all"] == 0, name
            assert grad["all-reduce"] == (1 if c["mesh"] == "data_model" else 0), name
        else:
            assert fwd["all-to-all"] >= 1 and fwd["all-gather"] >= 1, name
            assert grad["all-reduce"] >= 1, name

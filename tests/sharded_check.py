"""Run by tests/test_sharding.py in a process of its own with 4 forced CPU devices.

For each case (path, directions, lengths, dtype) compiles the forward and the gradient of
`flax_lstm.lstm` on a batch sharded over a ``data`` mesh axis and prints one JSON line per case:
the all-gathers and all-reduces of the compiled HLO and the largest difference from the
unsharded call (forward: absolute; gradients: relative to each leaf's largest magnitude).
"""

from __future__ import annotations

import json
import os
import re

if __name__ == "__main__":  # not when pytest imports this file to collect doctests
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import flax_lstm as fl
from flax_lstm._kernel import ffi

IMPLS = {
    "auto": None,
    "kernel": "kernel",
    "scan-cpu": "scan",
    "scan-gpu-defaults": fl.Implementation(recurrence="scan", platform="gpu"),
}


def collectives(text: str) -> dict[str, int]:
    return {
        op: len(re.findall(rf"= [^\n]*? {op}(?:-start)?\(", text))
        for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
    }


def largest_difference(got, want, relative: bool) -> float:
    """The largest difference between two pytrees of arrays, leaf by leaf: absolute, or with
    ``relative`` over each leaf of ``want``'s largest magnitude."""
    diffs = []
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.abs(b).max(), 1e-30) if relative else 1.0
        diffs.append(float(np.abs(a - b).max() / scale))
    return max(diffs)


def case(impl: str, bidirectional: bool, lengths: bool, dtype: str, layers: int) -> dict:
    config = fl.LSTMConfig(
        input_size=8,
        hidden_size=16,
        num_layers=layers,
        bidirectional=bidirectional,
        batch_first=True,
    )
    params = fl.init_params(jax.random.key(0), config)
    x = jax.random.normal(jax.random.key(1), (32, 12, 8))
    ln = jnp.asarray(np.random.default_rng(0).integers(1, 13, 32)) if lengths else None
    cd = jnp.dtype(dtype)

    def fwd(p, x, ln):
        return fl.lstm(p, x, config=config, seq_lengths=ln, impl=IMPLS[impl], dtype=cd)

    def loss(p, x, ln):
        out, (h, c) = fwd(p, x, ln)
        f32 = jnp.float32
        return (out.astype(f32) ** 2).sum() + (h.astype(f32) ** 2).sum() + c.sum()

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = (params, x, ln)
    sharded = (
        jax.device_put(params, rep),
        jax.device_put(x, rows),
        None if ln is None else jax.device_put(ln, rows),
    )
    result = {
        "impl": impl,
        "bidirectional": bidirectional,
        "lengths": lengths,
        "dtype": dtype,
        "layers": layers,
    }
    for name, f in (("forward", fwd), ("gradient", jax.grad(loss, argnums=(0, 1)))):
        compiled = jax.jit(f).lower(*sharded).compile()
        got, want = compiled(*sharded), jax.jit(f)(*args)
        diff = largest_difference(got, want, relative=name != "forward")
        result[name] = {"collectives": collectives(compiled.as_text()), "diff": diff}
        result[name]["sharded_out"] = all(
            not o.sharding.is_fully_replicated
            for o in jax.tree.leaves(got)
            if o.ndim >= 2 and o.shape[0] == 32
        )
    return result


def transposed_copy() -> dict:
    """`flax_lstm._kernel.ffi.transposed_copy` of a (T, N, J) array sharded along N."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    a = jax.random.normal(jax.random.key(2), (12, 32, 24))
    sharded = jax.device_put(a, NamedSharding(mesh, P(None, "data")))
    compiled = jax.jit(ffi.transposed_copy).lower(sharded).compile()
    got = compiled(sharded)
    return {
        "impl": "transposed_copy",
        "collectives": collectives(compiled.as_text()),
        "equal": bool(np.array_equal(np.asarray(got), np.moveaxis(np.asarray(a), -1, 0))),
        "sharded_out": not got.sharding.is_fully_replicated,
    }


def vmapped_members() -> dict:
    """The gradient of two vmapped kernel models (an ensemble, as `flax_lstm.train` runs it)."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    config = fl.LSTMConfig(input_size=8, hidden_size=16, bidirectional=True, batch_first=True)
    keys = jax.random.split(jax.random.key(0), 2)
    params = jax.vmap(lambda k: fl.init_params(k, config))(keys)
    x = jax.random.normal(jax.random.key(1), (32, 12, 8))
    ln = jnp.arange(32) % 12 + 1

    def loss(p, x, ln):
        def one(p):
            return (fl.lstm(p, x, config=config, seq_lengths=ln, impl="kernel")[0] ** 2).sum()

        return jax.vmap(one)(p).sum()

    grad = jax.jit(jax.grad(loss))
    rows = NamedSharding(mesh, P("data"))
    sharded = (params, jax.device_put(x, rows), jax.device_put(ln, rows))
    compiled = grad.lower(*sharded).compile()
    got, want = compiled(*sharded), grad(params, x, ln)
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )
    return {"impl": "vmapped_members", "collectives": collectives(compiled.as_text()), "diff": diff}


# (impl, bidirectional, lengths, dtype, layers): both paths uni- and bidirectional with
# seq_lengths; two layers (the input gradient of layer 2 feeds layer 1) and no lengths once each.
CASES = [
    ("kernel", False, True, "float32", 1),
    ("kernel", True, True, "float32", 2),
    ("kernel", True, False, "float32", 1),
    ("scan-gpu-defaults", False, True, "float32", 1),
    ("scan-gpu-defaults", True, True, "float32", 2),
    ("scan-cpu", True, True, "float32", 1),
    # bfloat16: the kernel on CPUs with AVX512_BF16, else the scan, whose weight gradients
    # take the kernel library's transposed copy (partitioned as the kernel's calls are).
    ("auto", True, True, "bfloat16", 1),
]


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    for c in CASES:
        print(json.dumps(case(*c)), flush=True)
    print(json.dumps(transposed_copy()), flush=True)
    print(json.dumps(vmapped_members()), flush=True)


if __name__ == "__main__":
    main()

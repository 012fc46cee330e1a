"""Run by tests/test_sharding.py in a process of its own with 4 forced CPU devices.

Tensor parallelism the Flax way: the modules' initializers wrapped with
``nnx.with_partitioning`` / ``nn.with_partitioning`` shard the 4H gate axis of ``w_ih``,
``w_hh`` and the biases over a ``model`` mesh axis. For each case (module kind, recurrence,
mesh: ``model`` of 2 devices, or ``data`` × ``model`` of 2 × 2 with the batch over ``data``)
this compiles the forward and the gradient of a bidirectional LSTM on the sharded parameters,
and prints one JSON line: the collectives of the compiled HLO, the parameters' partition spec,
and the largest difference from the unsharded module (absolute; gradients relative to each
leaf's largest magnitude).
"""

from __future__ import annotations

import json
import os

if __name__ == "__main__":  # not when pytest imports this file to collect doctests
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_check import (  # this folder: the script's own, or pytest's rootdir
    collectives,
    largest_difference,
)

import flax_lstm as fl

IN, H, N, L = 8, 16, 8, 12
GATES = (None, "model", None)  # (D, 4H, in): the 4H gate axis over "model"
MESHES = {"model": ((2,), ("model",)), "data_model": ((2, 2), ("data", "model"))}


def mesh_of(name: str) -> jax.sharding.Mesh:
    shape, axes = MESHES[name]
    devices = jax.devices()[: int(np.prod(shape))]
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def initializers(with_partitioning) -> dict:
    return {
        "kernel_init": with_partitioning(fl.torch_uniform(H), GATES),
        "recurrent_kernel_init": with_partitioning(fl.torch_uniform(H), GATES),
        "bias_init": with_partitioning(fl.torch_uniform(H), (None, "model")),
    }


def nnx_model(impl: str, partitioned: bool):
    """The NNX module as ``(forward(params, x), params)``: sharded as its metadata says."""
    inits = initializers(nnx.with_partitioning) if partitioned else {}
    model = fl.nnx.LSTM(
        IN, H, bidirectional=True, batch_first=True, impl=impl, rngs=nnx.Rngs(0), **inits
    )
    graphdef, state = nnx.split(model)
    return (lambda state, x: nnx.merge(graphdef, state)(x)), state


def linen_model(impl: str, partitioned: bool):
    """The Linen module as ``(forward(params, x), params)``, initialised into the shardings
    of its ``nn.Partitioned`` boxes (``nn.get_sharding``) under the mesh in context."""
    inits = initializers(nn.with_partitioning) if partitioned else {}
    module = fl.linen.LSTM(H, bidirectional=True, batch_first=True, impl=impl, **inits)
    x = np.zeros((N, L, IN), np.float32)
    init = jax.jit(module.init)
    if partitioned:
        abstract = jax.eval_shape(module.init, jax.random.key(0), x)
        mesh = jax.sharding.get_abstract_mesh()
        init = jax.jit(module.init, out_shardings=nn.get_sharding(abstract, mesh))
    return module.apply, init(jax.random.key(0), x)


def case(kind: str, impl: str, mesh_name: str) -> dict:
    build = nnx_model if kind == "nnx" else linen_model
    x = jax.random.normal(jax.random.key(1), (N, L, IN))
    forward, plain = build(impl, partitioned=False)

    def loss(params, x):
        out, (h, c) = forward(params, x)
        return (out**2).sum() + (h**2).sum() + c.sum()

    mesh = mesh_of(mesh_name)
    with jax.set_mesh(mesh):
        _, params = build(impl, partitioned=True)
        rows = P("data") if "data" in mesh.axis_names else P()
        xs = jax.device_put(x, NamedSharding(mesh, rows))
        w_ih = params["layers"][0]["w_ih"] if kind == "nnx" else params["params"]["layer_0"]
        w_ih = w_ih[...] if kind == "nnx" else w_ih["w_ih"].value
        result = {"kind": kind, "impl": impl, "mesh": mesh_name, "w_ih": list(w_ih.sharding.spec)}
        for name, f in (("forward", forward), ("gradient", jax.grad(loss))):
            compiled = jax.jit(f).lower(params, xs).compile()
            got, want = compiled(params, xs), jax.jit(f)(plain, x)
            diff = largest_difference(got, want, relative=name != "forward")
            result[name] = {"collectives": collectives(compiled.as_text()), "diff": diff}
    return result


CASES = [
    ("nnx", "kernel", "model"),
    ("nnx", "kernel", "data_model"),
    ("nnx", "scan", "model"),
    ("nnx", "scan", "data_model"),
    ("linen", "kernel", "data_model"),
    ("linen", "scan", "data_model"),
]


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    kernel = fl.kernel.available()
    for c in CASES:
        if c[1] == "kernel" and not kernel:
            continue
        print(json.dumps(case(*c)), flush=True)


if __name__ == "__main__":
    main()

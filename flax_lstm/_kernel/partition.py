"""Partitioning the CPU kernel's FFI calls along the batch under `jax.sharding`."""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flax_lstm._kernel import export

# Partitioning along the batch. Under `jax.sharding` an FFI call is opaque to XLA, which gathers
# every operand onto every device and runs the whole batch on each. The kernel's calls are
# independent per sequence: `batched_ffi_call` declares that (a Shardy sharding rule in which
# only the batch axis may be sharded) and lowers each device's part as the same FFI call on its
# own rows; outputs that sum over the batch (the bias gradient) are reduced with one psum.
# Unsharded (one device) the wrapper lowers to the plain FFI call: the program is unchanged.


def _batch_spec(mesh, arg_shapes, batch_axes) -> Any:
    """The mesh axes that shard the batch of the first batched operand, or None (replicate):
    also when its sharding is not a `NamedSharding` or the batch does not divide evenly."""
    i = next(i for i, ax in enumerate(batch_axes) if ax is not None)
    shape, ax = arg_shapes[i], batch_axes[i]
    sharding = shape.sharding
    if not isinstance(sharding, NamedSharding) or len(sharding.spec) <= ax:
        return None
    names = sharding.spec[ax]
    if names is None:
        return None
    size = 1
    for name in names if isinstance(names, tuple) else (names,):
        size *= mesh.shape[name]
    return names if shape.shape[ax] % size == 0 else None


def _sharding_rule(arg_ndims, batch_axes, out_ndims, out_axes) -> tuple[str, tuple[str, ...]]:
    """The einsum-like Shardy rule: factor ``n`` on every batch axis, a factor of its own on
    every other axis (all of them to be replicated)."""
    others: list[str] = []

    def mapping(prefix, ndim, batch):
        names = []
        for k in range(ndim):
            if k == batch:
                names.append("n")
            else:
                names.append(f"{prefix}{k}")
                others.append(names[-1])
        return " ".join(names)

    ins = [
        mapping(f"i{j}x", nd, ax)
        for j, (nd, ax) in enumerate(zip(arg_ndims, batch_axes, strict=True))
    ]
    outs = [
        mapping(f"o{j}x", nd, ax)
        for j, (nd, ax) in enumerate(zip(out_ndims, out_axes, strict=True))
    ]
    return ", ".join(ins) + " -> " + ", ".join(outs), tuple(others)


def batched_ffi_call(target, result_shapes, *, batch_axes, out_axes, summed=(), **kwargs):
    """`jax.ffi.ffi_call` of an operation independent per sequence, partitioned along the batch.

    ``batch_axes``/``out_axes``: the batch axis of each operand/result, None where it has none
    (replicated). Results in ``summed`` are sums over the batch: each device's partial sum is
    psummed. Returns ``call(*args, **attributes)`` as `jax.ffi.ffi_call` does.
    """
    result_shapes = tuple(result_shapes)
    first = next(i for i, ax in enumerate(batch_axes) if ax is not None)

    def call(*args, **attributes):
        def local(*arrays):  # one device's rows: the result shapes follow its batch
            n = arrays[first].shape[batch_axes[first]]
            shapes = [
                s if ax is None else _with_axis(s, ax, n)
                for s, ax in zip(result_shapes, out_axes, strict=True)
            ]
            return tuple(export.ffi_call(target, shapes, **kwargs)(*arrays, **attributes))

        return partitioned(local, args, batch_axes, result_shapes, out_axes, summed)

    return call


def _with_axis(s: jax.ShapeDtypeStruct, ax: int, n: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*s.shape[:ax], n, *s.shape[ax + 1 :]), s.dtype)


def partitioned(local, args, batch_axes, result_shapes, out_axes, summed=()):
    """``local(*args)`` (a tuple of arrays, computed row by row of the batch) under
    `custom_partitioning`: each device runs ``local`` on its own rows. Under `jax.vmap` it runs
    once per element (as ``vmap_method="sequential"``)."""

    def partition(mesh, arg_shapes, result_shape):
        names = _batch_spec(mesh, arg_shapes, batch_axes)

        def spec(ndim, ax):
            return NamedSharding(mesh, P(*(names if k == ax else None for k in range(ndim))))

        def lower(*arrays):
            outs = local(*arrays)
            if names is None:
                return outs
            return tuple(jax.lax.psum(o, names) if j in summed else o for j, o in enumerate(outs))

        args_sh = tuple(
            spec(len(a.shape), ax) for a, ax in zip(arg_shapes, batch_axes, strict=True)
        )
        outs_sh = tuple(
            spec(len(r.shape), ax) for r, ax in zip(result_shape, out_axes, strict=True)
        )
        return mesh, lower, outs_sh, args_sh

    def infer(mesh, arg_shapes, result_shape):
        return partition(mesh, arg_shapes, result_shape)[2]

    rule, others = _sharding_rule(
        [a.ndim for a in args], batch_axes, [len(s.shape) for s in result_shapes], out_axes
    )
    sharded = custom_partitioning(local)
    sharded.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        need_replication_factors=others,
    )
    batched = jax.custom_batching.custom_vmap(sharded)

    @batched.def_vmap
    def _sequential(axis_size, in_batched, *args):
        del axis_size
        fixed = [a for a, b in zip(args, in_batched, strict=True) if not b]
        moving = [a for a, b in zip(args, in_batched, strict=True) if b]

        def one(_, xs):
            it_x, it_f = iter(xs), iter(fixed)
            return (), batched(*(next(it_x) if b else next(it_f) for b in in_batched))

        outs = jax.lax.scan(one, (), moving)[1]
        return outs, (True,) * len(outs)

    return batched(*args)

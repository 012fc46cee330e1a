"""The compiled CPU kernel of the LSTM recurrence, built on first use.

On CPU the time of an LSTM goes to its T sequential steps: a small GEMM (``[x_t, h]·Wᵀ``
forward, ``dz·W_hh`` backward) and the gate arithmetic. XLA:CPU runs each step as several
operations, wakes its thread pool for every GEMM, runs the gate arithmetic on one thread and
allocates per-step buffers. The kernel in ``_kernel/lstm_cpu.cc`` runs all the steps of a layer
(every direction) in one XLA FFI call instead: the weights are packed once per call into
register-blocked panels, each step is split into chunks of hidden units whose GEMM and gate
arithmetic run back to back on one thread, and the threads, the caller plus workers of XLA's
own pool that join whenever they are free, claim chunks in order (at batches of at most 4,
each thread keeps to its own chunks, and the input projection is one GEMM per 64 steps).
The weight and input gradients stay single large XLA GEMMs, except for ragged batches (below).

Ragged batches: with ``seq_lengths`` the mask is a prefix per sequence in the kernel's order
of steps, for both directions (the caller reverses direction 1 within each length). The kernel
then takes the sequences in order of length, longest first, once per call, and runs each
step's GEMM and gate arithmetic, forward and backward, on the sequences that have not ended;
an ended one only carries its state on (backward: passes dh and dc on, dz zero), which is what
its masked steps computed before, so the results are those of the padded computation to float
rounding. Any other mask keeps every sequence running, masked step by step. In float32 the
weight and input gradients of a masked batch then come from the kernel library too
(`weight_grads`, `input_grad`), over the valid steps only, where XLA's GEMMs would run over all
T·N rows (a padded call keeps XLA's GEMMs; bfloat16 too). The `lax.scan` path (GPU, TPU) has
static shapes and computes every padded step; there, batches bucketed by length are what saves
the padding.

`flax_lstm.stack` uses it for float32 layers, and for bfloat16 ones on CPUs with AVX512_BF16
(``vdpbf16ps``; float32 gates and cell state), without projection, recurrent dropout or remat
on the CPU backend (see `flax_lstm.Implementation`); everything else runs the
`lax.scan` path, and so does any machine where the kernel cannot be built.

Under `jax.sharding`, with the batch sharded over a mesh, each call runs on every device's own
rows (the kernel's calls are partitioned along the batch; nothing is gathered). The forward
equals the unsharded call bit for bit where each device holds more than 4 sequences (at most
4 take the small-batch path: within 2e-7), the gradients up to the order of the batch sum.
`jax.export` serializes a computation that calls the kernel with
``disabled_checks=flax_lstm.kernel.export_checks()``; the process that loads it calls
`available` first, which registers the kernel's targets.

The source is compiled once per machine with the system C++ compiler (``$CXX``, else ``g++``,
``c++`` or ``clang++``; C++20), ``-O3 -march=native`` (or ``-mcpu=native``, or neither, where
the compiler rejects it) and the XLA FFI headers of the installed jaxlib,
into ``$FLAX_LSTM_CACHE_DIR`` (default ``~/.cache/flax_lstm``); the file name hashes the
source, the flags, the compiler, jaxlib's version and (for ``-march=native``) the CPU, so a
change of any of them builds anew. About 4 s, once: processes that start together (pytest-xdist
workers, the processes of a distributed run) wait on a file lock for one build, and a build
that was killed leaves no temporary file behind for long (the next build removes it).
``flax-lstm kernel`` builds the library and reports it (`info`): run it to prebuild into a
container image or a shared cache folder, with the same environment variables as the runs.

Environment variables:
  ``FLAX_LSTM_CPU_KERNEL=0``: never build or use the kernel (the scan path everywhere). Read at
  every call that plans a computation, so it may be changed at run time; a computation that
  was already compiled keeps the path it was compiled with.
  ``FLAX_LSTM_NUM_THREADS``: threads of the kernel (default: the CPUs this process may use).
  ``FLAX_LSTM_CACHE_DIR``: where the built library is kept.
  ``FLAX_LSTM_ARCH``: the target instruction set instead of the building machine's:
  ``x86-64-v3`` (any AVX2 machine), ``x86-64-v4``, ``sapphirerapids``… (a ``-march=`` value),
  or ``none`` for the compiler's default. The library is then keyed without the CPU, so
  machines with different CPUs share one build (a cluster's shared home, a container image).
  ``FLAX_LSTM_CXXFLAGS``: extra compiler flags, appended (and hashed into the file name).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from flax_lstm._kernel import build, partition

Array = jax.Array

__all__ = ["available", "build_error", "export_checks", "info", "num_threads"]


def build_error(dtype: Any = jnp.float32) -> str | None:
    """Why the CPU kernel is not available for compute ``dtype`` (building it if need be), or
    None if it is."""
    loaded = build.load()
    if isinstance(loaded, str):
        return loaded
    name = jnp.dtype(dtype).name
    if name in loaded:
        return None
    return build.NO_BF16 if name == "bfloat16" else f"no kernel for dtype {name}"


def available(dtype: Any = jnp.float32) -> bool:
    """Whether the compiled CPU kernel is built and registered for compute ``dtype`` (float32,
    or bfloat16 on CPUs with AVX512_BF16), building it if need be. A failed build warns once.

    Example:
      >>> import flax_lstm.kernel
      >>> isinstance(flax_lstm.kernel.available(), bool)
      True
    """
    loaded = build.load()
    if isinstance(loaded, str) and loaded != build.DISABLED:
        _warn_once(loaded)
    return build_error(dtype) is None


def export_checks() -> list[Any]:
    """What `jax.export.export` needs to serialize a computation that calls the kernel.

    The kernel's FFI targets have no compatibility guarantee (an artifact runs only where the
    same flax_lstm version builds the kernel): export refuses them unless their check is
    disabled by name. Before calling a deserialized computation in a new process, `available`
    must have registered the targets. ``impl="scan"`` exports pure StableHLO instead, with
    jax's compatibility guarantees.

    Example:
      >>> import jax, jax.numpy as jnp, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=16)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> f = jax.jit(lambda p, x: fl.lstm(p, x, config=config)[0])
      >>> exp = jax.export.export(f, disabled_checks=fl.kernel.export_checks())(
      ...     params, jnp.ones((20, 2, 3)))
      >>> exp.out_avals
      (ShapedArray(float32[20,2,16]),)
    """
    names = [t for targets in build.TARGETS.values() for t, _ in targets]
    names += [t for t, _ in build.TRANSPOSE.values()]
    names += [build.WEIGHT_GRADS[0], build.INPUT_GRAD[0]]
    return [jax.export.DisabledSafetyCheck.custom_call(n) for n in names]


def info() -> dict[str, Any]:
    """The kernel's state, building it if need be (``flax-lstm kernel`` prints it).

    ``available``; ``error`` (why not, or None); ``library`` (its path); ``compiler``,
    ``flags`` and ``isa`` (the instruction-set extensions it was compiled for) as recorded at
    its build; ``bfloat16`` (whether it has the bfloat16 kernels); ``threads`` (per layer, at
    most: `num_threads`); ``cache_dir``.
    """
    error = build_error()
    state: dict[str, Any] = {
        "available": error is None,
        "error": error,
        "library": str(build.LIBRARY[0]) if build.LIBRARY and error is None else None,
        "compiler": None,
        "flags": None,
        "isa": None,
        "bfloat16": error is None and build_error(jnp.bfloat16) is None,
        "threads": num_threads(),
        "cache_dir": str(build.cache_dir()),
    }
    if state["library"]:
        with contextlib.suppress(OSError, ValueError):
            state.update(json.loads(build.LIBRARY[0].with_suffix(".json").read_text()))
    return state


@functools.cache
def _warn_once(error: str) -> None:
    warnings.warn(f"flax_lstm: {error}; using the lax.scan path on CPU", stacklevel=3)


def num_threads(hidden: int | None = None) -> int:
    """Threads the kernel uses for a layer of ``hidden`` units (None: work not split by units).

    ``FLAX_LSTM_NUM_THREADS`` if set, else every usable CPU, at most one per 16 hidden units.
    XLA's thread pool supplies them: fewer may join. Small steps too are shared (B1 T256 H128
    I64 forward 1.15 → 0.82 ms on two threads, B16 T128 H64 I32 fwd+bwd 3.89 → 2.74 ms); one
    thread was faster for them only with the kernel's first design, which met at a barrier
    every step.
    """
    env = os.environ.get("FLAX_LSTM_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, cpus if hidden is None else min(cpus, hidden // 16))


def _targets(dtype: Any) -> tuple[str, str]:
    """The forward and backward FFI targets for compute ``dtype`` (RuntimeError if none)."""
    error = build_error(dtype)
    if error is not None:
        raise RuntimeError(f"flax_lstm: {error}")
    forward_target, backward_target = build.TARGETS[jnp.dtype(dtype).name]
    return forward_target[0], backward_target[0]


def _mask_arg(mask: Array | None) -> Array:
    return jnp.zeros((0,), jnp.int8) if mask is None else mask.astype(jnp.int8)


def forward(
    x: Array,
    w_ih: Array,
    b: Array | None,
    w_hh: Array,
    h0: Array,
    c0: Array,
    mask: Array | None,
    *,
    save_acts: bool,
    all_c: bool,
) -> tuple[Array, Array, Array | None]:
    """The recurrence of one layer (all its directions).

    x (T, D, N, I) with direction 1's input already reversed; w_ih (D, 4H, I); w_hh (D, 4H, H);
    h0 (D, N, H): all in the compute dtype, float32 or bfloat16. b (D, 4H) (the sum of both
    biases) or None, and c0 (D, N, H): float32. mask (T, N) bool or None; a prefix per
    sequence (its length) skips the sequences that have ended (see the module docstring).
    Returns ``hs`` (T, D, N, H) in the compute dtype, and in float32 ``cs`` (T, D, N, H), or
    (D, N, H) for the last step only unless ``all_c``, and the activated gates (T, D, N, 4H)
    when ``save_acts`` (else None).
    """
    target = _targets(x.dtype)[0]
    t, d, n, _ = x.shape
    h = h0.shape[-1]
    f32 = jnp.float32
    out = (
        jax.ShapeDtypeStruct((t, d, n, h), x.dtype),
        jax.ShapeDtypeStruct((t, d, n, h) if all_c else (d, n, h), f32),
        jax.ShapeDtypeStruct((t, d, n, 4 * h) if save_acts else (0,), f32),
    )
    b = jnp.zeros((d, 4 * h), f32) if b is None else b.astype(f32)
    call = partition.batched_ffi_call(
        target,
        out,
        batch_axes=(2, None, None, None, 1, 1, None if mask is None else 1),
        out_axes=(2, 2 if all_c else 1, 2 if save_acts else None),
        vmap_method="sequential",
    )
    threads = num_threads(h)
    cd = x.dtype
    hs, cs, acts = call(
        x,
        w_ih.astype(cd),
        b,
        w_hh.astype(cd),
        h0.astype(cd),
        c0.astype(f32),
        _mask_arg(mask),
        threads=threads,
    )
    return hs, cs, acts if save_acts else None


def backward(
    dhs: Array,
    dcs: Array,
    acts: Array,
    cs: Array,
    c0: Array,
    w_hh: Array,
    mask: Array | None,
) -> tuple[Array, Array, Array, Array]:
    """Gradients through the recurrence: ``(dz, db, dh0, dc0)``.

    dhs (T, D, N, H) is the gradient of every step's h, and w_hh (D, 4H, H), in the compute
    dtype; dcs, the gradient of every step's c (T, D, N, H) or of the last one (D, N, H), and
    acts and cs as saved by `forward`, in float32. dz (T, D, N, 4H), in the compute dtype, is
    the gradient of the gate pre-activations, from which the weight and input gradients follow
    (zero at masked steps: in float32 it takes the gates' buffer, where the rows of ended
    sequences keep the zeros that `forward` wrote); db (D, 4H) its float32 sum over steps and
    sequences (the bias gradient); dh0 and dc0 (D, N, H) float32.
    """
    target = _targets(w_hh.dtype)[1]
    t, d, n, g4 = acts.shape
    h = g4 // 4
    f32 = jnp.float32
    out = (
        jax.ShapeDtypeStruct((t, d, n, g4), w_hh.dtype),
        jax.ShapeDtypeStruct((d, g4), f32),
        jax.ShapeDtypeStruct((d, n, h), f32),
        jax.ShapeDtypeStruct((d, n, h), f32),
    )
    # In float32 dz takes the saved gates' buffer (operand 2): the kernel reads each step's
    # gates before writing its dz, and XLA then allocates (and the OS zero-fills) no second
    # (T, N, 4H).
    aliases = {2: 0} if w_hh.dtype == f32 else {}
    call = partition.batched_ffi_call(
        target,
        out,
        batch_axes=(2, dcs.ndim - 2, 2, 2, 1, None, None if mask is None else 1),
        out_axes=(2, None, 1, 1),
        summed=(1,),  # db
        vmap_method="sequential",
        input_output_aliases=aliases,
    )
    threads = num_threads(h)
    return call(
        dhs.astype(w_hh.dtype),
        dcs.astype(f32),
        acts,
        cs,
        c0.astype(f32),
        w_hh,
        _mask_arg(mask),
        threads=threads,
    )


def weight_grads(dz: Array, x: Array, hs: Array, h0: Array, mask: Array) -> tuple[Array, Array]:
    """The weight gradients of a ragged batch, over its valid steps only: ``(dw_ih, dw_hh)``,
    float32.

    dz (T, D, N, 4H) as `backward` returns it (zero at the masked steps), x (T, D, N, I), hs
    (T, D, N, H) and h0 (D, N, H) as `forward` took and returned them, all float32; mask (T, N)
    bool. ``dw_ih = Σ dzᵀ·x`` and ``dw_hh = Σ dzᵀ·h_prev`` over the steps where mask is set:
    what the GEMMs over all T·N steps give, to float rounding, at the cost of the valid steps.
    Every sum is taken in one order whatever the number of threads.
    """
    _targets(jnp.float32)  # loaded, or RuntimeError
    _, d, _, i = x.shape
    g4 = dz.shape[-1]
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((d, g4, i), f32), jax.ShapeDtypeStruct((d, g4, g4 // 4), f32))
    call = partition.batched_ffi_call(
        build.WEIGHT_GRADS[0],
        out,
        batch_axes=(2, 2, 2, 1, 1),
        out_axes=(None, None),
        summed=(0, 1),
        vmap_method="sequential",
    )
    args = (dz, x, hs, h0)
    return call(*(a.astype(f32) for a in args), mask.astype(jnp.int8), threads=num_threads())


def input_grad(dz: Array, w_ih: Array, mask: Array) -> Array:
    """The input gradient of a ragged batch, over its valid steps only: ``dz·W_ih`` where mask
    is set and zero elsewhere, (T, D, N, I) float32; dz (T, D, N, 4H) and w_ih (D, 4H, I)
    float32, mask (T, N) bool. A call of its own, which XLA leaves out where the input needs no
    gradient."""
    _targets(jnp.float32)  # loaded, or RuntimeError
    t, d, n, _ = dz.shape
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((t, d, n, w_ih.shape[-1]), f32),)
    call = partition.batched_ffi_call(
        build.INPUT_GRAD[0],
        out,
        batch_axes=(2, None, 1),
        out_axes=(2,),
        vmap_method="sequential",
    )
    return call(dz.astype(f32), w_ih.astype(f32), mask.astype(jnp.int8), threads=num_threads())[0]


@jax.custom_jvp
def transposed_copy(a: Array) -> Array:
    """``a`` (R, …, J) as (J, R, …) (``a.T`` in 2-D), float32 or bfloat16, written out row-major
    by the kernel library.

    XLA:CPU makes a transpose a change of layout, and a bfloat16 GEMM with a transposed
    (column-major) operand then runs in float32 after converting both operands; this copy is
    an ordinary row-major array. Partitioned along axis 1 (the batch of a (T, N, J) operand)
    under `jax.sharding`. Needs the kernel (`available`).
    """
    _targets(jnp.float32)  # loaded, or RuntimeError
    name = build.TRANSPOSE[jnp.dtype(a.dtype).name][0]
    out = jax.ShapeDtypeStruct(a.shape[-1:] + a.shape[:-1], a.dtype)
    if a.ndim == 2:
        call = jax.ffi.ffi_call(name, out, vmap_method="sequential")
        # A copy of fewer than 2^20 elements stays on the calling thread, as it always has.
        return call(a, threads=num_threads() if a.size >= 1 << 20 else 1)

    def copy(a):  # one device's rows: the 2-D copy of (R·N…, J)
        flat = a.reshape(-1, a.shape[-1])
        return (transposed_copy(flat).reshape(a.shape[-1:] + a.shape[:-1]),)

    out_axis = a.ndim - 1 if a.ndim > 1 else None
    return partition.partitioned(copy, (a,), (1,), (out,), (out_axis,))[0]


@transposed_copy.defjvp
def _transposed_copy_jvp(primals, tangents):
    return transposed_copy(primals[0]), jnp.moveaxis(tangents[0], -1, 0)

"""The XLA FFI bindings of the compiled CPU kernel (private; the user's view is
`flax_lstm.kernel`, and `flax_lstm.plan` alone decides where these run).

Each function is one call into the library that `build` compiled (``lstm_cpu.cc``),
partitioned along the batch under `jax.sharding` (`partition`). `flax_lstm.recurrence` calls
`forward`, `backward`, `weight_grads` and `input_grad` for a plan whose recurrence is
``"kernel"``, and `transposed_copy` for that plan's bfloat16 weight gradients. Each raises
RuntimeError where the library is not available (`flax_lstm.kernel.build_error` says why).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from flax_lstm._kernel import build, export, partition, tuning

Array = jax.Array

__all__ = [
    "backward",
    "forward",
    "input_grad",
    "num_threads",
    "settings",
    "targets",
    "transposed_copy",
    "usable_cpus",
    "weight_grads",
]


# The directions of a layer of fewer than 32 units a direction (a thread each, as `num_threads`
# says) share an inference forward's step only from this many units of rows (N·H): below it,
# two threads spent more waiting than they saved, where the training forward (which also saves
# the gates) and the backward still gained (docs/performance/design.md, "A thread per
# direction").
MIN_FORWARD_SPLIT = 256


def call_work(steps: Any, batch: Any, hidden: int, inputs: int) -> int | None:
    """A layer's work a direction as `tuning.min_split_work` counts it, ``steps × batch ×
    hidden·(hidden + inputs)/2`` (an eighth of its forward's multiply-adds; with as many inputs
    as units, steps × batch × H²); None where ``steps`` or ``batch`` is symbolic
    (`jax.export`): large."""
    if not isinstance(steps, int) or not isinstance(batch, int):
        return None
    return steps * batch * hidden * (hidden + inputs) // 2


def num_threads(
    hidden: int | None = None,
    directions: int = 1,
    rows: int | None = None,
    work: int | None = None,
) -> int:
    """Threads the kernel uses for a layer of ``hidden`` units in ``directions`` directions
    (None: work not split by units); ``rows``: an inference forward's sequences (None: another
    call); ``work``: the layer's `call_work` (None: large).

    ``FLAX_LSTM_NUM_THREADS`` if set, else every usable CPU, at most one per 16 hidden units of
    each direction, and at least one per direction (a step's items are chunks of each
    direction's units: a direction of fewer than 32 units keeps one thread, whose share of its
    step a second thread would wait for longer than it saves); an inference forward whose step
    is smaller than `MIN_FORWARD_SPLIT` counts one direction; a call of less `work` than
    `tuning.min_split_work` takes one thread a direction, whatever its units. XLA's thread pool
    supplies them: fewer may join. The small steps of a larger call are shared too: one thread
    was faster for them only with the kernel's first design, which met at a barrier every step
    (measured: docs/performance/design.md, "The CPU kernel", "A thread per direction" and
    "Small calls on one thread").
    """
    env = os.environ.get("FLAX_LSTM_NUM_THREADS")
    if env:
        return max(1, int(env))
    cpus = usable_cpus()
    if hidden is not None and isinstance(rows, int) and rows * hidden < MIN_FORWARD_SPLIT:
        directions = 1  # (symbolic rows: large)
    if work is not None and work < tuning.min_split_work():
        return max(1, min(cpus, directions))
    if hidden is None:
        return max(1, cpus)
    return max(1, min(cpus, directions * max(1, hidden // 16)))


def settings() -> tuple[int, int, int]:
    """What the kernel's calls read from the environment as they are traced: its threads (at
    most, per layer: `num_threads`), its small-batch size (`tuning.small_batch`) and the work
    from which a layer's units are shared among threads (`tuning.min_split_work`). A plan holds
    them (`flax_lstm.plan.Plan.kernel_settings`), and so does the calibration's key."""
    return num_threads(), tuning.small_batch(), tuning.min_split_work()


def usable_cpus() -> int:
    """The CPUs this process may run on: fewer than the machine's under ``taskset`` or a
    container's CPU set."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def targets(dtype: Any) -> tuple[str, str]:
    """The forward and backward FFI targets for compute ``dtype`` (RuntimeError if none)."""
    error = build.error(jnp.dtype(dtype).name)
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
    sequence (its length) skips the sequences that have ended (see `flax_lstm.kernel`).
    Returns ``hs`` (T, D, N, H) in the compute dtype, and in float32 ``cs`` (T, D, N, H), or
    (D, N, H) for the last step only unless ``all_c``, and the activated gates (T, D, N, 4H)
    when ``save_acts`` (else None).
    """
    target = targets(x.dtype)[0]
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
    threads = num_threads(h, d, None if save_acts else n, call_work(t, n, h, x.shape[-1]))
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
        small_batch=tuning.small_batch(),
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
    *,
    inputs: int,
) -> tuple[Array, Array, Array, Array]:
    """Gradients through the recurrence: ``(dz, db, dh0, dc0)``.

    dhs (T, D, N, H) is the gradient of every step's h, and w_hh (D, 4H, H), in the compute
    dtype; dcs, the gradient of every step's c (T, D, N, H) or of the last one (D, N, H), and
    acts and cs as saved by `forward`, in float32. dz (T, D, N, 4H), in the compute dtype, is
    the gradient of the gate pre-activations, from which the weight and input gradients follow
    (zero at masked steps: in float32 it takes the gates' buffer, where the rows of ended
    sequences keep the zeros that `forward` wrote); db (D, 4H) its float32 sum over steps and
    sequences (the bias gradient); dh0 and dc0 (D, N, H) float32. ``inputs``: the layer's input
    size, which its threads depend on (`num_threads`).
    """
    target = targets(w_hh.dtype)[1]
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
    threads = num_threads(h, d, work=call_work(t, n, h, inputs))
    return call(
        dhs.astype(w_hh.dtype),
        dcs.astype(f32),
        acts,
        cs,
        c0.astype(f32),
        w_hh,
        _mask_arg(mask),
        threads=threads,
        small_batch=tuning.small_batch(),
    )


def weight_grads(
    dz: Array, x: Array, hs: Array, h0: Array, mask: Array | None
) -> tuple[Array, Array]:
    """The weight gradients ``(dw_ih, dw_hh)``, float32, over the valid steps only.

    dz (T, D, N, 4H) as `backward` returns it (zero at the masked steps), x (T, D, N, I), hs
    (T, D, N, H) and h0 (D, N, H) as `forward` took and returned them, all float32; mask (T, N)
    bool, or None: every step valid. ``dw_ih = Σ dzᵀ·x`` and ``dw_hh = Σ dzᵀ·h_prev`` over the
    steps where mask is set: what the GEMMs over all T·N steps give, to float rounding, at the
    cost of the valid steps, without the copies XLA makes of ``[x, h_prev]`` for its GEMM.
    Every sum is taken in one order whatever the number of threads.
    """
    targets(jnp.float32)  # loaded, or RuntimeError
    t, d, n, i = x.shape
    g4 = dz.shape[-1]
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((d, g4, i), f32), jax.ShapeDtypeStruct((d, g4, g4 // 4), f32))
    call = partition.batched_ffi_call(
        build.WEIGHT_GRADS[0],
        out,
        batch_axes=(2, 2, 2, 1, None if mask is None else 1),
        out_axes=(None, None),
        summed=(0, 1),
        vmap_method="sequential",
    )
    args = (dz, x, hs, h0)
    threads = num_threads(None, d, work=call_work(t, n, g4 // 4, i))
    return call(*(a.astype(f32) for a in args), _mask_arg(mask), threads=threads)


def input_grad(dz: Array, w_ih: Array, mask: Array | None) -> Array:
    """The input gradient over the valid steps only: ``dz·W_ih`` where mask is set and zero
    elsewhere, (T, D, N, I) float32; dz (T, D, N, 4H) and w_ih (D, 4H, I) float32, mask (T, N)
    bool, or None: every step valid. A call of its own, which XLA leaves out where the input
    needs no gradient."""
    targets(jnp.float32)  # loaded, or RuntimeError
    t, d, n, _ = dz.shape
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((t, d, n, w_ih.shape[-1]), f32),)
    call = partition.batched_ffi_call(
        build.INPUT_GRAD[0],
        out,
        batch_axes=(2, None, None if mask is None else 1),
        out_axes=(2,),
        vmap_method="sequential",
    )
    threads = num_threads(None, d, work=call_work(t, n, dz.shape[-1] // 4, w_ih.shape[-1]))
    return call(dz.astype(f32), w_ih.astype(f32), _mask_arg(mask), threads=threads)[0]


@jax.custom_jvp
def transposed_copy(a: Array) -> Array:
    """``a`` (R, …, J) as (J, R, …) (``a.T`` in 2-D), float32 or bfloat16, written out row-major
    by the kernel library.

    XLA:CPU makes a transpose a change of layout, and a bfloat16 GEMM with a transposed
    (column-major) operand then runs in float32 after converting both operands; this copy is
    an ordinary row-major array. Partitioned along axis 1 (the batch of a (T, N, J) operand)
    under `jax.sharding`. Needs the kernel library (`flax_lstm.kernel.available`).
    """
    targets(jnp.float32)  # loaded, or RuntimeError
    name = build.TRANSPOSE[jnp.dtype(a.dtype).name][0]
    out = jax.ShapeDtypeStruct(a.shape[-1:] + a.shape[:-1], a.dtype)
    if a.ndim == 2:
        call = export.ffi_call(name, out, vmap_method="sequential")
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

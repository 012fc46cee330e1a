"""The compiled CPU kernel of the LSTM recurrence, built on first use.

On CPU the time of an LSTM goes to its T sequential steps: a small GEMM (``[x_t, h]·Wᵀ``
forward, ``dz·W_hh`` backward) and the gate arithmetic. XLA:CPU runs each step as several
operations, wakes its thread pool for every GEMM, runs the gate arithmetic on one thread and
allocates per-step buffers. The kernel in ``_kernel/lstm_cpu.cc`` runs all the steps of a layer
(every direction) in one XLA FFI call instead: the weights are packed once per call into
register-blocked panels, each step is split into chunks of hidden units whose GEMM and gate
arithmetic run back to back on one thread, and the threads, the caller plus workers of XLA's
own pool that join whenever they are free, claim chunks in order (at small batches, of at
most 4 sequences by default, each thread keeps to its own chunks, and the input projection is
one GEMM per 64 steps). A thread kept waiting by a chunk whose thread the operating system
descheduled computes that chunk again, and the first to finish writes it (the same bits).
In float32 the weight and input gradients are calls of the kernel library too, which read x
and h in place (XLA's GEMMs would first copy them into fresh buffers), except for a padded
call of few rows (T·N ≤ I + H), where one direct XLA GEMM per weight is faster; in bfloat16
they stay single large XLA GEMMs.

Ragged batches: with ``seq_lengths`` the mask is a prefix per sequence in the kernel's order
of steps, for both directions (the caller reverses direction 1 within each length). The kernel
then takes the sequences in order of length, longest first, once per call, and runs each
step's GEMM and gate arithmetic, forward and backward, on the sequences that have not ended;
an ended one only carries its state on (backward: passes dh and dc on, dz zero), which is what
its masked steps computed before, so the results are those of the padded computation to float
rounding. Any other mask keeps every sequence running, masked step by step. In float32 the
weight and input gradients of a masked batch come from the kernel library whatever its size,
over the valid steps only, where XLA's GEMMs would run over all T·N rows. The `lax.scan` path
(GPU, TPU) has static shapes and computes every padded step; there, batches bucketed by length
are what saves the padding.

Which calls it takes is `flax_lstm.plan`'s to decide, and stated once there
(`flax_lstm.plan.KERNEL_REACH`); `flax_lstm.lstm_plan` says it for one call. bfloat16 needs a
CPU with AVX512_BF16 (``vdpbf16ps``; gates and cell state stay float32), and where the CPU
also has AMX-BF16 (checked at run time) the bfloat16 step GEMMs run on AMX tiles
(``tdpbf16ps``, `info`'s ``amx``); everything the
kernel does not take runs the `lax.scan` path, which runs no compiled code, and so does any
machine where the kernel cannot be built. The FFI bindings themselves are private
(``flax_lstm._kernel.ffi``).

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
change of any of them builds anew. Once (seconds): processes that start together (pytest-xdist
workers, the processes of a distributed run) wait on a file lock for one build, and a build
that was killed leaves no temporary file behind for long (the next build removes it).
``flax-lstm kernel`` builds the library and reports it (`info`): run it to prebuild into a
container image or a shared cache folder, with the same environment variables as the runs.

Environment variables:
  ``FLAX_LSTM_CPU_KERNEL=0``: never build or use the kernel (the scan path everywhere). Read at
  every call that plans a computation, so it may be changed at run time; a computation that
  was already compiled keeps the path it was compiled with.
  ``FLAX_LSTM_NUM_THREADS``: threads of the kernel (default: the CPUs this process may use, at
  most one per 16 hidden units of each direction); read when a function is traced (a call
  traced after a change compiles anew: the plan holds the value).
  ``FLAX_LSTM_SMALL_BATCH``: the largest batch that takes the kernel's small-batch scheme
  (default 4; `info`'s ``small_batch``); read as ``FLAX_LSTM_NUM_THREADS`` is.
  ``FLAX_LSTM_MIN_SPLIT_WORK``: the least work of a layer, steps × sequences × H·(H + I)/2 a
  direction, whose calls share its hidden units among threads (default 2^19 = 524288; `info`'s
  ``min_split_work``; 0: every layer's); a layer of less runs each call on one thread a
  direction. Read as ``FLAX_LSTM_NUM_THREADS`` is.
  ``FLAX_LSTM_CACHE_DIR``: where the built library is kept.
  ``FLAX_LSTM_CALIBRATE=0``: the default plan takes the kernel by the size rule alone, without
  measuring it against the scan path on this CPU (`info`'s ``calibration``). Read at every call
  that plans a computation.
  ``FLAX_LSTM_ARCH``: the target instruction set instead of the building machine's:
  ``x86-64-v3`` (any AVX2 machine), ``x86-64-v4``, ``sapphirerapids``… (a ``-march=`` value),
  or ``none`` for the compiler's default. The library is then keyed without the CPU, so
  machines with different CPUs share one build (a cluster's shared home, a container image).
  ``FLAX_LSTM_CXXFLAGS``: extra compiler flags, appended (and hashed into the file name).
  ``-DFLAX_LSTM_AMX_EMULATE=1`` builds a test library whose AMX path runs everywhere the
  bfloat16 kernel does, its tile instructions done in software (slowly);
  ``-DFLAX_LSTM_BF16_EMULATE=1`` one whose bfloat16 kernel runs on AVX2 CPUs without
  AVX512_BF16, ``vdpbf16ps`` done in software (for the tests, not for speed).
  ``FLAX_LSTM_AMX=0``: the bfloat16 step GEMMs on ``vdpbf16ps`` even where the CPU has AMX
  (to compare the two). Read once per process, when the kernel is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from flax_lstm._kernel import build, calibrate, ffi, tuning

__all__ = ["available", "build_error", "export_checks", "info"]


def build_error(dtype: Any = jnp.float32) -> str | None:
    """Why the CPU kernel is not available for compute ``dtype`` (building it if need be), or
    None if it is.

    Example:
      >>> import flax_lstm.kernel
      >>> flax_lstm.kernel.build_error("float16")  # doctest: +ELLIPSIS
      '...'
    """
    return build.error(jnp.dtype(dtype).name)


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
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=64)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> f = jax.jit(lambda p, x: fl.lstm(p, x, config=config)[0])
      >>> exp = jax.export.export(f, disabled_checks=fl.kernel.export_checks())(
      ...     params, jnp.ones((20, 2, 3)))
      >>> exp.out_avals
      (ShapedArray(float32[20,2,64]),)
    """
    names = [t for targets in build.TARGETS.values() for t, _ in targets]
    names += [t for t, _ in build.TRANSPOSE.values()]
    names += [build.WEIGHT_GRADS[0], build.INPUT_GRAD[0]]
    return [jax.export.DisabledSafetyCheck.custom_call(n) for n in names]


def info() -> dict[str, Any]:
    """The kernel's state, building it if need be (``flax-lstm kernel`` prints it).

    ``available``; ``error`` (why not, or None); ``library`` (its path); ``compiler``,
    ``flags`` and ``isa`` (the instruction-set extensions it was compiled for) as recorded at
    its build; ``bfloat16`` (whether it has the bfloat16 kernels); ``amx``, what the bfloat16
    step GEMMs run on: True (AMX tiles, ``tdpbf16ps``), ``"emulated"`` (a test build's software
    tiles) or False (``vdpbf16ps``, or no bfloat16 kernel), and ``amx_reason``, why not (a
    sentence such as ``"the CPU has no AMX-BF16"`` or ``"disabled by FLAX_LSTM_AMX"``; None
    where ``amx`` is not False); ``threads`` (per layer, at most); ``cpus``, the CPUs this
    process may run on (the scan's XLA GEMMs use them all); ``small_batch``, the largest
    batch the kernel runs with its small-batch scheme (input projection per block of steps,
    a fixed run of hidden units per thread); ``min_split_work``, the least work of a layer
    whose calls share its units among threads (less: one thread a direction); ``cache_dir``;
    ``calibration``: the verdicts of the measurement of the kernel against the scan path on
    this CPU with these threads and CPUs, by dtype and regime (batches of at most 4
    sequences, "small", or more, "large",
    and the short calls that the size rule leaves to the measurement, "short"), which the
    default plan follows; an empty dict before the first measurement (made when a
    default plan would first take the kernel for a dtype, or by ``flax-lstm kernel
    --calibrate``).

    Example:
      >>> import flax_lstm.kernel
      >>> state = flax_lstm.kernel.info()
      >>> state["available"] == (state["error"] is None), type(state["calibration"]).__name__
      (True, 'dict')
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
        "amx": False,
        "amx_reason": error,
        "threads": ffi.num_threads(),
        "cpus": ffi.usable_cpus(),
        "small_batch": tuning.small_batch(),
        "min_split_work": tuning.min_split_work(),
        "cache_dir": str(build.cache_dir()),
        "calibration": calibrate.cached(),
    }
    if error is None:
        state["amx"], state["amx_reason"] = build.amx()
    if state["library"]:
        with contextlib.suppress(OSError, ValueError):
            state.update(json.loads(build.LIBRARY[0].with_suffix(".json").read_text()))
    return state


@functools.cache
def _warn_once(error: str) -> None:
    warnings.warn(f"flax_lstm: {error}; using the lax.scan path on CPU", stacklevel=3)

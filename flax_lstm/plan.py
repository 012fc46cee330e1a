"""How a call of `flax_lstm.lstm` runs: the user's request, resolved once into a `Plan`.

`Implementation` is what a user may ask for (every field defaults to "decide for me"); `resolve`
turns it, with the facts of one call (platform, compute dtype, sizes, options), into a frozen,
hashable `Plan`. The plan is the only static description of the implementation below
`flax_lstm.lstm`, and `flax_lstm.lstm_plan` hands it to users: which path a call takes, and why.

The two recurrences:

- ``"kernel"``: the compiled CPU kernel (`flax_lstm.kernel`) runs every step of a layer, forward
  and backward, in one XLA FFI call; the weight gradients are large XLA GEMMs after it.
- ``"scan"``: `jax.lax.scan` of the pure step (`flax_lstm.cell`), on every backend.

The backward of the scan: ``"custom"`` (a hand-written VJP: a reverse scan for the gate
gradients, then every weight gradient as one GEMM over all steps), ``"autodiff"`` (JAX
differentiates the scan; allows forward-mode `jax.jvp`) or ``"remat"`` (keeps no (L, N, 4H)
tensors: the gates are recomputed in the reverse loop and the weight gradients accumulated
there; for very long sequences). The kernel has its own backward, the ``"custom"`` one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from flax_lstm import kernel
from flax_lstm.config import LSTMConfig

__all__ = ["Implementation", "Plan"]

RECURRENCES = ("auto", "kernel", "scan")
BACKWARDS = ("custom", "autodiff", "remat")

# Below this many (step, sequence) pairs per call the kernel's per-call packing of the weights
# costs more than it saves (B1 H256: T1 254 vs 152 µs, T16 635 vs 785; B4 T4 367 vs 321 µs).
KERNEL_MIN_ROWS = 16


@dataclasses.dataclass(frozen=True)
class Implementation:
    """What a caller asks of the implementation of `flax_lstm.lstm`; None means "the default".

    Every choice gives the same function up to float rounding; they differ in speed, memory
    and which transformations they allow. `flax_lstm.lstm_plan` shows what a request resolves
    to for a given call, with the reason.

    Args:
      recurrence: ``"auto"`` (default): the compiled CPU kernel wherever it applies (the CPU,
        float32 or bfloat16 on CPUs with AVX512_BF16, no ``proj_size``, no recurrent dropout,
        ``backward="custom"``, at least 16 steps × sequences, and the kernel built), else the
        scan. ``"kernel"`` demands the kernel (ValueError where it does not apply,
        RuntimeError if it cannot be built); ``"scan"`` never runs compiled code.
      backward: ``"custom"`` (default): the hand-written VJP, weight gradients as one GEMM
        after the reverse loop. ``"autodiff"``: JAX differentiates the scan (allows
        `jax.jvp`). ``"remat"``: the gates are recomputed in the backward and nothing of size
        (L, N, 4H) is kept (B1 L100000 H64 fwd+bwd: 98 MiB of temporaries instead of 196 MiB
        with the CPU kernel and 293 MiB on the scan path).
      unroll: `jax.lax.scan`'s unroll of the scan path; default 1 on CPU, 8 on GPU/TPU.
      hoist_input: compute ``x·W_ihᵀ`` for all steps as one GEMM before the scan (default on
        GPU/TPU) instead of step by step inside it (default on CPU, where the per-step operands
        stay in cache: 57 vs 74-94 ms, B32 T128 H256 forward on one core).
      fuse_directions: run both directions of a bidirectional layer in one loop over a
        direction axis. Default: on GPU/TPU (half the sequential steps) and in the CPU kernel
        (one call, its threads stay up); off on the CPU scan (143 vs 108 ms fused, B32 T128
        H256 bidirectional forward on one core).
      platform: the platform the computation will run on (``"cpu"``, ``"gpu"``, ``"tpu"``),
        which picks the defaults above. Default: the platform of the input's devices when it
        is a concrete array, else (under `jax.jit`, where a tracer has no device) the default
        device's platform.

    Example:
      >>> import flax_lstm as fl
      >>> fl.Implementation(recurrence="scan", backward="remat").backward
      'remat'
    """

    recurrence: Literal["auto", "kernel", "scan"] = "auto"
    backward: Literal["custom", "autodiff", "remat"] = "custom"
    unroll: int | None = None
    hoist_input: bool | None = None
    fuse_directions: bool | None = None
    platform: str | None = None

    def __post_init__(self) -> None:
        if self.recurrence not in RECURRENCES:
            raise ValueError(f"recurrence must be one of {RECURRENCES}, got {self.recurrence!r}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        if self.unroll is not None and (
            isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or self.unroll < 1
        ):
            raise ValueError(f"unroll must be a positive int or None, got {self.unroll!r}")
        for name in ("hoist_input", "fuse_directions"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                raise TypeError(f"{name} must be a bool or None, got {getattr(self, name)!r}")
        if self.platform is not None and not isinstance(self.platform, str):
            raise TypeError(f"platform must be a str or None, got {self.platform!r}")

    @classmethod
    def of(cls, impl: Implementation | str | None) -> Implementation:
        """``impl`` as an `Implementation`: None is the default, a string its ``recurrence``."""
        if impl is None:
            return cls()
        if isinstance(impl, str):
            return cls(recurrence=impl)  # type: ignore[arg-type]
        if isinstance(impl, cls):
            return impl
        raise TypeError(
            "impl must be None, 'auto', 'kernel', 'scan' or a flax_lstm.Implementation, got "
            f"{type(impl).__name__}"
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call of `flax_lstm.lstm` runs: a resolved `Implementation` (see its fields).

    Frozen and hashable: the static argument of the compiled computation. ``reason`` says why
    the recurrence was chosen; it takes no part in equality.

    Example:
      >>> import jax, jax.numpy as jnp, flax_lstm as fl
      >>> config = fl.LSTMConfig(input_size=3, hidden_size=5, proj_size=2)
      >>> params = fl.init_params(jax.random.key(0), config)
      >>> plan = fl.lstm_plan(params, jnp.ones((7, 2, 3)), config=config)
      >>> plan.recurrence, plan.reason
      ('scan', 'the CPU kernel does not support proj_size > 0')
    """

    platform: str
    recurrence: Literal["kernel", "scan"]
    backward: Literal["custom", "autodiff", "remat"]
    unroll: int
    hoist_input: bool
    fuse_directions: bool
    kernel_transpose: bool = False
    reason: str = dataclasses.field(default="", compare=False)

    @property
    def on_cpu(self) -> bool:
        """Whether the computation runs on CPU, where XLA's GEMMs take other forms (measured)."""
        return self.platform == "cpu"

    def __str__(self) -> str:
        if self.recurrence == "kernel":
            how = "the compiled CPU kernel"
        else:
            how = (
                f"lax.scan ({self.backward} backward, unroll {self.unroll}, input projection "
                f"{'hoisted' if self.hoist_input else 'per step'}, directions "
                f"{'fused' if self.fuse_directions else 'one loop each'})"
            )
        return f"{how} on {self.platform}: {self.reason}"


def kernel_blocker(
    dtype: Any,
    config: LSTMConfig,
    *,
    recurrent_dropout: bool,
    backward: str,
    rows: int,
    platform: str,
) -> str | None:
    """What keeps a call from the CPU kernel, as a phrase, or None if nothing does.

    The one statement of the kernel's reach: the CPU, float32 or bfloat16, no projection, no
    recurrent dropout, the custom backward and a non-empty batch. Whether the kernel could be
    built (and has bfloat16 instructions) is `flax_lstm.kernel.build_error`'s to say.
    """
    dtype = jnp.dtype(dtype)
    if platform != "cpu":
        return f"the {platform} platform (it is a CPU kernel)"
    if dtype not in (jnp.float32, jnp.bfloat16):
        return f"dtype {dtype.name} (it computes in float32 or bfloat16)"
    if config.proj_size:
        return "proj_size > 0"
    if recurrent_dropout:
        return "recurrent_dropout"
    if backward != "custom":
        return f"backward={backward!r}"
    if rows == 0:
        return "an empty batch"
    return None


def _choose_recurrence(request: Implementation, blocker: str | None, dtype: Any, rows: int):
    """``(recurrence, reason)`` for a request, given what blocks the kernel (None: nothing)."""
    if request.recurrence == "scan":
        return "scan", "recurrence='scan' was requested"
    if blocker is not None:
        if request.recurrence == "kernel":
            raise ValueError(
                f"recurrence='kernel' was requested, but the CPU kernel does not support {blocker}"
            )
        return "scan", f"the CPU kernel does not support {blocker}"
    if request.recurrence == "kernel":
        error = kernel.build_error(dtype)
        if error is not None:
            raise RuntimeError(
                f"recurrence='kernel' was requested, but the CPU kernel is not available: {error}"
            )
        return "kernel", "recurrence='kernel' was requested"
    if rows < KERNEL_MIN_ROWS:
        return "scan", (
            f"{rows} steps × sequences: below {KERNEL_MIN_ROWS} the scan is faster than the "
            "kernel's per-call weight packing"
        )
    if not kernel.available(dtype):
        return "scan", f"the CPU kernel is not available: {kernel.build_error(dtype)}"
    return "kernel", "the CPU kernel applies (CPU, float32/bfloat16, no projection)"


def resolve(
    impl: Implementation | str | None,
    *,
    config: LSTMConfig,
    dtype: Any,
    rows: int,
    platform: str,
    recurrent_dropout: bool,
) -> Plan:
    """The `Plan` of one call: ``rows`` is steps × sequences, ``recurrent_dropout`` whether it
    is applied (a rate and a key), ``platform`` where it runs (``impl.platform`` wins)."""
    request = Implementation.of(impl)
    platform = request.platform or platform
    on_cpu = platform == "cpu"
    blocker = kernel_blocker(
        dtype,
        config,
        recurrent_dropout=recurrent_dropout,
        backward=request.backward,
        rows=rows,
        platform=platform,
    )
    recurrence, reason = _choose_recurrence(request, blocker, dtype, rows)
    use_kernel = recurrence == "kernel"
    return Plan(
        platform=platform,
        recurrence=recurrence,
        backward=request.backward,
        unroll=request.unroll or (1 if on_cpu else 8),
        hoist_input=(not on_cpu) if request.hoist_input is None else request.hoist_input,
        fuse_directions=(
            (not on_cpu or use_kernel)
            if request.fuse_directions is None
            else request.fuse_directions
        ),
        # bfloat16 weight gradients on CPU take the kernel library's row-major transposed copy
        # (`flax_lstm.recurrence`), unless the caller asked for no compiled code at all.
        kernel_transpose=(
            on_cpu
            and jnp.dtype(dtype) == jnp.bfloat16
            and request.recurrence != "scan"
            and (use_kernel or kernel.available())
        ),
        reason=reason,
    )


def platform_of(*arrays: Any) -> str:
    """The platform a computation on ``arrays`` runs on: that of the first concrete JAX array's
    devices, else the default device's (set by `jax.default_device`), else the default
    backend's."""
    for a in arrays:
        if not isinstance(a, jax.Array):
            continue
        try:
            return next(iter(a.devices())).platform
        except (jax.errors.JAXTypeError, RuntimeError, StopIteration):  # traced or deleted
            continue
    device = jax.config.jax_default_device
    if isinstance(device, jax.Device):
        return device.platform
    if isinstance(device, str):
        return device
    return jax.default_backend()

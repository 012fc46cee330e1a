"""How a call of `flax_lstm.lstm` runs: the user's request, resolved once into a `Plan`.

`Implementation` is what a user may ask for (every field defaults to "decide for me"); `resolve`
turns it, with the facts of one call (platform, compute dtype, sizes, options), into a frozen,
hashable `Plan`. The plan is the only static description of the implementation below
`flax_lstm.lstm`, and `flax_lstm.lstm_plan` hands it to users: which path a call takes, and why.
It alone decides every use of compiled code: a plan whose recurrence is ``"scan"`` runs none.

The two recurrences:

- ``"kernel"``: the compiled CPU kernel (`flax_lstm.kernel`) runs every step of a layer, forward
  and backward, in one XLA FFI call; the weight gradients are large XLA GEMMs after it (in
  bfloat16 over a row-major transposed copy that the kernel library makes). Which calls it
  takes is `KERNEL_REACH`, stated once here.
- ``"scan"``: `jax.lax.scan` of the pure step (`flax_lstm.cell`), on every backend.

The backward of the scan: ``"custom"`` (a hand-written VJP: a reverse scan for the gate
gradients, then every weight gradient as one GEMM over all steps), ``"autodiff"`` (JAX
differentiates the scan; allows forward-mode `jax.jvp`) or ``"remat"`` (keeps no (L, N, 4H)
tensors: the gates are recomputed in the reverse loop and the weight gradients accumulated
there; for very long sequences). The kernel has its own backward, the ``"custom"`` one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lstm import _auto, kernel
from flax_lstm._auto import Choice
from flax_lstm._kernel import ffi
from flax_lstm.config import LSTMConfig

__all__ = ["Implementation", "Plan"]

RECURRENCES = ("auto", "kernel", "scan")
BACKWARDS = ("custom", "autodiff", "remat")
WEIGHT_GRADS = ("kernel", "xla")


class CallFacts(NamedTuple):
    """What decides whether the kernel can take a call: ``batch`` is its number of sequences
    (an int, or a symbolic dimension under `jax.export`), ``recurrent_dropout`` whether it is
    applied."""

    platform: str
    dtype: jnp.dtype
    config: LSTMConfig
    recurrent_dropout: bool
    backward: str
    batch: Any


class Condition(NamedTuple):
    """One condition of the kernel's reach: ``text`` says what it requires (the docs quote
    it), ``blocker`` the phrase for a call that fails it, or None."""

    text: str
    blocker: Callable[[CallFacts], str | None]


def _dtype_blocker(f: CallFacts) -> str | None:
    if f.dtype in (jnp.float32, jnp.bfloat16):
        return None
    return f"dtype {f.dtype.name} (it computes in float32 or bfloat16)"


# The kernel's reach: the calls it can take, whether asked for (``recurrence="kernel"``) or by
# default, and the one place that states it. Within it the default decides by the call's size
# and by what was measured on this CPU (`flax_lstm._auto`). docs/guides/implementations.md
# quotes the texts (tests/test_plan.py checks it).
KERNEL_REACH: tuple[Condition, ...] = (
    Condition(
        "the CPU platform",
        lambda f: (
            None if f.platform == "cpu" else f"the {f.platform} platform (it is a CPU kernel)"
        ),
    ),
    Condition("compute dtype float32, or bfloat16 on CPUs with AVX512_BF16", _dtype_blocker),
    Condition(
        "no projection (`proj_size=0`)", lambda f: "proj_size > 0" if f.config.proj_size else None
    ),
    Condition(
        "no recurrent dropout (a `recurrent_dropout` rate with a `dropout_key`)",
        lambda f: "recurrent_dropout" if f.recurrent_dropout else None,
    ),
    Condition(
        'the custom backward (`backward="custom"`)',
        lambda f: None if f.backward == "custom" else f"backward={f.backward!r}",
    ),
    Condition("a non-empty batch", lambda f: "an empty batch" if _is_int(f.batch, 0) else None),
)


def _is_int(dim: Any, value: int) -> bool:
    """Whether ``dim`` is the int ``value``; a symbolic dimension (`jax.export`) is no int."""
    return isinstance(dim, int) and dim == value


@dataclasses.dataclass(frozen=True)
class Implementation:
    """What a caller asks of the implementation of `flax_lstm.lstm`; None means "the default".

    Every choice gives the same function up to float rounding; they differ in speed, memory
    and which transformations they allow. `flax_lstm.lstm_plan` shows what a request resolves
    to for a given call, with the reason.

    Args:
      recurrence: ``"auto"`` (default): the compiled CPU kernel wherever it applies (within
        `flax_lstm.plan.KERNEL_REACH`, a call large enough for it (`flax_lstm._auto`),
        the kernel built, and not measured slower than the scan on this CPU: measured once
        per CPU and dtype, and cached, see docs/guides/implementations.md), else the scan.
        ``"kernel"`` demands the kernel (ValueError where it does not apply, RuntimeError if
        it cannot be built); ``"scan"`` never runs compiled code. Neither measures anything.
      backward: ``"custom"`` (default): the hand-written VJP, weight gradients as one GEMM
        after the reverse loop. ``"autodiff"``: JAX differentiates the scan (allows
        `jax.jvp`). ``"remat"``: the gates are recomputed in the backward and nothing of size
        (L, N, 4H) is kept, for very long sequences (its memory: docs/guides/implementations.md).
      unroll: `jax.lax.scan`'s unroll of the scan path; default 1 on CPU, 8 on GPU/TPU.
      hoist_input: compute ``x·W_ihᵀ`` for all steps as one GEMM before the scan (default on
        GPU/TPU) instead of step by step inside it (default on CPU, where the per-step operands
        stay in cache; measured: docs/performance/design.md, "The scan path on CPU").
      fuse_directions: run both directions of a bidirectional layer in one loop over a
        direction axis. Default: on GPU/TPU (half the sequential steps), in the CPU kernel
        (one call, its threads stay up) and for a single step on the CPU scan (there is no
        loop, and each direction's own copy of its weights costs more than its step); off on
        the CPU scan otherwise, where neither measured faster overall (same page, "Both
        directions in one loop on CPU").
      platform: the platform the computation will run on (``"cpu"``, ``"gpu"``, ``"tpu"``),
        which picks the defaults above. Default: the platform of the input's devices when it
        is a concrete array, else (under `jax.jit`, where a tracer has no device) the default
        device's platform.
      weight_grads: which GEMMs take the float32 weight and input gradients after the CPU
        kernel's backward, for a batch without ``seq_lengths`` and more rows (steps ×
        sequences) than the layer has inputs and units: ``"kernel"``, the kernel library's
        own, which read x and h in place; ``"xla"``, XLA's, over copies of them. Default: the
        one measured faster on this CPU with ``recurrence="auto"`` (with the kernel against
        the scan, and cached) where the GEMM is at least the measured one, else ``"kernel"``.
        A batch with ``seq_lengths`` takes the kernel's (over its valid steps only), one of
        few rows XLA's (without copies), and bfloat16 XLA's (over the kernel library's
        row-major copy), whatever is asked.

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
    weight_grads: Literal["kernel", "xla"] | None = None

    def __post_init__(self) -> None:
        if self.recurrence not in RECURRENCES:
            raise ValueError(f"recurrence must be one of {RECURRENCES}, got {self.recurrence!r}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        if self.weight_grads not in (None, *WEIGHT_GRADS):
            raise ValueError(
                f"weight_grads must be one of {WEIGHT_GRADS} or None, got {self.weight_grads!r}"
            )
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

    ``recurrence`` is the path the call takes and ``grad_recurrence`` the path it takes when
    it is differentiated (`jax.grad`, `jax.vjp`): its forward, which keeps what the backward
    needs, and the backward. They differ only where the default measured the kernel's forward
    faster on a single step and leaves its gradient to the scan (`flax_lstm._auto`);
    ``grad_recurrence`` defaults to ``recurrence``. ``weight_grads`` is where the kernel's
    backward takes float32 weight and input gradients (`Implementation`; unused by the scan).
    Frozen and hashable: the static argument of the compiled computation. ``reason`` says why
    the recurrence was chosen; it takes no part in equality. ``kernel_settings`` holds the
    kernel's threads, small-batch size and the work from which it shares a layer's units among
    threads, when the plan was made on CPU (``FLAX_LSTM_NUM_THREADS``,
    ``FLAX_LSTM_SMALL_BATCH``, ``FLAX_LSTM_MIN_SPLIT_WORK``), read again by the kernel's calls as
    they are traced: a plan made under other settings is another static argument, so a change
    of any traces anew instead of reusing a computation compiled with the old ones.

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
    reason: str = dataclasses.field(default="", compare=False)
    grad_recurrence: Literal["kernel", "scan"] | None = None
    weight_grads: Literal["kernel", "xla"] = "kernel"
    kernel_settings: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("recurrence", "grad_recurrence"):
            if getattr(self, name) not in (None, "kernel", "scan"):
                raise ValueError(f"{name} must be 'kernel' or 'scan', got {getattr(self, name)!r}")
        if self.weight_grads not in WEIGHT_GRADS:
            raise ValueError(
                f"weight_grads must be one of {WEIGHT_GRADS}, got {self.weight_grads!r}"
            )
        if self.grad_recurrence is None:
            object.__setattr__(self, "grad_recurrence", self.recurrence)

    @property
    def on_cpu(self) -> bool:
        """Whether the computation runs on CPU, where XLA's GEMMs take other forms (measured)."""
        return self.platform == "cpu"

    @property
    def differentiated(self) -> Plan:
        """The plan of the call when it is differentiated (`jax.grad`, `jax.vjp`): its forward,
        which keeps what the backward needs, and the backward run ``grad_recurrence``."""
        if self.grad_recurrence == self.recurrence:
            return self
        return dataclasses.replace(self, recurrence=self.grad_recurrence)

    def __str__(self) -> str:
        scan = (
            f"lax.scan ({self.backward} backward, unroll {self.unroll}, input projection "
            f"{'hoisted' if self.hoist_input else 'per step'}, directions "
            f"{'fused' if self.fuse_directions else 'one loop each'}"
        )
        kernel = "the compiled CPU kernel"
        if self.weight_grads == "xla" and self.grad_recurrence == "kernel":
            kernel += " (float32 weight gradients on XLA's GEMMs)"
        path = {"kernel": kernel, "scan": f"{scan})"}
        if self.recurrence == self.grad_recurrence == "scan":
            how = f"{scan}; no compiled code)"
        elif self.recurrence == self.grad_recurrence:
            how = path[self.recurrence]
        else:
            how = f"{path[self.recurrence]}; differentiated, {path[str(self.grad_recurrence)]}"
        return f"{how} on {self.platform}: {self.reason}"


def kernel_blocker(facts: CallFacts) -> str | None:
    """What keeps a call from the CPU kernel, as a phrase (the first of `KERNEL_REACH` that
    fails), or None if nothing does."""
    for condition in KERNEL_REACH:
        blocker = condition.blocker(facts)
        if blocker is not None:
            return blocker
    return None


def _choose_recurrence(
    request: Implementation, blocker: str | None, facts: CallFacts, steps: Any
) -> Choice:
    """The `Choice` for a request, given what blocks the kernel (None: nothing)."""
    if request.recurrence == "scan":
        return Choice("scan", "recurrence='scan' was requested")
    if blocker is not None:
        if request.recurrence == "kernel":
            raise ValueError(
                f"recurrence='kernel' was requested, but the CPU kernel does not support {blocker}"
            )
        return Choice("scan", f"the CPU kernel does not support {blocker}")
    if request.recurrence == "kernel":
        error = kernel.build_error(facts.dtype)
        if error is not None:
            raise RuntimeError(
                f"recurrence='kernel' was requested, but the CPU kernel is not available: {error}"
            )
        return Choice("kernel", "recurrence='kernel' was requested")
    return _auto.choose(facts, steps)


def resolve(
    impl: Implementation | str | None,
    *,
    config: LSTMConfig,
    dtype: Any,
    steps: Any,
    batch: Any,
    platform: str,
    recurrent_dropout: bool,
) -> Plan:
    """The `Plan` of one call of ``steps`` steps over ``batch`` sequences (ints, or symbolic
    dimensions under `jax.export`); ``recurrent_dropout`` is whether it is applied (a rate and
    a key), ``platform`` where it runs (``impl.platform`` wins)."""
    request = Implementation.of(impl)
    platform = request.platform or platform
    on_cpu = platform == "cpu"
    facts = CallFacts(
        platform, jnp.dtype(dtype), config, recurrent_dropout, request.backward, batch
    )
    recurrence, reason, grad_recurrence, weight_grads = _choose_recurrence(
        request, kernel_blocker(facts), facts, steps
    )
    use_kernel = recurrence == "kernel"
    return Plan(
        platform=platform,
        recurrence=recurrence,
        backward=request.backward,
        unroll=request.unroll or (1 if on_cpu else 8),
        hoist_input=(not on_cpu) if request.hoist_input is None else request.hoist_input,
        fuse_directions=(
            (not on_cpu or use_kernel or _is_int(steps, 1))
            if request.fuse_directions is None
            else request.fuse_directions
        ),
        reason=reason,
        grad_recurrence=grad_recurrence,
        weight_grads=request.weight_grads or weight_grads,
        kernel_settings=ffi.settings() if "kernel" in (recurrence, grad_recurrence) else (),
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
    device: Any = getattr(jax.config, "jax_default_device", None)  # set by jax.default_device
    if isinstance(device, jax.Device):
        return device.platform
    if isinstance(device, str):
        return device
    return jax.default_backend()

"""What the default (``recurrence="auto"``) runs a call on, where the CPU kernel can take it.

`flax_lstm.plan` settles what a request allows: ``"scan"`` and ``"kernel"`` when asked for,
and the calls outside the kernel's reach (`flax_lstm.plan.KERNEL_REACH`), which take the
scan. For the rest, `choose` picks the kernel or the scan by two rules, stated here:

- the size rule (`call_size`): the kernel has a fixed cost per call that its work must
  amortise, so a call too small for it is left to the measurement below, and to the scan
  where nothing is measured (`KERNEL_MIN_STEPS`…);
- the verdict measured on this CPU (`flax_lstm._kernel.calibrate`): a call large enough for
  the kernel takes it unless the scan measured faster here; a short call takes the kernel
  only where it measured faster, and a single step its forward alone, where it measured faster
  and the batch amortises the weights (`STEP_BATCH`).

On the kernel, the float32 weight and input gradients take the GEMMs that measured faster on
this CPU, the kernel library's or XLA's (`Choice.weight_grads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from flax_lstm import kernel
from flax_lstm._kernel import calibrate
from flax_lstm.config import LSTMConfig

if TYPE_CHECKING:
    from flax_lstm.plan import CallFacts

__all__ = ["Choice", "call_size", "choose", "packed_weights"]

# The size of call from which the default (``"auto"``) takes the kernel: at least
# KERNEL_MIN_STEPS steps, and at least KERNEL_MIN_STEP_UNITS steps × hidden units or
# KERNEL_MIN_WORK_UNITS steps × sequences × hidden units. The kernel has a fixed cost per call
# (packing the weights, its calls forward and backward) that its work amortises, where the
# scan pays a cost per step. Measured on small shapes: docs/performance/design.md, "Small
# calls: the kernel or the scan".
KERNEL_MIN_STEPS = 2
KERNEL_MIN_STEP_UNITS = 1024
KERNEL_MIN_WORK_UNITS = 4096
# Below those thresholds, a call of at least KERNEL_MIN_STEPS steps is a "short" call: the
# default follows the kernel's measured verdict on this CPU for such calls
# (`flax_lstm._kernel.calibrate`, regime "short"), and the scan where none is measured. The
# thresholds above were measured on one CPU before the kernel's fixed cost per call shrank; on
# another, every such call then measured faster on the kernel (docs/performance/design.md,
# "Short calls, measured per CPU"), and since the kernel runs such calls on one thread a
# direction (`flax_lstm._kernel.tuning.MIN_SPLIT_WORK`), on every width ("Small calls on one
# thread"; stacked or bidirectional: "Small calls: stacked and bidirectional").
#
# A single step (a "step" call: a token at a time, as in generation) runs its forward on the
# kernel where the short calls' probe measured the kernel's forward faster on this CPU and the
# step's batch amortises its layers' weights, and the scan when it is differentiated, where the
# kernel's backward has no steps to amortise its fixed cost over (`Plan.grad_recurrence`;
# docs/performance/design.md, "One step: the kernel's forward, the scan's gradient"). The
# kernel packs a layer's weights at every call, while the scan's single step multiplies them as
# stored: the kernel takes a step of up to as many weights as the probe's layer for every
# STEP_BATCH sequences (and the probe's at any batch). Measured on AMD Zen 4 over 64 single
# steps and 80 drawn ones: docs/performance/design.md, "One step with the weights as stored".
STEP_BATCH = 4


class Choice(NamedTuple):
    """The path of a call (``recurrence``), why (``reason``), the path of the call when it
    is differentiated (``grad_recurrence``; None: the same) and the GEMMs of the kernel's
    float32 weight gradients (``weight_grads``, `flax_lstm.plan.Implementation`)."""

    recurrence: Literal["kernel", "scan"]
    reason: str
    grad_recurrence: Literal["kernel", "scan"] | None = None
    weight_grads: Literal["kernel", "xla"] = "kernel"


def choose(facts: CallFacts, steps: Any) -> Choice:
    """The default's `Choice` for a call of ``steps`` steps within the kernel's reach."""
    size = call_size(steps, facts.batch, facts.config.hidden_size)
    if not kernel.available(facts.dtype):
        return Choice("scan", f"the CPU kernel is not available: {kernel.build_error(facts.dtype)}")
    if size == "step":
        return _forward_only(facts, steps)
    return _measured_choice(size, facts, steps)


def call_size(steps: Any, batch: Any, hidden: int) -> Literal["step", "short", "large"]:
    """The size of a call for the default: ``"step"`` (one step), the measured verdict decides
    its forward; ``"short"``, it decides the call; ``"large"``, enough for the kernel (see
    `KERNEL_MIN_STEPS`). A symbolic length or batch (`jax.export`) counts as large: it cannot
    be compared with a number."""
    if not isinstance(steps, int):
        return "large"
    if steps < KERNEL_MIN_STEPS:
        return "step"
    if steps * hidden >= KERNEL_MIN_STEP_UNITS or not isinstance(batch, int):
        return "large"
    if steps * batch * hidden >= KERNEL_MIN_WORK_UNITS:
        return "large"
    return "short"


def _size_reason(steps: Any, batch: Any, hidden: int) -> str:
    """Why the size rule alone does not take the kernel for a call."""
    return (
        f"{steps} steps × {batch} sequences × {hidden} hidden units: the scan is faster "
        f"than the kernel's fixed cost per call below {KERNEL_MIN_STEPS} steps, or below "
        f"both {KERNEL_MIN_STEP_UNITS} steps × hidden units and {KERNEL_MIN_WORK_UNITS} "
        "steps × sequences × hidden units"
    )


def _unmeasured_reason(steps: Any, facts: CallFacts, what: str = "such a call") -> str:
    """Why the size rule leaves a call (or ``what`` of it) to the scan where nothing was
    measured."""
    return (
        f"{_size_reason(steps, facts.batch, facts.config.hidden_size)}; a measurement on this "
        f"CPU decides {what}, and none was made ({calibrate.ENV}=0, or it failed)"
    )


def _measured_reason(measured: calibrate.Verdict, forward: bool = False) -> str:
    """Why a measured verdict left a call to the scan: over both modes, or in the ``forward``
    alone."""
    speedup = measured.forward_speedup if forward else measured.speedup
    scan, ours = (
        ("the scan's forward", "the kernel's") if forward else ("the scan path", "the kernel")
    )
    return (
        f"measured on this CPU: {scan} {1 / speedup:.1f}× as fast as "
        f"{ours} for {measured.dtype} at {measured.calls} (cached in {calibrate.cache_path()}; "
        f"impl='kernel' or impl='scan' forces a path, {calibrate.ENV}=0 leaves the "
        "choice to the size rule)"
    )


def _measured_choice(size: str, facts: CallFacts, steps: Any) -> Choice:
    """The default's `Choice` for a ``"short"`` or ``"large"`` call within the kernel's reach:
    the kernel, unless this CPU measured the scan faster at such calls (a short call needs a
    measurement)."""
    # The reason points to the reach rather than restating part of it.
    reason = "the CPU kernel applies (within plan.KERNEL_REACH, and large enough)"
    regime = "short" if size == "short" else calibrate.regime(facts.batch)
    measured = calibrate.verdict(facts.dtype.name, regime)
    if measured is None:
        if size == "short":
            return Choice("scan", _unmeasured_reason(steps, facts))
        return Choice("kernel", reason)
    if measured.choice == "scan":
        return Choice("scan", _measured_reason(measured))
    if size == "short":
        reason = (
            f"the CPU kernel applies (within plan.KERNEL_REACH), and on this CPU it measured "
            f"{measured.speedup:.1f}× the scan on {measured.calls} like this one"
        )
    else:
        reason = f"{reason}; measured on this CPU: the kernel {measured.speedup:.1f}× the scan"
    grads = _measured_weight_grads(facts, steps)
    if grads is None or grads.weight_grads == "kernel":
        return Choice("kernel", reason)
    reason += (
        "; float32 weight gradients on XLA's GEMMs: fwd+bwd measured "
        f"{grads.weight_grads_speedup:.2f}× as fast with them as with the kernel library's"
    )
    return Choice("kernel", reason, weight_grads="xla")


def _measured_weight_grads(facts: CallFacts, steps: Any) -> calibrate.Verdict | None:
    """The verdict that measured the kernel's float32 weight gradients against XLA's on this
    CPU (the large regime's), where the call computes in float32 and its weight gradients'
    GEMM is at least the probe's: as many rows (steps × sequences) and hidden units, or
    symbolic ones. Smaller GEMMs keep the kernel library's, which need no copies of x and h:
    their lead grows as the GEMM shrinks (docs/performance/design.md, "The weight gradients'
    GEMMs, measured per CPU")."""
    if facts.dtype != "float32":
        return None
    probe = calibrate.probe("large")
    rows = steps * facts.batch if isinstance(steps, int) and isinstance(facts.batch, int) else None
    if facts.config.hidden_size < probe.hidden or (
        rows is not None and rows < probe.steps * probe.batch
    ):
        return None
    return calibrate.verdict("float32", "large")


def packed_weights(config: LSTMConfig) -> int:
    """The most weights a layer of ``config`` holds over its directions, D·4·H·(I + H_out):
    what the kernel packs for it at every call."""
    widest_input = max(config.layer_input_size(k) for k in range(config.num_layers))
    per_direction = 4 * config.hidden_size * (widest_input + config.output_size)
    return config.num_directions * per_direction


def _forward_only(facts: CallFacts, steps: Any) -> Choice:
    """The default's `Choice` for a single step within the kernel's reach: its forward on the
    kernel where the short calls' probe measured the kernel's forward faster on this CPU and
    the batch amortises the packing of the layers' weights (`STEP_BATCH`), and the scan when
    it is differentiated."""
    probe = calibrate.probe("short")
    batches = max(1, facts.batch / STEP_BATCH) if isinstance(facts.batch, int) else 1
    limit = packed_weights(LSTMConfig(probe.hidden, probe.hidden)) * batches
    weights = packed_weights(facts.config)
    if weights > limit:
        return Choice(
            "scan",
            f"a single step whose layers' weights (D·4·H·(I + H_out) = {weights} in a layer) "
            f"are more than {limit:.0f}, what {facts.batch} sequences amortise of the kernel's "
            "packing of them at every call (the short calls' probe's layer's for every "
            f"{STEP_BATCH} sequences, and at least those); the scan multiplies them as stored",
        )
    measured = calibrate.verdict(facts.dtype.name, "short")
    if measured is None:
        return Choice("scan", _unmeasured_reason(steps, facts, "a single step's forward"))
    if measured.forward_speedup <= 1:
        return Choice("scan", _measured_reason(measured, forward=True))
    reason = (
        "a single step: the CPU kernel applies (within plan.KERNEL_REACH), and its forward "
        f"measured {measured.forward_speedup:.1f}× the scan's on this CPU at {measured.calls}; "
        "differentiated, the scan, whose gradient is the faster at so little work per call"
    )
    return Choice("kernel", reason, grad_recurrence="scan")

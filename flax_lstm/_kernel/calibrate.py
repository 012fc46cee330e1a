"""The measured rule of the default plan: on this CPU, is the kernel faster than the scan path?

The size rule (`flax_lstm._auto.KERNEL_MIN_STEPS`…) says where the kernel's fixed cost per call
is amortised; it cannot say whether the kernel beats XLA's own GEMMs on a given CPU (where
XLA's dot uses AMX, the scan path of bfloat16 was the faster one). So, as cuDNN's and XLA's
autotuners do, the default measures both paths once per CPU and dtype, and keeps the verdict.

What is measured, per compute dtype and per regime (`REGIMES`): one layer, input = hidden
units, the regime's probe (`probe`: steps, hidden units, batch), forward and forward+backward
(`jax.grad` of the output's sum, w.r.t. parameters and input), both paths jitted, warmed up
(compiled) first, then `REPS` repetitions interleaved as the benchmark times them
(`flax_lstm._timing`: kernel, scan, the order alternating), and each path's fastest
repetition. Two regimes are the kernel's own: batches of at most
`flax_lstm._kernel.tuning.small_batch` sequences take its small-batch path (``"small"``,
probed at that batch), larger ones the other (``"large"``, probed at batch 32, the usual batch
of the CPU set); both at 64 steps of 256 units, the middle of the benchmark's CPU sets
(``flax-lstm bench --set cpu``, ``--set small``: H128 to H512, T64 to T128), long enough for
the per-step cost to dominate. The third, ``"short"``, decides the calls that the size rule
leaves to the measurement (`flax_lstm._auto.KERNEL_MIN_STEPS`…): a few steps, where the
kernel's fixed cost per call weighs most, and which it runs on one thread a direction at up to
128 units (`flax_lstm._kernel.tuning.MIN_SPLIT_WORK`); its probe is the smallest one-layer such
call of `SHORT_PROBE_HIDDEN` (128) units (one sequence of 2 steps); its forward alone also
decides the forward of a single step (`flax_lstm._auto`'s "step" calls). The compilations take
most of the few seconds a dtype costs.

The verdict of a regime (`Verdict`): ``speedup``, the geometric mean of the scan's time over
the kernel's in the two modes (above 1: the kernel is faster), and the kernel unless the scan
is more than `TOLERANCE` faster (then measured once more, to confirm over both runs). The
float32 verdict of the large regime, where it takes the kernel, also says which GEMMs take the
weight and input gradients after the kernel's backward (``weight_grads``,
`flax_lstm.plan.Implementation`): the probe's forward+backward with the kernel library's and
with XLA's, timed the same way (`time_weight_grads`), and the kernel library's unless XLA's is
more than `TOLERANCE` faster (confirmed by a second run likewise). Which is faster depends on
the CPU's GEMMs: on AMD Zen 5 the kernel library's measured faster, on Zen 3 the two were level
at the probe (docs/performance/design.md, "The weight gradients' GEMMs, measured per CPU"),
and on Intel they were not measured before this rule. The
fastest repetition, not the median: other work on the machine only adds time, and adds more
to the kernel's (two threads that meet at every step) than to the scan's, so medians taken
under a passing load once kept the scan for good where the kernel is twice as fast
(docs/performance/design.md, "A calibration under load").

It is kept in ``<library>.calibration-<machine>.json`` next to the built library (`cache_path`),
so its cache key (source, flags, compiler, jaxlib, CPU: `flax_lstm._kernel.build`) keys it too,
and ``<machine>`` hashes the CPU (for portable libraries, shared by other CPUs), the kernel's
settings (`flax_lstm._kernel.ffi.settings`), and what sets the scan's speed beside them: the
CPUs this process may run on, which XLA's GEMMs use, and ``XLA_FLAGS``. A change of any of
them measures anew: a verdict of the kernel on one thread against XLA on two CPUs
(``FLAX_LSTM_NUM_THREADS=1``) once kept the scan for a process on one CPU, where the kernel was
1.2–2.2× faster (docs/performance/design.md, "AMD Zen 2: the first runs"). A process measures
under a file lock and writes the file atomically: processes that start together measure once. A
file that cannot be read or parsed, or that another `METHOD` wrote, is measured again; one that
cannot be written leaves the verdict to this process.

`verdict` is the plan's one entry: it measures lazily, the first time the default plan would
take the kernel for a dtype, also while `jax.jit` or `jax.grad` trace the caller (the probes
run eagerly, under `jax.ensure_compile_time_eval`). ``FLAX_LSTM_CALIBRATE=0`` turns it off (the
size rule alone decides); ``flax-lstm kernel --calibrate`` measures now (`measure_all`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from flax_lstm._kernel import build, ffi, tuning
from flax_lstm._timing import MODES, jitted_calls, time_interleaved, warm_up

# batch ≤ tuning.small_batch(), larger (or symbolic), and the short calls of the size rule
REGIMES = ("small", "large", "short")
REPS = 7
TOLERANCE = 1.05  # the scan must be this much faster to be chosen
# How the verdicts are measured and judged, recorded in the file: one of another method (1:
# medians) is measured again. Raise it with any change to what is measured or how.
METHOD = 5
ENV = "FLAX_LSTM_CALIBRATE"

Timings = dict[str, dict[str, list[float]]]  # path ("kernel", "scan") -> mode -> milliseconds
GradsTimings = dict[str, list[float]]  # weight gradients ("kernel", "xla") -> fwd+bwd milliseconds


class Probe(NamedTuple):
    """The call a regime is measured on: one layer of ``hidden`` units (and as many inputs)
    over ``steps`` steps and ``batch`` sequences."""

    steps: int
    hidden: int
    batch: int


LARGE_PROBE_BATCH = 32
# The short calls' probe's units: a width the scan's GEMMs and the kernel both handle well, at
# which the kernel was measured against the scan on every CPU since issue 25; its verdict stands
# for short calls and single steps of every width ("Small calls on one thread").
SHORT_PROBE_HIDDEN = 128


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The measurement of one (dtype, regime): the milliseconds of each path and mode (its
    fastest repetition), ``speedup`` (geometric mean over the modes of the scan's time / the
    kernel's) and ``choice``, the path the default takes; ``weight_grads``, the GEMMs of the
    kernel's weight gradients, and ``weight_grads_ms``, the fwd+bwd milliseconds with each
    (empty where not measured: only float32's large regime measures them)."""

    dtype: str
    regime: str
    steps: int
    hidden: int
    batch: int
    kernel_ms: dict[str, float]
    scan_ms: dict[str, float]
    speedup: float
    choice: str
    weight_grads: str = "kernel"
    weight_grads_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, dtype: str, regime: str, times: Timings) -> Verdict:
        ms = {path: {m: min(times[path][m]) for m in MODES} for path in times}
        ratios = [ms["scan"][m] / ms["kernel"][m] for m in MODES]
        speedup = math.prod(ratios) ** (1 / len(ratios))
        choice = "scan" if speedup * TOLERANCE < 1 else "kernel"
        steps, hidden, batch = probe(regime)
        return cls(dtype, regime, steps, hidden, batch, ms["kernel"], ms["scan"], speedup, choice)

    @classmethod
    def from_json(cls, record: Any) -> Verdict:
        """A verdict from its JSON record; ValueError, KeyError or TypeError if malformed."""
        verdict = cls(**record)
        numbers = [
            *verdict.kernel_ms.values(),
            *verdict.scan_ms.values(),
            *verdict.weight_grads_ms.values(),
            verdict.speedup,
        ]
        if (
            verdict.choice not in ("kernel", "scan")
            or verdict.weight_grads not in ("kernel", "xla")
            or not all(isinstance(v, (int, float)) and v > 0 for v in numbers)
        ):
            raise ValueError(f"not a calibration record: {record!r}")
        return verdict

    def with_weight_grads(self, times: GradsTimings) -> Verdict:
        """This verdict with the weight gradients' measurement (`time_weight_grads`): XLA's
        GEMMs where they were more than `TOLERANCE` faster."""
        ms = {gemms: min(times[gemms]) for gemms in ("kernel", "xla")}
        choice = "xla" if ms["xla"] * TOLERANCE < ms["kernel"] else "kernel"
        return dataclasses.replace(self, weight_grads=choice, weight_grads_ms=ms)

    @property
    def weight_grads_speedup(self) -> float:
        """The fwd+bwd time with the kernel library's weight gradients over that with XLA's
        (above 1: XLA's are faster); 1 where they were not measured."""
        if not self.weight_grads_ms:
            return 1.0
        return self.weight_grads_ms["kernel"] / self.weight_grads_ms["xla"]

    @property
    def forward_speedup(self) -> float:
        """The scan's time over the kernel's in the forward alone (what decides the forward of
        a single step: `flax_lstm._auto`)."""
        return self.scan_ms["fwd"] / self.kernel_ms["fwd"]

    @property
    def calls(self) -> str:
        """The calls it decides, in words."""
        if self.regime == "small":
            return f"batches of at most {tuning.small_batch()} sequences"
        if self.regime == "large":
            return f"batches of more than {tuning.small_batch()} sequences"
        shortest = probe("short")
        return (
            f"short calls ({shortest.steps} or more steps, too few for the size rule; probed at "
            f"B{shortest.batch} T{shortest.steps} H{shortest.hidden})"
        )


def disabled() -> bool:
    """Whether ``FLAX_LSTM_CALIBRATE`` turns measuring off (read at every call, as
    ``FLAX_LSTM_CPU_KERNEL`` is)."""
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def regime(batch: Any) -> str:
    """The kernel's regime of ``batch`` sequences; a symbolic batch (`jax.export`) counts as
    large."""
    return "small" if isinstance(batch, int) and batch <= tuning.small_batch() else "large"


def probe(regime: str) -> Probe:
    """The call ``regime`` is measured on: 64 steps of 256 units at the largest batch of the
    small-batch path or at `LARGE_PROBE_BATCH`, the usual batch of the benchmark's CPU set; for
    the short calls, the smallest of them of `SHORT_PROBE_HIDDEN` units
    (`flax_lstm._auto.KERNEL_MIN_STEPS` steps, one sequence)."""
    if regime == "short":
        from flax_lstm import _auto  # which calls are short is the size rule's to say

        return Probe(steps=_auto.KERNEL_MIN_STEPS, hidden=SHORT_PROBE_HIDDEN, batch=1)
    batch = max(1, tuning.small_batch()) if regime == "small" else LARGE_PROBE_BATCH
    return Probe(steps=64, hidden=256, batch=batch)


def cache_path() -> Path | None:
    """The calibration file of the loaded library on this CPU with the kernel's threads, or
    None where no library is loaded."""
    if not build.LIBRARY:
        return None
    library = build.LIBRARY[0]
    threads, small_batch, split_work = ffi.settings()
    cpus, xla_flags = ffi.usable_cpus(), os.environ.get("XLA_FLAGS", "")
    machine = _machine(threads, cpus, small_batch, split_work, xla_flags)
    return library.with_name(f"{library.stem}.calibration-{machine}.json")


@functools.cache
def _machine(threads: int, cpus: int, small_batch: int, split_work: int, xla_flags: str) -> str:
    """What keys the calibration beyond the library: the CPU (a portable library, built with
    ``FLAX_LSTM_ARCH``, is shared by other CPUs), the kernel's threads, small-batch size (which
    batches the "small" regime holds) and the work from which it shares a layer's units among
    threads (the short probe's threads), and the usable CPUs and XLA's flags, on which the
    scan's speed depends."""
    settings = (threads, cpus, small_batch, split_work)
    key = "\0".join((build.cpu_identity(), *map(str, settings), xla_flags))
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def verdict(dtype: str, regime: str) -> Verdict | None:
    """The verdict for the calls of compute ``dtype`` in ``regime`` (one of `REGIMES`), measured
    if it is not cached; None where measuring is off, no library is loaded or the measurement
    failed."""
    path = cache_path()
    if disabled() or path is None:
        return None
    found = _verdicts(path, dtype)
    return None if found is None else found.get(regime)


def cached() -> dict[str, dict[str, dict[str, Any]]]:
    """The cached verdicts, by dtype and regime, as JSON records; empty before any
    measurement (or where no library is loaded)."""
    path = cache_path()
    found = {} if path is None else _read(path)
    found.update({d: v for (p, d), v in _KNOWN.items() if p == path and d not in found})
    return {d: {r: dataclasses.asdict(v) for r, v in by.items()} for d, by in found.items()}


def measure_all(dtypes: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Measure ``dtypes`` now, replacing what is cached (``flax-lstm kernel --calibrate``); the
    cached verdicts after."""
    path = cache_path()
    if path is not None:
        for dtype in dtypes:
            _verdicts(path, dtype, again=True)
    return cached()


# Verdicts this process has read or measured (written or not: an unwritable cache folder),
# and dtypes whose measurement failed here: the plan asks at every call, and neither the file
# is read nor anything measured again by this process.
_KNOWN: dict[tuple[Path, str], dict[str, Verdict]] = {}
_FAILED: set[tuple[Path, str]] = set()


def _verdicts(path: Path, dtype: str, again: bool = False) -> dict[str, Verdict] | None:
    """``dtype``'s verdicts by regime: cached, or measured (once, under the file lock)."""
    key = (path, dtype)
    if not again and (key in _KNOWN or key in _FAILED):
        return _KNOWN.get(key)
    found = (None if again else _read(path).get(dtype)) or _measure_locked(path, dtype, again)
    if found is not None:
        _KNOWN[key] = found
    return found


def _measure_locked(path: Path, dtype: str, again: bool) -> dict[str, Verdict] | None:
    """``dtype``'s verdicts measured under the file lock (unless another process measured them
    meanwhile) and written to the file; None if the measurement failed."""
    with _locked(path):
        found = None if again else _read(path).get(dtype)
        if found is not None:
            return found
        try:
            found = {r: _measure(dtype, r) for r in REGIMES}
        except Exception as e:  # the size rule decides; the kernel's own errors show in the call
            _FAILED.add((path, dtype))
            warnings.warn(f"flax_lstm: the kernel's calibration failed: {e!r}", stacklevel=5)
            return None
        _write(path, dtype, found)
    return found


def _measure(dtype: str, regime: str) -> Verdict:
    """The verdict of one regime. One that takes the scan is measured a second time, over
    the repetitions of both: a load on the machine that slowed every repetition of the kernel
    by chance would otherwise keep the default from it until the next measurement."""
    times = time_paths(dtype, regime)
    verdict = Verdict.of(dtype, regime, times)
    if verdict.choice == "kernel":
        return _measure_weight_grads(verdict)
    again = time_paths(dtype, regime)
    both = {path: {m: times[path][m] + again[path][m] for m in MODES} for path in times}
    return _measure_weight_grads(Verdict.of(dtype, regime, both))


def _measure_weight_grads(verdict: Verdict) -> Verdict:
    """``verdict`` with the weight gradients measured, where it is float32's large regime
    and takes the kernel; one that takes XLA's is measured a second time, as `_measure`
    does the scan's."""
    if (verdict.dtype, verdict.regime, verdict.choice) != ("float32", "large", "kernel"):
        return verdict
    times = time_weight_grads(verdict.dtype)
    measured = verdict.with_weight_grads(times)
    if measured.weight_grads == "kernel":
        return measured
    again = time_weight_grads(verdict.dtype)
    return verdict.with_weight_grads({g: times[g] + again[g] for g in times})


def _read(path: Path) -> dict[str, dict[str, Verdict]]:
    """The verdicts of the calibration file by dtype and regime; empty if it is missing,
    unreadable, malformed or of another `METHOD` (measured again)."""
    try:
        record = json.loads(path.read_text())
        if record["method"] != METHOD:
            return {}
        records = record["verdicts"]
        return {
            dtype: {r: Verdict.from_json(by_regime[r]) for r in REGIMES}
            for dtype, by_regime in records.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write(path: Path, dtype: str, found: dict[str, Verdict]) -> None:
    """Add ``dtype``'s verdicts to the calibration file (atomically), where it can be written
    (else this process keeps them alone, in `_KNOWN`)."""
    merged = {**_read(path), dtype: found}
    records = {d: {r: dataclasses.asdict(v) for r, v in by.items()} for d, by in merged.items()}
    record = {
        "library": path.name.split(".")[0],
        "threads": ffi.num_threads(),
        "method": METHOD,
        "verdicts": records,
    }
    text = json.dumps(record, indent=2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _locked(path: Path):
    """The build's file lock, on the calibration file's own lock file; none where it cannot
    be taken (a read-only cache folder: this process then measures for itself)."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):
            stack.enter_context(build._lock(path.with_name(f".{path.name}.lock")))
        yield


def _timed(
    make_calls: Callable[[], dict[str, dict[str, Callable[[], Any]]]], modes: Sequence[str]
) -> Timings:
    """Milliseconds of the calls ``make_calls`` builds, in ``modes``, `REPS` each, built and
    run on the CPU."""
    import jax

    with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
        calls = make_calls()
        warm_up(calls, 2)  # compiles, then runs once more
        return time_interleaved(calls, modes, REPS)


def time_paths(dtype: str, regime: str) -> Timings:
    """Milliseconds of each path and mode on ``regime``'s probe, `REPS` each (the seam that
    tests replace with fake timings)."""
    paths = ("kernel", "scan")
    return _timed(lambda: {p: _probe_calls(dtype, probe(regime), p) for p in paths}, MODES)


def time_weight_grads(dtype: str) -> GradsTimings:
    """Forward+backward milliseconds of the large regime's probe on the kernel, with the
    kernel library's weight gradients and with XLA's, `REPS` each (a seam for tests too)."""
    gemms = ("kernel", "xla")

    def calls() -> dict[str, dict[str, Callable[[], Any]]]:
        return {
            g: {"fwd_bwd": _probe_calls(dtype, probe("large"), "kernel", g)["fwd_bwd"]}
            for g in gemms
        }

    times = _timed(calls, ["fwd_bwd"])
    return {g: times[g]["fwd_bwd"] for g in gemms}


def _probe_calls(
    dtype: str, shape: Probe, path: str, weight_grads: str | None = None
) -> dict[str, Callable[[], Any]]:
    """The jitted forward and forward+backward of the probe ``shape`` on ``path``, with the
    kernel's ``weight_grads`` (`flax_lstm.plan.Implementation`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import flax_lstm as fl

    config = fl.LSTMConfig(shape.hidden, shape.hidden)
    impl = fl.Implementation(recurrence=path, weight_grads=weight_grads)  # type: ignore[arg-type]
    params = fl.init_params(jax.random.key(0), config, dtype=jnp.dtype(dtype))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((shape.steps, shape.batch, shape.hidden)), dtype)
    return jitted_calls(lambda p, x: fl.lstm(p, x, config=config, impl=impl)[0], params, x)

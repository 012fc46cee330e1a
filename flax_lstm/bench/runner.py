"""`run`: every library on every shape, interleaved in balanced orders, into a JSON-able result."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import flax_lstm as fl
from flax_lstm._timing import time_interleaved
from flax_lstm.bench.libraries import (
    BUILDERS,
    LIBS,
    MODES,
    flax_lstm_plan,
    limit_torch_spinning,
    runs_on,
    skip_reason,
)
from flax_lstm.bench.machine import machine_info, precision_note, versions
from flax_lstm.bench.report import compare_with_float32, format_table, machine_line
from flax_lstm.bench.shapes import Shape
from flax_lstm.bench.yardstick import best_gemm

__all__ = ["run"]

Timings = dict[str, dict[str, list[float]]]  # library -> mode -> milliseconds per repetition


def run(
    shapes: Sequence[Shape],
    *,
    libs: Sequence[str] = LIBS,
    impl: fl.Implementation | None = None,
    reps: int = 10,
    warmup: int = 2,
    modes: Sequence[str] = MODES,
    log: Callable[[str], None] = lambda s: None,
    reference_gemm: bool = True,
    gemm_size: int | None = None,
) -> dict[str, Any]:
    """Benchmark ``libs`` on ``shapes``; returns the JSON-able result (see the docstring of
    `flax_lstm.bench`).

    ``impl`` is flax_lstm's `flax_lstm.Implementation` (its ``recurrence`` is "scan" for
    ``flax_lstm_scan``). With ``reference_gemm``, the yardstick of the GFLOP/s is measured
    after the timings: the faster of XLA's and torch's ``gemm_size``² GEMM per dtype
    (`flax_lstm.bench.yardstick.best_gemm`; ``gemm_size`` None: its default)."""
    for name, given, known in (("modes", modes, MODES), ("libs", libs, LIBS)):
        if not given or set(given) - set(known):
            raise ValueError(f"{name} must be a non-empty subset of {known}, got {tuple(given)}")
    torch_threads = limit_torch_spinning(libs)
    machine = machine_info()
    log(machine_line(machine))
    results = []
    ragged = any(s.lengths is not None for s in shapes)
    for shape in shapes:
        x = _input(shape)
        plan = (
            _default_plan(shape, x, impl) if {"flax_lstm", "flax_lstm_kernel"} & {*libs} else None
        )
        fns, notes = _build_and_warm(shape, x, libs, impl, plan, modes, warmup, log)
        entry = _result_entry(shape, time_interleaved(fns, modes, reps), notes, modes)
        if "flax_lstm" in fns:
            assert plan is not None  # flax_lstm's call makes the same plan, and it was built
            entry["flax_lstm_plan"] = _plan_record(shape, plan, log)
            entry["vs_other_path"] = _vs_other_path(entry, modes)
        results.append(entry)
        log(format_table([entry], modes, header=False, ragged=ragged))
    compare_with_float32(results)
    # float32 always (the historical yardstick), and every dtype that ran
    dtypes = ["float32", *sorted({s.dtype for s in shapes} - {"float32"})]
    refs = {d: best_gemm(d, gemm_size) for d in dtypes} if reference_gemm else {}
    return {
        "machine": machine,
        "versions": versions(),
        "reps": reps,
        "warmup": warmup,
        "flax_lstm_impl": dataclasses.asdict(fl.Implementation.of(impl)),
        "matmul": precision_note(),
        "torch_openmp_spin": torch_threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "reference_gemm": refs.get("float32"),
        "reference_gemm_by_dtype": refs,
        "flax_lstm_kernel": _kernel_state(libs),
        "results": results,
    }


def _kernel_state(libs: Sequence[str]) -> dict[str, Any] | None:
    """On CPU, where flax_lstm ran: the compiled kernel's state after the run
    (`flax_lstm.kernel.info`: the library, its instruction sets and AMX use, threads,
    small-batch size, the work from which a layer's units are shared among threads, and the
    calibration verdicts that the default plan followed); None elsewhere."""
    if jax.default_backend() != "cpu" or not any(lib.startswith("flax_lstm") for lib in libs):
        return None
    state = fl.kernel.info()
    keys = ("available", "error", "library", "isa", "amx", "amx_reason", "threads")
    return {k: state[k] for k in (*keys, "small_batch", "min_split_work", "calibration")}


def _build_and_warm(
    shape: Shape,
    x: np.ndarray,
    libs: Sequence[str],
    impl: fl.Implementation | None,
    plan: fl.Plan | None,
    modes: Sequence[str],
    warmup: int,
    log: Callable[[str], None],
) -> tuple[dict[str, dict[str, Callable]], dict[str, str]]:
    """Each library's calls for ``shape`` on input ``x``, built and warmed up; and a note on
    each library that is skipped (it cannot run here, by `skip_reason` given flax_lstm's
    ``plan``, or building or warming it up failed)."""
    fns, notes = {}, {}
    for lib in libs:
        if not runs_on(lib, shape):
            continue
        reason = skip_reason(lib, shape, plan)
        if reason is not None:
            notes[lib] = reason
            continue
        try:
            extra = {"impl": impl} if lib.startswith("flax_lstm") else {}
            fns[lib] = BUILDERS[lib](shape, x, **extra)
            for mode in modes:
                for _ in range(warmup):
                    fns[lib][mode]()
        except Exception as e:
            fns.pop(lib, None)
            notes[lib] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            log(f"{shape.label()}: {lib} {notes[lib]}")
    return fns, notes


def _default_plan(shape: Shape, x: np.ndarray, impl: fl.Implementation | None) -> fl.Plan | None:
    """flax_lstm's plan of the call on ``shape``, or None where it cannot be made (the call
    itself then fails, and its builder's note says why)."""
    try:
        return flax_lstm_plan(shape, x, impl)
    except Exception:  # as a library's failure to build: flax_lstm's own builder notes it
        return None


def _input(shape: Shape) -> np.ndarray:
    """The input of every library on ``shape``, (T, N, I) float32, the same at every run."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((shape.seq_len, shape.batch, shape.in_size)).astype(np.float32)


def _plan_record(shape: Shape, plan: fl.Plan, log: Callable[[str], None]) -> dict[str, str]:
    """The path flax_lstm took on ``shape`` and why (`flax_lstm.lstm_plan`), and the GEMMs of
    the kernel's float32 weight gradients; said in the log too where it is not the compiled
    kernel on CPU, the path a reader of the table expects."""
    if plan.on_cpu and plan.recurrence != "kernel":
        log(f"{shape.label()}: flax_lstm ran the scan path: {plan.reason}")
    return {
        "recurrence": plan.recurrence,
        "grad_recurrence": str(plan.grad_recurrence),
        "reason": plan.reason,
        "weight_grads": plan.weight_grads,
    }


def _vs_other_path(entry: dict[str, Any], modes: Sequence[str]) -> dict[str, Any]:
    """Per mode, the path flax_lstm's default did not take on CPU (``"scan"`` or ``"kernel"``)
    and its time over the default's (below 1: the default took the slower path), where that
    path was timed (``flax_lstm_scan``, ``flax_lstm_kernel``)."""
    plan = entry["flax_lstm_plan"]
    taken = {"fwd": plan["recurrence"], "fwd_bwd": plan["grad_recurrence"]}
    found = {}
    for mode in modes:
        other = "scan" if taken[mode] == "kernel" else "kernel"
        ratio = entry.get("speedup_vs", {}).get(f"flax_lstm_{other}", {}).get(mode)
        if ratio is not None:
            found[mode] = {"path": other, "speedup": ratio}
    return found


def _result_entry(
    shape: Shape, times: Timings, notes: dict[str, str], modes: Sequence[str]
) -> dict[str, Any]:
    """One shape's JSON entry: medians, minima, notes; with flax_lstm, the ratios of every
    peer to it and its GFLOP/s. A ragged shape's entry also has its ``seq_lengths`` and
    ``valid_fraction`` (the share of the T·N steps inside the lengths); its GFLOP/s count
    those steps only (the work that flax_lstm with ``seq_lengths`` has to do)."""
    ms = {lib: {m: statistics.median(v) for m, v in t.items()} for lib, t in times.items()}
    entry: dict[str, Any] = {
        "shape": dataclasses.asdict(shape),
        "label": shape.label(),
        "ms": ms,
        "ms_min": {lib: {m: min(v) for m, v in t.items()} for lib, t in times.items()},
        "notes": notes,
    }
    valid = 1.0
    lengths = shape.seq_lengths()
    if lengths is not None:
        valid = float(lengths.sum()) / (shape.batch * shape.seq_len)
        entry["seq_lengths"] = lengths.tolist()
        entry["valid_fraction"] = valid
    if "flax_lstm" in ms:
        ours = ms["flax_lstm"]
        entry["speedup_vs"] = {
            lib: {m: v[m] / ours[m] for m in modes} for lib, v in ms.items() if lib != "flax_lstm"
        }
        factor = {"fwd": 1.0, "fwd_bwd": 3.0}
        entry["flax_lstm_gflops"] = {
            m: shape.flops() * valid * factor[m] / ours[m] / 1e6 for m in modes
        }
    return entry

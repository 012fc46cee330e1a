"""Reading a benchmark result: the machine line over the table, the markdown table, the
bfloat16-vs-float32 comparison and the summary lines ``flax-lstm bench`` prints under the
table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax_lstm.bench.cpu import ISA_FLAGS

__all__ = [
    "compare_with_float32",
    "format_table",
    "gflops",
    "machine_line",
    "summary_lines",
    "yardstick_text",
]


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming what ran: the CPU model, family, ISA flags, caches and core count, and
    the accelerator where JAX runs on one. Fields missing from an older result are left out.

    >>> machine_line({"cpu_model": "AMD EPYC", "cpu_family": "AMD Zen 4", "cpu_count": 2,
    ...               "cpu_flags": ["avx2", "avx512f"], "cpu_caches": {"L2": 1 << 20},
    ...               "jax_backend": "cpu"})
    'CPU: AMD EPYC (AMD Zen 4), 2 cores; flags avx2 avx512f; caches L2 1 MiB'
    >>> machine_line({"cpu_model": "Intel Xeon", "cpu_count": 16, "cpus_allowed": 2})
    'CPU: Intel Xeon, 16 cores (2 allowed to the benchmark)'
    """
    model = machine.get("cpu_model") or machine.get("processor") or "unknown CPU"
    family = machine.get("cpu_family")
    text = f"CPU: {model}" + (f" ({family})" if family else "")
    text += f", {machine.get('cpu_count', '?')} cores"
    allowed = machine.get("cpus_allowed")
    if allowed is not None and allowed != machine.get("cpu_count"):
        text += f" ({allowed} allowed to the benchmark)"
    if "cpu_flags" in machine:
        flags = " ".join(machine["cpu_flags"]) or "none of " + "/".join(ISA_FLAGS)
        text += f"; flags {flags}"
    caches = machine.get("cpu_caches")
    if caches:
        text += "; caches " + ", ".join(f"{k} {_size(v)}" for k, v in caches.items())
    if machine.get("jax_backend", "cpu") != "cpu":
        text = f"{machine['jax_backend'].upper()}: {', '.join(machine['jax_devices'])}; " + text
    return text


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def yardstick_text(dtype: str, ref: dict[str, Any]) -> str:
    """The yardstick of one dtype in words: its rate and library, and the other library's rate
    (a result from before the yardstick was the best GEMM: XLA's, marked so).

    >>> yardstick_text("bfloat16", {"n": 2048.0, "gflops": 1900.0, "best": "torch",
    ...                             "gflops_by_library": {"xla": 300.0, "torch": 1900.0}})
    'bfloat16 2048x2048 GEMM 1900 GFLOP/s (torch; xla 300)'
    """
    n = int(ref["n"])
    head = f"{dtype} {n}x{n} GEMM {ref['gflops']:.0f} GFLOP/s"
    if "best" not in ref:
        return head + " (xla only)"
    others = [f"{lib} {g:.0f}" for lib, g in ref["gflops_by_library"].items() if lib != ref["best"]]
    return head + f" ({'; '.join([ref['best'], *others])})"


def compare_with_float32(results: list[dict]) -> None:
    """Add ``vs_float32`` to each bfloat16 entry whose shape also ran in float32: every
    library's float32 median over flax_lstm's bfloat16 median, per mode."""

    def shape_key(e: dict) -> tuple:  # the shape without its dtype
        return tuple(sorted({**e["shape"], "dtype": None}.items()))

    by_shape = {shape_key(e): e for e in results if e["shape"]["dtype"] == "float32"}
    for e in results:
        twin = by_shape.get(shape_key(e))
        if e["shape"]["dtype"] != "bfloat16" or twin is None or "flax_lstm" not in e["ms"]:
            continue
        ours = e["ms"]["flax_lstm"]
        e["vs_float32"] = {
            lib: {m: t[m] / ours[m] for m in ours if m in t} for lib, t in twin["ms"].items()
        }


def format_table(
    results: Sequence[dict],
    modes: Sequence[str] = ("fwd", "fwd_bwd"),
    header: bool = True,
    ragged: bool | None = None,
) -> str:
    """Markdown table: ms per library and mode, and peer/flax_lstm ratios.

    With ``ragged`` (by default: when a shape has sequence lengths) four more columns: the
    times of flax_lstm without its ``seq_lengths`` (padded) and of torch on a packed batch, and
    their ratios to flax_lstm; "torch" is then torch's padded call."""
    if ragged is None:
        ragged = any(e["shape"].get("lengths") for e in results)
    lines = []
    if header:
        extra = (
            " flax_lstm padded ms | torch packed ms | vs flax_lstm padded | vs torch packed |"
            if ragged
            else ""
        )
        lines.append(
            "| shape | mode | flax_lstm ms | GFLOP/s | scan path ms | torch ms | "
            "flax nn.RNN ms | jax cuDNN ms | vs scan path | vs torch | vs flax nn.RNN | "
            "vs jax cuDNN |" + extra
        )
        lines.append("|" + "---|" * (16 if ragged else 12))
    for e in results:
        for m in modes:
            ms = e["ms"]

            def cell(lib, ms=ms, m=m):
                return f"{ms[lib][m]:.2f}" if lib in ms else "–"

            def ratio(lib, e=e, m=m):
                r = e.get("speedup_vs", {}).get(lib)
                return f"{r[m]:.2f}x" if r else "–"

            gf = e.get("flax_lstm_gflops", {}).get(m)
            extra = (
                f" {cell('flax_lstm_padded')} | {cell('torch_packed')} | "
                f"{ratio('flax_lstm_padded')} | {ratio('torch_packed')} |"
                if ragged
                else ""
            )
            lines.append(
                f"| {e['label']} | {m} | {cell('flax_lstm')} | "
                f"{'' if gf is None else f'{gf:.0f}'} | {cell('flax_lstm_scan')} | "
                f"{cell('torch')} | {cell('flax_rnn')} | {cell('jax_cudnn')} | "
                f"{ratio('flax_lstm_scan')} | {ratio('torch')} | {ratio('flax_rnn')} | "
                f"{ratio('jax_cudnn')} |" + extra
            )
    return "\n".join(lines)


def gflops(entry: dict[str, Any], lib: str, mode: str) -> float | None:
    """``lib``'s GFLOP/s on one entry's shape in ``mode``: the FLOPs that flax_lstm's rate counts
    over ``lib``'s median time (None where either did not run).

    >>> entry = {"ms": {"flax_lstm": {"fwd": 2.0}, "torch": {"fwd": 4.0}},
    ...          "flax_lstm_gflops": {"fwd": 100.0}}
    >>> gflops(entry, "torch", "fwd"), gflops(entry, "torch", "fwd_bwd")
    (50.0, None)
    """
    ours, theirs = entry["ms"].get("flax_lstm", {}), entry["ms"].get(lib, {})
    rate = entry.get("flax_lstm_gflops", {}).get(mode)
    if rate is None or mode not in ours or mode not in theirs:
        return None
    return rate * ours[mode] / theirs[mode]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What flax_lstm and torch reached of the yardstick (the best large GEMM) per dtype,
    flax_lstm's bfloat16 times against torch's and its own float32 times, and the note on every
    skipped library. Where torch reaches a share s of the yardstick, code that ran at the
    yardstick's rate would be 1/s times as fast as torch: the share bounds what any library can
    beat torch by without outrunning the machine's best GEMM."""
    lines = []
    for dtype, ref in result.get("reference_gemm_by_dtype", {}).items():
        entries = [e for e in result["results"] if e["shape"]["dtype"] == dtype]
        if not ref or not entries:
            continue
        shares = {}
        for lib in ("flax_lstm", "torch"):
            rates = [gflops(e, lib, m) for e in entries for m in e["ms"].get(lib, {})]
            rates = [r / ref["gflops"] for r in rates if r is not None]
            if rates:
                shares[lib] = f"{lib} {min(rates):.0%}-{max(rates):.0%}"
        if shares:
            lines.append(
                f"yardstick, the best {yardstick_text(dtype, ref)}: reached "
                f"{', '.join(shares.values())} of it"
            )
    for e in result["results"]:
        for lib, by_mode in e.get("vs_float32", {}).items():
            if lib in ("torch", "flax_lstm"):
                ratios = ", ".join(f"{m} {r:.2f}x" for m, r in by_mode.items())
                lines.append(f"{e['label']}: flax_lstm bfloat16 against {lib} float32: {ratios}")
    for e in result["results"]:
        against = {m: o for m, o in e.get("vs_other_path", {}).items() if o["path"] == "kernel"}
        if against:  # the default took the scan where the kernel could run: was it faster?
            ratios = ", ".join(f"{m} {o['speedup']:.2f}x" for m, o in against.items())
            label = e["label"]
            lines.append(f"{label}: flax_lstm's default (the scan) against the kernel: {ratios}")
    for e in result["results"]:
        for lib, note in e["notes"].items():
            lines.append(f"note: {e['label']}: {lib} {note}")
    return lines

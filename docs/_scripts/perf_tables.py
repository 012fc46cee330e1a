"""Write the performance tables of the docs from ``benchmarks/*.json``; nothing is typed by hand.

Every JSON file that ``flax-lstm bench`` wrote into ``benchmarks/`` becomes one table, with the
machine, library versions, date and settings that the file records, and the command that made
it, read from the index in ``benchmarks/README.md`` (a JSON file missing from that index is an
error). `HEADLINE` names the run shown first for each kind of machine; `headline_table` is also
the table that the README shows (``tests/test_docs.py`` checks that they agree).

Run by ``docs/conf.py`` at build time; by hand: ``python docs/_scripts/perf_tables.py OUT.md``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"

# The run shown first for each kind of machine (and in the README).
HEADLINE = ("h100_112d1b6_gpu_set.json", "cpu_d8485b1_cpu_set_f32_bf16.json")

LIB_NAMES = {
    "flax_lstm": "flax_lstm",
    "flax_lstm_scan": "scan path",
    "torch": "torch",
    "flax_rnn": "Flax nn.RNN",
    "jax_cudnn": "jax.experimental.rnn",
    "flax_lstm_padded": "flax_lstm padded",
    "torch_packed": "torch packed",
}
MODE_NAMES = {"fwd": "fwd", "fwd_bwd": "fwd+bwd"}


def load(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


def machine_kind(result: dict) -> str:
    """A heading for the machine: the accelerator, or the CPU model and its core count."""
    m = result["machine"]
    if m["jax_backend"] != "cpu":
        return f"{m['jax_backend'].upper()}: {m['jax_devices'][0]}"
    return f"CPU: {m.get('cpu_model') or m['processor'] or 'unknown'}, {m['cpu_count']} cores"


def _expand(pattern: str) -> list[str]:
    """``a{,_run2}.json`` → ``a.json``, ``a_run2.json`` (one brace group)."""
    match = re.search(r"\{([^}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + alt + tail for alt in match.group(1).split(",")]


def commands() -> dict[str, tuple[str, str]]:
    """``{file: (command, note)}`` from the table in ``benchmarks/README.md``.

    A row that says "the same command" takes the command of the row above it.
    """
    out: dict[str, tuple[str, str]] = {}
    previous = ""
    for line in (BENCH / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        files, text = cells[0].strip("`"), cells[1]
        spans = re.findall(r"`([^`]+)`", text)
        command = spans[0] if spans else ""
        if text.startswith("the same") or not command:
            command = previous
        elif command.startswith("--"):
            command = "flax-lstm bench " + command
        previous = command
        for name in _expand(files):
            out[name] = (command, text)
    return out


def _ms(result: dict, lib: str, mode: str) -> str:
    value = result["ms"].get(lib, {}).get(mode)
    return "–" if value is None else f"{value:.2f}"


def _ratio(result: dict, lib: str, mode: str) -> str:
    value = result.get("speedup_vs", {}).get(lib, {}).get(mode)
    return "–" if value is None else f"{value:.2f}×"


def _libs(data: dict) -> list[str]:
    present = {lib for r in data["results"] for lib in r["ms"]}
    return [lib for lib in LIB_NAMES if lib in present]


def _label(result: dict) -> str:
    return re.sub(r"\bbi\b", "bidirectional", result["label"])


def full_table(data: dict) -> str:
    """Every shape and mode of one run: times, ratios and flax_lstm's GFLOP/s."""
    libs = _libs(data)
    peers = [lib for lib in libs if lib != "flax_lstm"]
    head = ["shape", "mode"] + [f"{LIB_NAMES[lib]} ms" for lib in libs]
    head += [f"vs {LIB_NAMES[lib]}" for lib in peers] + ["GFLOP/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["results"]:
        for mode in MODE_NAMES:
            if not any(mode in r["ms"].get(lib, {}) for lib in libs):
                continue
            gflops = r.get("flax_lstm_gflops", {}).get(mode)
            cells = [_label(r), MODE_NAMES[mode]]
            cells += [_ms(r, lib, mode) for lib in libs]
            cells += [_ratio(r, lib, mode) for lib in peers]
            cells.append("–" if gflops is None else f"{gflops:.0f}")
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def headline_table(name: str) -> str:
    """One row per shape: fwd+bwd and forward time of flax_lstm and its ratio to the peers."""
    data = load(name)
    rows = [
        "| shape | fwd+bwd ms | vs torch | vs Flax nn.RNN | fwd ms | vs torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        rows.append(
            "| "
            + " | ".join(
                [
                    _label(r),
                    _ms(r, "flax_lstm", "fwd_bwd"),
                    _ratio(r, "torch", "fwd_bwd"),
                    _ratio(r, "flax_rnn", "fwd_bwd"),
                    _ms(r, "flax_lstm", "fwd"),
                    _ratio(r, "torch", "fwd"),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def describe(name: str, data: dict, command: str, note: str) -> str:
    v = data["versions"]
    libs = ("jax", "jaxlib", "flax", "torch", "numpy")
    versions = ", ".join(f"{k} {v[k]}" for k in libs if k in v)
    m = data["machine"]
    lines = [
        f"- **file:** `benchmarks/{name}`",
        f"- **command:** `{command}`" if command else "- **command:** not recorded",
        f"- **index note:** {note}" if note and note != f"`{command}`" else "",
        f"- **machine:** {', '.join(m['jax_devices'])} ({m['jax_backend']} backend), "
        f"{m.get('cpu_model') or m['processor']}, {m['cpu_count']} CPUs, {m['platform']}",
        f"- **date:** {data['date']}; **versions:** Python {v.get('python', '?')}, {versions}",
        f"- **settings:** {data['reps']} repetitions after {data['warmup']} warm-up, "
        f"matmul precision: {data['matmul']}"
        + (f"; flax_lstm options {data['flax_lstm_kwargs']}" if data["flax_lstm_kwargs"] else "")
        + (f"; torch OpenMP: {data['torch_openmp_spin']}" if "torch_openmp_spin" in data else ""),
    ]
    refs = data.get("reference_gemm_by_dtype") or (
        {"float32": data["reference_gemm"]} if data.get("reference_gemm") else {}
    )
    if refs:
        lines.append(
            "- **large-GEMM yardstick:** "
            + ", ".join(
                f"{dtype} {int(r['n'])}×{int(r['n'])} {r['gflops']:.0f} GFLOP/s"
                for dtype, r in refs.items()
                if r
            )
        )
    notes = sorted({f"{LIB_NAMES.get(lib, lib)}: {text}" for r in data["results"]
                    for lib, text in r.get("notes", {}).items()})  # fmt: skip
    if notes:
        lines.append("- **notes:** " + "; ".join(notes))
    return "\n".join(line for line in lines if line)


def render() -> str:
    index = commands()
    files = sorted(p.name for p in BENCH.glob("*.json"))
    unindexed = [f for f in files if f not in index]
    if unindexed:
        raise SystemExit(f"benchmarks/README.md does not list {unindexed}: add their commands")
    runs = {f: load(f) for f in files}
    kinds: dict[str, list[str]] = {}
    for f in sorted(files, key=lambda f: (f not in HEADLINE, runs[f]["date"]), reverse=False):
        kinds.setdefault(machine_kind(runs[f]), []).append(f)
    out = [
        "<!-- Generated by docs/_scripts/perf_tables.py from benchmarks/*.json; do not edit. -->",
        "",
        "# Benchmark results",
        "",
        "Every run recorded in `benchmarks/`, one table per JSON file, generated when the docs",
        "are built. Times are medians in milliseconds over the repetitions, forward (`fwd`,",
        "inference) and forward+backward (`fwd+bwd`, gradients with respect to the input and",
        "every weight); a ratio is `peer time / flax_lstm time` (above 1: flax_lstm is faster).",
        '"scan path" is flax_lstm\'s own `lax.scan` path in the same run (CPU only), so',
        '"vs scan path" is what the compiled CPU kernel buys. GFLOP/s counts the GEMMs',
        "(fwd+bwd = 3 × forward).",
        "",
    ]
    for kind, names in kinds.items():
        out += [f"## {kind}", ""]
        head = [n for n in names if n in HEADLINE]
        rest = sorted((n for n in names if n not in HEADLINE), key=lambda n: runs[n]["date"],
                      reverse=True)  # fmt: skip
        for name in head + rest:
            command, note = index[name]
            title = f"{name}" + (" (headline)" if name in HEADLINE else "")
            out += [f"### {title}", "", describe(name, runs[name], command, note), ""]
            if name in HEADLINE:
                out += ["Headline (as in the README):", "", headline_table(name), ""]
                out += ["All rows:", ""]
            out += [full_table(runs[name]), ""]
    return "\n".join(out)


def write(path: str | Path) -> None:
    text = render()
    path = Path(path)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "performance" / "results.md")

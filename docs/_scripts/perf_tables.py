"""Write the performance tables of the docs from ``benchmarks/*.json``; nothing is typed by hand.

Every JSON file that ``flax-lstm bench`` wrote into ``benchmarks/`` becomes one table, with the
machine, library versions, date and settings that the file records, and the command that made
it, read from the index in ``benchmarks/README.md`` (a JSON file missing from that index is an
error). CPU runs are grouped by CPU family (AMD Zen 4, Intel Sapphire Rapids, ...): the family
that ``flax-lstm bench`` recorded in the JSON, or for a file written before it recorded one, the
family that the index's machine column names (a row that says "same machine" takes the family
of the row above it). `HEADLINE` names the run shown first for each kind of machine;
`headline_table` is also the table that the README shows (``tests/test_docs.py`` checks that
they agree).

Older files lack fields that later ones have (the CPU's family, flags and caches, torch's GEMM
in the yardstick, ``flax_lstm_impl``); every reader here takes them as optional.

Run by ``docs/conf.py`` at build time; by hand: ``python docs/_scripts/perf_tables.py OUT.md``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from flax_lstm._kernel import tuning
from flax_lstm.bench.report import gflops

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"

# The run shown first for each kind of machine (and in the README).
HEADLINE = ("h200_5d9bf16_gpu_set.json", "cpu_5d9bf16_emerald_2cpu_cpu_set_f32_bf16.json")

LIB_NAMES = {
    "flax_lstm": "flax_lstm",
    "flax_lstm_scan": "scan path",
    "flax_lstm_kernel": "kernel path",
    "torch": "torch",
    "flax_rnn": "Flax nn.RNN",
    "jax_cudnn": "jax.experimental.rnn",
    "flax_lstm_padded": "flax_lstm padded",
    "torch_packed": "torch packed",
}
MODE_NAMES = {"fwd": "fwd", "fwd_bwd": "fwd+bwd"}


def load(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


def machine_kind(result: dict, family: str = "") -> str:
    """A heading for the machine: the accelerator, or the CPU family (`cpu_family`, else
    ``family``), else the CPU model and its core count."""
    m = result["machine"]
    if m["jax_backend"] != "cpu":
        return f"{m['jax_backend'].upper()}: {m['jax_devices'][0]}"
    family = m.get("cpu_family") or family
    if family:
        return f"CPU: {family}"
    return f"CPU: {m.get('cpu_model') or m['processor'] or 'unknown'}, {m['cpu_count']} cores"


# Family names as the index's machine column may write them ("AMD EPYC (Zen 4)", "Intel Xeon
# Sapphire Rapids"); the vendor is added where the column leaves it out.
_FAMILY_PATTERN = re.compile(
    r"\b(Zen \d\+?|(?:Sapphire|Emerald|Granite) Rapids|Ice Lake|Cascade Lake)"
)


def family_in_text(text: str) -> str:
    """The CPU family that a line of the index names, e.g. ``"AMD Zen 4"``; "" if none."""
    match = _FAMILY_PATTERN.search(text)
    if not match:
        return ""
    name = match.group(1)
    return ("AMD " if name.startswith("Zen") else "Intel ") + name


def _expand(pattern: str) -> list[str]:
    """``a{,_run2}.json`` → ``a.json``, ``a_run2.json`` (one brace group)."""
    match = re.search(r"\{([^}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + alt + tail for alt in match.group(1).split(",")]


def _index_rows() -> Iterator[tuple[str, list[str]]]:
    """``(folder, cells)`` for each row of ``benchmarks/README.md``'s tables that names files:
    the folder is "" for the first table's rows, ``name/`` for those under a heading
    ``## `name/`…`` (a tool's folder)."""
    folder = ""
    for line in (BENCH / "README.md").read_text().splitlines():
        heading = re.match(r"## `([^`]+)/`", line)
        if heading:
            folder = heading.group(1) + "/"
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            yield folder, cells


def indexed_files() -> set[str]:
    """The JSON files that the index's tables name, as paths under ``benchmarks/``."""
    return {
        folder + name
        for folder, cells in _index_rows()
        if cells[0].endswith(".json`")
        for name in _expand(cells[0].strip("`"))
    }


def index() -> dict[str, tuple[str, str, str]]:
    """``{file: (command, note, CPU family)}`` from the table in ``benchmarks/README.md``.

    A row that says "the same command" takes the command of the row above it; a row whose
    machine column names no CPU family but says "same" takes the family of the row above it.
    """
    out: dict[str, tuple[str, str, str]] = {}
    previous, previous_family = "", ""
    for _, cells in _index_rows():
        files, text, machine = cells[0].strip("`"), cells[1], cells[2]
        spans = re.findall(r"`([^`]+)`", text)
        command = spans[0] if spans else ""
        if text.startswith("the same") or not command:
            command = previous
        elif command.startswith("--"):
            command = "flax-lstm bench " + command
        family = family_in_text(machine) or (previous_family if "same" in machine else "")
        previous, previous_family = command, family
        for name in _expand(files):
            out[name] = (command, text, family)
    return out


def commands() -> dict[str, tuple[str, str]]:
    """``{file: (command, note)}`` from the table in ``benchmarks/README.md`` (see `index`)."""
    return {name: (command, note) for name, (command, note, _) in index().items()}


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


def yardsticks(data: dict) -> dict[str, dict]:
    """The yardstick per dtype, ``{dtype: {"n", "gflops", ...}}``: ``reference_gemm_by_dtype``,
    or in the oldest files ``reference_gemm`` (float32) or nothing."""
    refs = data.get("reference_gemm_by_dtype") or (
        {"float32": data["reference_gemm"]} if data.get("reference_gemm") else {}
    )
    return {dtype: ref for dtype, ref in refs.items() if ref}


def best_gemm_yardsticks(data: dict) -> dict[str, dict]:
    """The yardsticks that are the best GEMM of the machine (XLA's or torch's, with ``best``
    naming the faster); older files measured XLA's only and have none."""
    return {dtype: ref for dtype, ref in yardsticks(data).items() if "best" in ref}


def share_of_best_gemm(result: dict, lib: str, mode: str, best: dict[str, dict]) -> str:
    """``lib``'s GFLOP/s on one shape (`flax_lstm.bench.report.gflops`) as a share of the best
    GEMM of the run's dtype; "–" where the file lacks either. Where torch reaches a share s,
    code at the best GEMM's rate would be 1/s times as fast as torch."""
    ref = best.get(result["shape"].get("dtype", "float32"))
    rate = gflops(result, lib, mode)
    return "–" if ref is None or rate is None else f"{rate / ref['gflops']:.0%}"


def full_table(data: dict) -> str:
    """Every shape and mode of one run: times, ratios and flax_lstm's GFLOP/s, and its share
    and torch's of the machine's best GEMM where the file has that yardstick."""
    libs = _libs(data)
    peers = [lib for lib in libs if lib != "flax_lstm"]
    best = best_gemm_yardsticks(data)
    torch = best and "torch" in libs
    head = ["shape", "mode"] + [f"{LIB_NAMES[lib]} ms" for lib in libs]
    head += [f"vs {LIB_NAMES[lib]}" for lib in peers] + ["GFLOP/s"]
    head += ["of best GEMM"] if best else []
    head += ["torch of best GEMM"] if torch else []
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
            if best:
                cells.append(share_of_best_gemm(r, "flax_lstm", mode, best))
            if torch:
                cells.append(share_of_best_gemm(r, "torch", mode, best))
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def headline_table(name: str, torch_share: bool = False) -> str:
    """One row per shape: fwd+bwd and forward time of flax_lstm and its ratio to the peers;
    with ``torch_share``, torch's share of the machine's best GEMM in each mode (where the
    file has that yardstick; the README's tables have no such column)."""
    data = load(name)
    best = best_gemm_yardsticks(data) if torch_share else {}
    head = ["shape", "fwd+bwd ms", "vs torch", "vs Flax nn.RNN", "fwd ms", "vs torch"]
    head += ["torch of best GEMM, fwd+bwd / fwd"] if best else []
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["results"]:
        cells = [
            _label(r),
            _ms(r, "flax_lstm", "fwd_bwd"),
            _ratio(r, "torch", "fwd_bwd"),
            _ratio(r, "flax_rnn", "fwd_bwd"),
            _ms(r, "flax_lstm", "fwd"),
            _ratio(r, "torch", "fwd"),
        ]
        if best:
            shares = [share_of_best_gemm(r, "torch", m, best) for m in ("fwd_bwd", "fwd")]
            cells.append(" / ".join(shares))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cpu_text(m: dict, family: str) -> str:
    """The CPU of a run: model, family (recorded, or as the index names it), ISA flags and
    caches; what an older file did not record is said to be so."""
    model = m.get("cpu_model") or m.get("processor") or "unknown model"
    if m.get("cpu_family"):
        family_text = m["cpu_family"]
    elif family:
        family_text = f"{family} (as `benchmarks/README.md` names it; not recorded in the file)"
    else:
        family_text = "family not recorded"
    flags = m.get("cpu_flags")
    flags_text = "ISA flags not recorded" if flags is None else f"flags {' '.join(flags) or 'none'}"
    caches = m.get("cpu_caches") or {}
    cache_text = ", ".join(f"{k} {v // 1024} KiB" for k, v in caches.items())
    return f"{model}, {family_text}; {flags_text}" + (
        f"; caches {cache_text}" if cache_text else ""
    )


def _yardstick_line(data: dict) -> str:
    refs = yardsticks(data)
    if not refs:
        return ""
    parts = []
    for dtype, r in refs.items():
        n = int(r["n"])
        text = f"{dtype} {n}×{n} {r['gflops']:.0f} GFLOP/s"
        if "best" in r:
            rates = "; ".join(f"{lib} {g:.0f}" for lib, g in r.get("gflops_by_library", {}).items())
            text += f" ({r['best']} was faster: {rates})"
        parts.append(text)
    if best_gemm_yardsticks(data):
        return "- **yardstick (best GEMM, XLA's or torch's):** " + ", ".join(parts)
    return "- **yardstick (XLA's GEMM only, before it was the best GEMM):** " + ", ".join(parts)


def _impl_text(data: dict) -> str:
    if data.get("flax_lstm_kwargs"):
        return f"; flax_lstm options {data['flax_lstm_kwargs']}"
    if data.get("flax_lstm_impl"):
        return f"; flax_lstm implementation {data['flax_lstm_impl']}"
    return ""


def describe(name: str, data: dict, command: str, note: str, family: str = "") -> str:
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
        f"- **CPU:** {_cpu_text(m, family)}" if m["jax_backend"] == "cpu" else "",
        f"- **date:** {data['date']}; **versions:** Python {v.get('python', '?')}, {versions}",
        f"- **settings:** {data['reps']} repetitions after {data['warmup']} warm-up, "
        f"matmul precision: {data['matmul']}"
        + _impl_text(data)
        + (f"; torch OpenMP: {data['torch_openmp_spin']}" if "torch_openmp_spin" in data else ""),
        _yardstick_line(data),
    ]
    notes = sorted({f"{LIB_NAMES.get(lib, lib)}: {text}" for r in data["results"]
                    for lib, text in r.get("notes", {}).items()})  # fmt: skip
    if notes:
        lines.append("- **notes:** " + "; ".join(notes))
    return "\n".join(line for line in lines if line)


def render() -> str:
    rows = index()
    files = sorted(p.name for p in BENCH.glob("*.json"))
    unindexed = [f for f in files if f not in rows]
    if unindexed:
        raise SystemExit(f"benchmarks/README.md does not list {unindexed}: add their commands")
    runs = {f: load(f) for f in files}
    kinds: dict[str, list[str]] = {}
    for f in sorted(files, key=lambda f: (f not in HEADLINE, runs[f]["date"]), reverse=False):
        kinds.setdefault(machine_kind(runs[f], rows[f][2]), []).append(f)
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
        '(fwd+bwd = 3 × forward); "of best GEMM" is its share of the yardstick, the faster of',
        "XLA's and torch's large GEMM on the machine in that dtype (files from before that",
        "yardstick have no such column). CPU runs are grouped by CPU family; figures measured",
        "outside `benchmarks/` (Intel Sapphire Rapids, from issue 23) are on the Performance page.",
        "",
    ]
    out += family_tables(kinds, runs, rows)
    for kind, names in kinds.items():
        out += [f"## {kind}", ""]
        for name in _in_order(names, runs):
            command, note, family = rows[name]
            title = f"{name}" + (" (headline)" if name in HEADLINE else "")
            out += [f"### {title}", "", describe(name, runs[name], command, note, family), ""]
            if name in HEADLINE:
                out += ["Headline (as in the README):", "", headline_table(name), ""]
                out += ["All rows:", ""]
            out += [full_table(runs[name]), ""]
    return "\n".join(out)


def _in_order(names: list[str], runs: dict[str, dict]) -> list[str]:
    """The headline run first, then the others, newest first."""
    rest = [n for n in names if n not in HEADLINE]
    return [n for n in names if n in HEADLINE] + sorted(
        rest, key=lambda n: runs[n]["date"], reverse=True
    )


def _default_settings(run: dict) -> bool:
    """Whether a run had every CPU of its machine, and the kernel as many threads and its default
    settings (`flax_lstm._kernel.tuning`: not a run under ``taskset``, ``FLAX_LSTM_NUM_THREADS``,
    ``FLAX_LSTM_SMALL_BATCH`` or ``FLAX_LSTM_MIN_SPLIT_WORK``), so that its table is the
    family's; older files, which record none of these, count as such."""
    machine, state = run["machine"], run.get("flax_lstm_kernel") or {}
    allowed = machine.get("cpus_allowed", machine.get("cpu_count"))
    return (
        allowed == machine.get("cpu_count")
        and state.get("threads", allowed) == allowed
        and state.get("small_batch", tuning.SMALL_BATCH) == tuning.SMALL_BATCH
        and state.get("min_split_work", tuning.MIN_SPLIT_WORK) == tuning.MIN_SPLIT_WORK
    )


def family_tables(
    kinds: dict[str, list[str]], runs: dict[str, dict], rows: dict[str, tuple[str, str, str]]
) -> list[str]:
    """One table per CPU family: the headline table of its headline run (else of its newest
    ``--set cpu`` run, else of its newest run), and of its newest ``--set small`` run; each
    of the runs with the default settings where there are any (`_default_settings`)."""
    out = ["## One table per CPU family", ""]
    for kind, names in kinds.items():
        if not kind.startswith("CPU"):
            continue
        ordered = _in_order(names, runs)

        def preferred(names: list[str]) -> list[str]:
            return [n for n in names if n in HEADLINE or _default_settings(runs[n])] or names

        cpu_set = preferred([n for n in ordered if "--set cpu" in rows[n][0]])
        small_set = preferred([n for n in ordered if "--set small" in rows[n][0]])
        ordered = preferred(ordered)
        main = next((n for n in ordered if n in HEADLINE), (cpu_set or ordered)[0])
        for name in [main, *small_set[:1]]:
            out += [
                f"### {kind.removeprefix('CPU: ')}: `{rows[name][0] or 'command not recorded'}`",
                "",
                f"`benchmarks/{name}`, {runs[name]['date']}; "
                f"{_cpu_text(runs[name]['machine'], rows[name][2])}.",
                "",
                headline_table(name, torch_share=True),
                "",
            ]
    return out


def write(path: str | Path) -> None:
    text = render()
    path = Path(path)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "performance" / "results.md")

"""Kernel A/B: this checkout's CPU kernel against another revision's, in one process.

Compiles the kernel (``flax_lstm/_kernel/lstm_cpu.cc`` and its headers) as of a git revision
(``--baseline``, default HEAD) with the compiler and flags of the installed build, registers it
beside the current library under other FFI target names, and times flax_lstm with each library,
and torch.nn.LSTM, on the given shapes, every round in a new random order. This machine's speed
drifts by 20-30% between processes and minutes, so a change of a few percent shows only in a
comparison like this one (docs/performance/design.md, "Tuning per CPU"). Both variants run this
checkout's Python side: the baseline must take the same FFI calls (a change inside the kernel).

Each variant is traced with its own `flax_lstm.Implementation` (an ``unroll`` value, which the
kernel path does not use): JAX caches the traces of the library's inner jitted functions by
function and static arguments, and a second variant traced with the same ones would reuse the
first one's trace. The lowered HLO of each variant is checked for its own FFI targets.

Two executables of the very same code can differ by far more than the spread of their own
calls (a null run, ``--baseline HEAD`` on an unchanged checkout with one executable each:
B1 T128 H512 forward 8.14 against 5.47 ms, B4 T128 H256 fwd+bwd 0.89×), so each variant is
compiled ``--copies`` times (default 3), every copy takes its turn in the random order, and a
variant's median (and fastest call) is over all its copies' calls. Run a null comparison first
to see the spread.

``--baseline xla-weight-grads`` compares this checkout with itself, XLA's GEMMs taking the
float32 weight and input gradients in the baseline (``Implementation(weight_grads="xla")``)
where the kernel library's `weight_grads` and `input_grad` calls take them in the current
variant (``"kernel"``): which of the two is faster depends on the CPU, which the default
measures (`flax_lstm._kernel.calibrate`). Its forward runs the same code in both variants, a
null comparison.

Not a test: from the repository root,
``PYTHONPATH=$PWD python tools/kernel_ab.py --baseline HEAD~1 --shape 4,128,256
--shape 64,64,512,2 [--reps 20] [--json out.json]`` (shapes as ``flax-lstm bench --shape``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl
from flax_lstm import kernel
from flax_lstm._kernel import build, ffi
from flax_lstm.bench import libraries
from flax_lstm.bench.libraries import MODES
from flax_lstm.bench.machine import machine_info
from flax_lstm.bench.shapes import parse_shape

REPO = Path(__file__).resolve().parents[1]
PREFIX = "kernel_ab_"
XLA_WEIGHT_GRADS = "xla-weight-grads"  # the --baseline of XLA's weight gradients (see above)
WEIGHT_GRADS_TARGET = "flax_lstm_cpu_weight_grads"
KERNEL = "flax_lstm/_kernel"  # the kernel's folder in the repository


def baseline_sources(rev: str) -> dict[str, bytes]:
    """The kernel's files (``lstm_cpu.cc`` and the headers it includes) of git revision
    ``rev``, or, for a machine without the history such as a lent GPU machine, of the folder
    ``rev`` or of the source file ``rev`` and the headers beside it: file name to contents."""
    path = Path(rev)
    if path.is_dir() or (rev.endswith(".cc") and path.is_file()):
        main = path / "lstm_cpu.cc" if path.is_dir() else path
        return {"lstm_cpu.cc" if p == main else p.name: p.read_bytes() for p in build.sources(main)}

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], capture_output=True, check=True, cwd=REPO).stdout

    listing = git("ls-tree", "--name-only", rev, f"{KERNEL}/").decode().split()
    names = [Path(n).name for n in listing if n.endswith((".cc", ".h"))]
    return {name: git("show", f"{rev}:{KERNEL}/{name}") for name in names}


def build_baseline(rev: str, folder: Path) -> Path:
    """The kernel library of ``rev`` (see `baseline_sources`), compiled as the installed one
    was."""
    for name, text in baseline_sources(rev).items():
        (folder / name).write_bytes(text)
    cxx = build.compiler()
    if cxx is None or not kernel.available():
        raise SystemExit(f"no kernel to compare: {kernel.build_error()}")
    out = folder / "baseline.so"
    cmd = build.compile_command(cxx, kernel.info()["flags"], folder / "lstm_cpu.cc", out)
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def register(library: Path) -> None:
    """Registers the baseline's forward and backward under `PREFIX` + the current names."""
    lib = ctypes.cdll.LoadLibrary(str(library))
    for targets in build.TARGETS.values():
        for name, symbol in targets:
            if hasattr(lib, symbol):
                capsule = jax.ffi.pycapsule(getattr(lib, symbol))
                jax.ffi.register_ffi_target(PREFIX + name, capsule, "cpu")


@contextlib.contextmanager
def baseline_targets():
    """While tracing: the kernel's calls go to the baseline library."""
    current = ffi.targets
    ffi.targets = lambda dtype: tuple(PREFIX + t for t in current(dtype))
    try:
        yield
    finally:
        ffi.targets = current


def check_trace(text: str, mode: str, baseline: bool, kind: str) -> None:
    """Exits unless the lowered HLO ``text`` calls the kernel library its variant should."""
    who = "baseline" if baseline else "current"
    if "flax_lstm_cpu_forward" not in text:
        raise SystemExit(f"the {who} variant's trace does not run the kernel")
    if kind == XLA_WEIGHT_GRADS:
        if baseline and WEIGHT_GRADS_TARGET in text:
            raise SystemExit("the baseline's trace calls the kernel's weight gradients")
        if not baseline and mode == "fwd_bwd" and WEIGHT_GRADS_TARGET not in text:
            raise SystemExit("the current variant does not take the kernel's weight gradients here")
    elif (PREFIX in text) != baseline:
        raise SystemExit(f"the {who} variant's trace calls the wrong kernel library")


def variant(cfg: fl.LSTMConfig, unroll: int, mode: str, params, x, baseline: bool, kind: str):
    """A jitted call of ``mode`` on the kernel path, traced now (under the baseline's targets,
    or with XLA's weight gradients for ``kind`` `XLA_WEIGHT_GRADS`, where ``baseline``), and
    checked to call the library it should."""
    xla_grads = baseline and kind == XLA_WEIGHT_GRADS
    impl = fl.Implementation(
        recurrence="kernel", unroll=unroll, weight_grads="xla" if xla_grads else "kernel"
    )

    def apply(p, x):
        return fl.lstm(p, x, config=cfg, impl=impl)[0]

    def loss(p, x):
        return apply(p, x).astype(jnp.float32).sum()

    fn = jax.jit(apply) if mode == "fwd" else jax.jit(jax.grad(loss, argnums=(0, 1)))
    context = contextlib.nullcontext()
    if baseline and kind != XLA_WEIGHT_GRADS:
        context = baseline_targets()
    with context:
        text = fn.lower(params, x).as_text()
        jax.block_until_ready(fn(params, x))
    check_trace(text, mode, baseline, kind)
    return lambda: jax.block_until_ready(fn(params, x))


def compare(shape, reps: int, copies: int, kind: str, modes=MODES) -> list[dict]:
    """Medians and minima (ms) of baseline, current and torch for both modes, interleaved at
    random; each variant compiled ``copies`` times and the times of its copies pooled."""
    cfg = fl.LSTMConfig(
        shape.in_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional
    )
    dtype = jnp.dtype(shape.dtype)
    params = fl.init_params(jax.random.key(0), cfg, dtype=dtype)
    x_np = np.random.default_rng(0).standard_normal((shape.seq_len, shape.batch, shape.in_size))
    x_np = x_np.astype(np.float32)
    x = jnp.asarray(x_np, dtype)
    calls = {}
    unrolls = iter(range(1, 1000))
    for copy in range(copies):
        for who in ("baseline", "current"):
            for mode in modes:
                fn = variant(cfg, next(unrolls), mode, params, x, who == "baseline", kind)
                calls[who, mode, copy] = fn
    if importlib.util.find_spec("torch") is not None:  # as `flax-lstm bench` runs it
        torch_fns = libraries.BUILDERS["torch"](shape, x_np)
        calls.update({("torch", mode, 0): torch_fns[mode] for mode in modes})
    for fn in calls.values():  # warm up
        fn()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for key in random.sample(list(calls), len(calls)):
            start = time.perf_counter()
            calls[key]()
            times.setdefault(key[:2], []).append(time.perf_counter() - start)
    rows = []
    for mode in modes:
        med = {who: statistics.median(times[who, m]) * 1e3 for who, m in times if m == mode}
        low = {who: min(times[who, m]) * 1e3 for who, m in times if m == mode}
        rows.append({"shape": shape.label(), "mode": mode, "ms": med, "ms_min": low})
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| shape | mode | baseline ms | current ms | current/baseline speed | "
        "the same, fastest calls | torch ms |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, low = r["ms"], r["ms_min"]
        torch_ms = f"{ms['torch']:.2f}" if "torch" in ms else "–"
        speed = ms["baseline"] / ms["current"]
        lines.append(
            f"| {r['shape']} | {r['mode']} | {ms['baseline']:.2f} | {ms['current']:.2f} | "
            f"{speed:.3f}× | {low['baseline'] / low['current']:.3f}× | {torch_ms} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--baseline",
        default="HEAD",
        help=f"git revision of the baseline kernel, its .cc file, or {XLA_WEIGHT_GRADS}",
    )
    ap.add_argument("--shape", action="append", required=True, help="B,T,H[,L][,bi][,in=I][,bf16]")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--copies", type=int, default=3, help="executables per variant (see above)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list from fwd, fwd_bwd")
    ap.add_argument("--json", help="where to write the results")
    a = ap.parse_args()
    shapes = [parse_shape(s) for s in a.shape]
    modes = [m for m in a.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: expected a comma list from {MODES}, got {a.modes!r}")
    libraries.limit_torch_spinning(["torch"])  # before torch loads: its idle threads spin
    kind = XLA_WEIGHT_GRADS if a.baseline == XLA_WEIGHT_GRADS else "kernel"
    if kind == "kernel":
        with tempfile.TemporaryDirectory() as folder:
            register(build_baseline(a.baseline, Path(folder)))
    rows = [row for shape in shapes for row in compare(shape, a.reps, a.copies, kind, modes)]
    print(table(rows))
    if a.json:
        record = {"baseline": a.baseline, "reps": a.reps, "copies": a.copies, "rows": rows}
        record["machine"] = machine_info()
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

"""``flax-lstm bench``: flax_lstm against torch.nn.LSTM, Flax nn.RNN and jax.experimental.rnn.

On CPU it also runs flax_lstm's own ``lax.scan`` path (``impl="scan"``, "scan path"),
so that the gain of the compiled CPU kernel is measured in the same run.

Every library runs the same shapes in one process, interleaved repetition by repetition after a
warm-up, forward (inference) and forward+backward (gradients w.r.t. the input and every
weight); the table reports medians in milliseconds and the ratio ``peer time / flax_lstm time``
(above 1: flax_lstm is faster). The order of the libraries rotates by one each repetition,
so that each follows every other one equally often. On CPU, torch's OpenMP threads are told
to stop spinning soon after each call (``GOMP_SPINCOUNT=3000``, unless the caller set it or
``OMP_WAIT_POLICY``, or imported torch first), so that they do not hold a core through the
next library's call; the JSON says which setting held. A JSON file records the machine,
library versions and dtype, the medians (``ms``), the fastest repetition (``ms_min``, steadier
on a shared machine) and a large-GEMM reference rate per dtype. ``--dtypes float32,bfloat16``
runs every shape in both; each bfloat16 shape is then also compared with the float32 times of
the same run (``vs_float32``: a library's float32 time / flax_lstm's bfloat16 time).

Example (a tiny custom shape; the shape sets are ``--set cpu`` and ``--set gpu``):
  >>> from flax_lstm import bench
  >>> result = bench.run([bench.Shape(2, 8, 16, 1)], libs=("flax_lstm",), reps=2, warmup=1)
  >>> sorted(result["results"][0]["ms"]["flax_lstm"])
  ['fwd', 'fwd_bwd']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl

__all__ = ["CPU_SET", "GPU_SET", "Shape", "main", "reference_gemm_gflops", "run"]

# flax_lstm_scan: flax_lstm with impl="scan", its lax.scan path (CPU only: elsewhere that
# is what flax_lstm runs anyway); the ratio against it is the compiled kernel's gain.
LIBS = ("flax_lstm", "flax_lstm_scan", "torch", "flax_rnn", "jax_cudnn")
MODES = ("fwd", "fwd_bwd")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: batch, seq_len, hidden, layers, bidirectional, input size, dtype."""

    batch: int
    seq_len: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    input_size: int | None = None  # None: = hidden
    dtype: str = "float32"

    @property
    def in_size(self) -> int:
        return self.input_size or self.hidden

    def label(self) -> str:
        s = f"B{self.batch} T{self.seq_len} H{self.hidden} L{self.layers}"
        if self.input_size and self.input_size != self.hidden:
            s += f" I{self.input_size}"
        if self.bidirectional:
            s += " bi"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s

    def flops(self) -> float:
        """Forward FLOPs (multiply-adds × 2) of the GEMMs; fwd+bwd is about 3×."""
        d, h = 2 if self.bidirectional else 1, self.hidden
        total = 0
        for k in range(self.layers):
            in_k = self.in_size if k == 0 else d * h
            total += 2 * self.seq_len * self.batch * d * 4 * h * (in_k + h)
        return float(total)


CPU_SET = (
    Shape(1, 256, 128, 1, input_size=64),
    Shape(32, 128, 256, 2, input_size=128),
    Shape(32, 128, 256, 2, True, input_size=128),
    Shape(64, 64, 512, 2),
)
GPU_SET = (
    Shape(16, 512, 256, 1),
    Shape(64, 256, 512, 2),
    Shape(64, 256, 512, 2, True),
    Shape(256, 128, 1024, 2),
    Shape(16, 1024, 768, 1, dtype="bfloat16"),
)


# --- one builder per library: returns {"fwd": fn, "fwd_bwd": fn}, each fn() blocks ---------


def _jax_fns(apply: Callable, params: Any, x: jax.Array) -> dict[str, Callable]:
    """Jitted forward and forward+backward (grads w.r.t. params and input) of ``apply``."""
    fwd = jax.jit(apply)
    loss = lambda p, x: apply(p, x).astype(jnp.float32).sum()  # noqa: E731
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {
        "fwd": lambda: jax.block_until_ready(fwd(params, x)),
        "fwd_bwd": lambda: jax.block_until_ready(fwd_bwd(params, x)),
    }


def _build_flax_lstm(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None
) -> dict[str, Callable]:
    cfg = fl.LSTMConfig(
        shape.in_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional
    )
    dtype = jnp.dtype(shape.dtype)
    params = fl.init_params(jax.random.key(0), cfg, dtype=dtype)
    xj = jnp.asarray(x, dtype)

    return _jax_fns(lambda p, x: fl.lstm(p, x, config=cfg, impl=impl)[0], params, xj)


def _build_flax_lstm_scan(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None
) -> dict[str, Callable]:
    scan = dataclasses.replace(fl.Implementation.of(impl), recurrence="scan")
    return _build_flax_lstm(shape, x, scan)


def _build_torch(shape: Shape, x: np.ndarray) -> dict[str, Callable]:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    dtype = getattr(torch, shape.dtype)
    m = torch.nn.LSTM(
        shape.in_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional
    ).to(dev, dtype)
    xt = torch.tensor(x, device=dev, dtype=dtype)
    xg = xt.clone().requires_grad_(True)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            m(xt)
        sync()

    def fwd_bwd():
        m.zero_grad(set_to_none=True)
        xg.grad = None
        m(xg)[0].float().sum().backward()
        sync()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def _build_flax_rnn(shape: Shape, x: np.ndarray) -> dict[str, Callable]:
    import flax.linen as nn

    dtype = jnp.dtype(shape.dtype)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):  # (T, N, F), time-major like the others
            for _ in range(shape.layers):

                def cell():
                    return nn.OptimizedLSTMCell(shape.hidden, dtype=dtype, param_dtype=dtype)

                layer = nn.RNN(cell(), time_major=True)
                if shape.bidirectional:
                    layer = nn.Bidirectional(
                        layer, nn.RNN(cell(), time_major=True), time_major=True
                    )
                x = layer(x)
            return x

    net = Net()
    xj = jnp.asarray(x, dtype)
    params = net.init(jax.random.key(0), xj)

    return _jax_fns(net.apply, params, xj)


def _build_jax_cudnn(shape: Shape, x: np.ndarray) -> dict[str, Callable]:
    from jax.experimental import rnn

    if shape.dtype != "float32":
        raise RuntimeError("jax.experimental.rnn supports float32 only")
    d = 2 if shape.bidirectional else 1
    w = rnn.init_lstm_weight(
        jax.random.key(0), shape.in_size, shape.hidden, shape.layers, shape.bidirectional
    )
    xb = jnp.asarray(np.swapaxes(x, 0, 1))  # batch-first
    h0 = jnp.zeros((d * shape.layers, shape.batch, shape.hidden))
    lengths = jnp.full((shape.batch,), shape.seq_len, jnp.int32)

    def f(w, x):
        return rnn.lstm(
            x,
            h0,
            h0,
            w,
            lengths,
            shape.in_size,
            shape.hidden,
            shape.layers,
            0.0,
            shape.bidirectional,
        )[0]

    return _jax_fns(f, w, xb)


BUILDERS = {
    "flax_lstm": _build_flax_lstm,
    "flax_lstm_scan": _build_flax_lstm_scan,
    "torch": _build_torch,
    "flax_rnn": _build_flax_rnn,
    "jax_cudnn": _build_jax_cudnn,
}


# torch's OpenMP threads (GNU libgomp) spin for about 300,000 rounds after each call before they
# sleep: several milliseconds on a core that the next library's call then lacks. In the
# interleaved loop that charged torch's idle threads to whichever call came next (B1 T256 H256:
# flax_lstm's forward 8.4 ms median after torch's calls, 5.3 ms with 3,000 rounds; torch's own
# times alone were no slower with 3,000 rounds than with the default on any --set cpu shape,
# two runs each).
_TORCH_SPIN = "3000"


def _limit_torch_spinning(libs: Sequence[str]) -> str:
    """Sets GOMP_SPINCOUNT for torch's OpenMP threads, where it still can; says what holds."""
    if "torch" not in libs or jax.default_backend() != "cpu":
        return "not applicable"
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        if var in os.environ:
            return f"{var}={os.environ[var]} (set by the caller)"
    if "torch" in sys.modules:
        return "libgomp default (torch was imported before the benchmark)"
    os.environ["GOMP_SPINCOUNT"] = _TORCH_SPIN  # read by libgomp when torch loads it
    return f"GOMP_SPINCOUNT={_TORCH_SPIN} (set by the benchmark)"


def _rotated(libs: Sequence[str], rep: int) -> list[str]:
    """The libraries in the order of repetition ``rep``: rotated by one each repetition.

    What a call leaves behind slows the call after it: JAX frees a computation's buffers
    (unmapping their pages) after it returns, and flax_lstm's B32 T128 H256 L2 forward took
    50 ms right after a Flax nn.RNN fwd+bwd call against 39 ms alone (the same 39-40 ms 10 ms
    later). In a fixed order one library always came after the same one."""
    k = rep % len(libs) if libs else 0
    return [*libs[k:], *libs[:k]]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "jax": jax.__version__, "flax_lstm": fl.__version__}
    for name in ("jaxlib", "flax", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def _precision_note() -> str:
    if jax.default_backend() == "gpu":
        return "float32 with TF32 allowed for every library (DESIGN.md's protocol)"
    return "full float32"


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else ""
    except OSError:
        pass
    return info


def reference_gemm_gflops(
    n: int | None = None, reps: int = 5, dtype: str = "float32"
) -> dict[str, float]:
    """Rate of one large ``n×n`` GEMM in JAX on the default device (operands in ``dtype``,
    float32 result): the yardstick for the GFLOP/s column (n defaults to 2048 on a CPU and
    8192 on an accelerator)."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    for _ in range(2):
        f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"n": float(n), "gflops": 2 * n**3 / statistics.median(times) / 1e9}


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
) -> dict[str, Any]:
    """Benchmark ``libs`` on ``shapes``; returns the JSON-able result (see module docstring).

    ``impl`` is flax_lstm's `flax_lstm.Implementation` (its ``recurrence`` is "scan" for
    ``flax_lstm_scan``)."""
    for name, given, known in (("modes", modes, MODES), ("libs", libs, LIBS)):
        if not given or set(given) - set(known):
            raise ValueError(f"{name} must be a non-empty subset of {known}, got {tuple(given)}")
    torch_threads = _limit_torch_spinning(libs)
    results = []
    for shape in shapes:
        x = (
            np.random.default_rng(0)
            .standard_normal((shape.seq_len, shape.batch, shape.in_size))
            .astype(np.float32)
        )
        fns, notes = {}, {}
        for lib in libs:
            if lib == "jax_cudnn" and jax.default_backend() != "gpu":
                notes[lib] = "skipped: needs a CUDA GPU"
                continue
            if lib == "flax_lstm_scan" and (
                jax.default_backend() != "cpu" or not fl.kernel.available(shape.dtype)
            ):
                notes[lib] = "skipped: flax_lstm runs the scan path here (no CPU kernel)"
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
        times: dict[str, dict[str, list[float]]] = {lib: {m: [] for m in modes} for lib in fns}
        order = list(fns)
        for rep in range(reps):  # interleaved: every library sees the same machine state
            # ... and follows every other library equally often: a call slows the next one
            # down by what it leaves running (see _rotated).
            for mode in modes:
                for lib in _rotated(order, rep):
                    t0 = time.perf_counter()
                    fns[lib][mode]()
                    times[lib][mode].append((time.perf_counter() - t0) * 1e3)
        ms = {lib: {m: statistics.median(v) for m, v in t.items()} for lib, t in times.items()}
        entry: dict[str, Any] = {
            "shape": dataclasses.asdict(shape),
            "label": shape.label(),
            "ms": ms,
            "ms_min": {lib: {m: min(v) for m, v in t.items()} for lib, t in times.items()},
            "notes": notes,
        }
        if "flax_lstm" in ms:
            ours = ms["flax_lstm"]
            entry["speedup_vs"] = {
                lib: {m: v[m] / ours[m] for m in modes}
                for lib, v in ms.items()
                if lib != "flax_lstm"
            }
            factor = {"fwd": 1.0, "fwd_bwd": 3.0}
            entry["flax_lstm_gflops"] = {
                m: shape.flops() * factor[m] / ours[m] / 1e6 for m in modes
            }
        results.append(entry)
        log(format_table([entry], modes, header=False))
    _compare_with_float32(results)
    refs: dict[str, Any] = {}
    if reference_gemm:  # float32 always (the historical yardstick), and every dtype that ran
        for dtype in ["float32", *sorted({s.dtype for s in shapes} - {"float32"})]:
            refs[dtype] = reference_gemm_gflops(dtype=dtype)
    return {
        "machine": _machine(),
        "versions": _versions(),
        "reps": reps,
        "warmup": warmup,
        "flax_lstm_impl": dataclasses.asdict(fl.Implementation.of(impl)),
        "matmul": _precision_note(),
        "torch_openmp_spin": torch_threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "reference_gemm": refs.get("float32"),
        "reference_gemm_by_dtype": refs,
        "results": results,
    }


def _compare_with_float32(results: list[dict]) -> None:
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
    results: Sequence[dict], modes: Sequence[str] = ("fwd", "fwd_bwd"), header: bool = True
) -> str:
    """Markdown table: ms per library and mode, and peer/flax_lstm ratios."""
    lines = []
    if header:
        lines.append(
            "| shape | mode | flax_lstm ms | GFLOP/s | scan path ms | torch ms | "
            "flax nn.RNN ms | jax cuDNN ms | vs scan path | vs torch | vs flax nn.RNN | "
            "vs jax cuDNN |"
        )
        lines.append("|" + "---|" * 12)
    for e in results:
        for m in modes:
            ms = e["ms"]

            def cell(lib, ms=ms, m=m):
                return f"{ms[lib][m]:.2f}" if lib in ms else "–"

            def ratio(lib, e=e, m=m):
                r = e.get("speedup_vs", {}).get(lib)
                return f"{r[m]:.2f}x" if r else "–"

            gf = e.get("flax_lstm_gflops", {}).get(m)
            lines.append(
                f"| {e['label']} | {m} | {cell('flax_lstm')} | "
                f"{'' if gf is None else f'{gf:.0f}'} | {cell('flax_lstm_scan')} | "
                f"{cell('torch')} | {cell('flax_rnn')} | {cell('jax_cudnn')} | "
                f"{ratio('flax_lstm_scan')} | {ratio('torch')} | {ratio('flax_rnn')} | "
                f"{ratio('jax_cudnn')} |"
            )
    return "\n".join(lines)


def _parse_shape(text: str) -> Shape:
    """``B,T,H[,L][,bi][,in=I][,bf16]``, e.g. ``32,128,256,2,bi``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts if p.isdigit()]
        b, t, h = nums[:3]
        layers = nums[3] if len(nums) > 3 else 1
        in_size = next((int(p[3:]) for p in parts if p.startswith("in=")), None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--shape must look like B,T,H[,L][,bi][,in=I][,bf16]: {text!r}"
        ) from e
    dtype = "bfloat16" if any(p in ("bf16", "bfloat16") for p in parts) else "float32"
    return Shape(b, t, h, layers, "bi" in parts, in_size, dtype)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``flax-lstm bench [--set cpu|gpu] [--shape ...] [--json PATH]``."""
    ap = argparse.ArgumentParser(prog="flax-lstm bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--set",
        choices=("cpu", "gpu"),
        default=None,
        help="shape set (default: gpu on a GPU, else cpu)",
    )
    ap.add_argument(
        "--shape",
        action="append",
        type=_parse_shape,
        default=[],
        help="custom shape B,T,H[,L][,bi][,in=I][,bf16]; repeatable; replaces --set",
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma list from ('float32', 'bfloat16'): run every shape in each "
        "(default: each shape's own dtype)",
    )
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list from {LIBS}")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="fwd,fwd_bwd", help=f"comma list from {MODES}")
    ap.add_argument("--json", default="bench.json", help="where to write the JSON result")
    ap.add_argument("--unroll", type=int, default=None, help="flax_lstm scan unroll")
    ap.add_argument(
        "--remat", action="store_true", help="flax_lstm with Implementation(backward='remat')"
    )
    ap.add_argument(
        "--autodiff",
        action="store_true",
        help="flax_lstm with Implementation(backward='autodiff') (plain autodiff of the scan)",
    )
    args = ap.parse_args(argv)
    libs = tuple(x for x in args.libs.split(",") if x)
    unknown = set(libs) - set(LIBS)
    if unknown:
        ap.error(f"--libs: unknown {sorted(unknown)}; choose from {LIBS}")
    if args.shape:
        shapes = tuple(args.shape)
    else:
        which = args.set or ("gpu" if jax.default_backend() == "gpu" else "cpu")
        shapes = GPU_SET if which == "gpu" else CPU_SET
    if args.dtypes is not None:
        dtypes = tuple(d for d in args.dtypes.split(",") if d)
        if not dtypes or set(dtypes) - {"float32", "bfloat16"}:
            ap.error(f"--dtypes: choose from float32, bfloat16; got {args.dtypes!r}")
        shapes = tuple(dataclasses.replace(s, dtype=d) for s in shapes for d in dtypes)
    modes = tuple(m for m in args.modes.split(",") if m)
    bad_modes = set(modes) - set(MODES)
    if bad_modes or not modes:
        ap.error(f"--modes: unknown {sorted(bad_modes)}; choose from {MODES}")
    if args.remat and args.autodiff:
        ap.error("--remat and --autodiff: choose one backward")
    backward = "remat" if args.remat else "autodiff" if args.autodiff else "custom"
    impl = fl.Implementation(backward=backward, unroll=args.unroll)
    result = run(
        shapes,
        libs=libs,
        impl=impl,
        reps=args.reps,
        warmup=args.warmup,
        modes=modes,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(format_table(result["results"], modes))
    for dtype, ref in result["reference_gemm_by_dtype"].items():
        rates = [
            g
            for e in result["results"]
            if e["shape"]["dtype"] == dtype
            for g in e.get("flax_lstm_gflops", {}).values()
        ]
        if ref and rates:
            print(
                f"large-GEMM reference (jax {dtype} {int(ref['n'])}x{int(ref['n'])}): "
                f"{ref['gflops']:.0f} GFLOP/s; flax_lstm reached "
                f"{min(rates) / ref['gflops']:.0%}-{max(rates) / ref['gflops']:.0%} of it"
            )
    for e in result["results"]:
        for lib, by_mode in e.get("vs_float32", {}).items():
            if lib in ("torch", "flax_lstm"):
                ratios = ", ".join(f"{m} {r:.2f}x" for m, r in by_mode.items())
                print(f"{e['label']}: flax_lstm bfloat16 against {lib} float32: {ratios}")
    for e in result["results"]:
        for lib, note in e["notes"].items():
            print(f"note: {e['label']}: {lib} {note}")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    machine = result["machine"]
    where = machine["jax_devices"] if machine["jax_backend"] != "cpu" else machine.get("cpu_model")
    print(f"wrote {args.json} ({where}, {machine['cpu_count']} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

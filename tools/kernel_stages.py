"""Where a layer's time goes: each of the CPU kernel's calls timed alone, against the best GEMM.

For one layer of each shape (every distinct input size of its layers: the first layer's, and
D·H for the layers above it), times the kernel's FFI calls that a float32 fwd+bwd makes
(`flax_lstm._kernel.ffi`): the forward as inference runs it and as training runs it (saving
the gates and every cell state), the backward (the gate gradients, one GEMM with W_hh a step;
timed with the training forward, as training runs the two, and given as the pair's time less
the forward's: alone it would time XLA's copy of the gates it writes over), the weight
gradients and the input gradient; beside them XLA's GEMM for the same weight
gradients (what ``Implementation(weight_grads="xla")`` computes them with, here on a
ready-made ``[x, h_prev]``), and the whole layer's fwd+bwd through flax_lstm and through
torch.nn.LSTM, as ``flax-lstm bench`` builds them. All interleaved as the benchmark times
(`flax_lstm._timing`), then the yardstick (`flax_lstm.bench.yardstick.best_gemm`). Each
row's GFLOP/s count that call's GEMM work; its share of the yardstick says which stage runs
furthest below the machine's best GEMM (docs/performance/design.md, "torch's share of the
best GEMM"). flax_lstm's fwd+bwd against the sum of its stages shows what runs outside them.

Not a test: from the repository root, ``PYTHONPATH=$PWD python tools/kernel_stages.py
--shape 64,64,512,2 --shape 8,128,256 [--reps 15] [--json out.json] [--gemm-size N]``
(shapes as ``flax-lstm bench --shape``; float32 only).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flax_lstm import kernel
from flax_lstm._kernel import ffi
from flax_lstm._timing import time_interleaved, warm_up
from flax_lstm.bench.libraries import BUILDERS, limit_torch_spinning
from flax_lstm.bench.machine import machine_info, write_record
from flax_lstm.bench.report import machine_line
from flax_lstm.bench.shapes import Shape, parse_shape
from flax_lstm.bench.yardstick import best_gemm

# The kernel's calls in a training step, which `measure` sums.
TRAINING_STAGES = ("forward_train", "backward", "weight_grads", "input_grad")


def layers(shape: Shape) -> list[Shape]:
    """One-layer shapes for each distinct input size of ``shape``'s layers."""
    d = 2 if shape.bidirectional else 1
    sizes = [shape.in_size] + ([d * shape.hidden] if shape.layers > 1 else [])
    one = dataclasses.replace(shape, layers=1, lengths=None, dtype="float32")
    return [dataclasses.replace(one, input_size=i) for i in dict.fromkeys(sizes)]


def stage_calls(layer: Shape) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """The kernel's calls of one layer's fwd+bwd, and XLA's weight-gradient GEMM, each as a
    blocking call on fixed inputs; and the GEMM FLOPs of each."""
    t, n, h, i = layer.seq_len, layer.batch, layer.hidden, layer.in_size
    d = 2 if layer.bidirectional else 1
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (t, d, n, i))
    w_ih = jax.random.normal(k[1], (d, 4 * h, i)) / np.sqrt(h)
    w_hh = jax.random.normal(k[2], (d, 4 * h, h)) / np.sqrt(h)
    b, zeros = jnp.zeros((d, 4 * h)), jnp.zeros((d, n, h))

    def forward(x, w_ih, w_hh, train):
        return ffi.forward(x, w_ih, b, w_hh, zeros, zeros, None, save_acts=train, all_c=train)

    infer = jax.jit(lambda *a: forward(*a, False))
    train = jax.jit(lambda *a: forward(*a, True))
    hs, _, _ = train(x, w_ih, w_hh)
    dhs = jax.random.normal(k[3], hs.shape)

    # The backward writes dz over the saved gates (float32). Given them as an argument, XLA
    # would copy them first; in training it hands over the forward's buffer. So the backward
    # is timed with the forward that saves them, as training runs the pair, and `measure`
    # takes the forward's time off.
    def forward_backward(x, w_ih, w_hh, dhs):
        _, cs, acts = forward(x, w_ih, w_hh, True)
        return ffi.backward(dhs, zeros, acts, cs, zeros, w_hh, None, inputs=w_ih.shape[-1])

    forward_backward = jax.jit(forward_backward)
    dz = forward_backward(x, w_ih, w_hh, dhs)[0]
    weight_grads = jax.jit(lambda dz, x, hs: ffi.weight_grads(dz, x, hs, zeros, None))
    input_grad = jax.jit(lambda dz, w_ih: ffi.input_grad(dz, w_ih, None))
    h_prev = jnp.concatenate([zeros[None], hs[:-1]])
    xh = jnp.concatenate([x, h_prev], axis=-1)  # [x, h_prev], as XLA's path builds it
    xla_weight_grads = jax.jit(lambda dz, xh: jnp.einsum("tdng,tdnf->dgf", dz, xh))

    def blocking(fn, *args):
        return lambda: jax.block_until_ready(fn(*args))

    calls = {
        "forward": blocking(infer, x, w_ih, w_hh),
        "forward_train": blocking(train, x, w_ih, w_hh),
        "forward_backward": blocking(forward_backward, x, w_ih, w_hh, dhs),
        "weight_grads": blocking(weight_grads, dz, x, hs),
        "input_grad": blocking(input_grad, dz, w_ih),
        "xla_weight_grads": blocking(xla_weight_grads, dz, xh),
    }
    rows = 2.0 * t * d * n * 4 * h  # 2 · (the GEMMs' rows) · (4H columns)
    flops = {
        "forward": rows * (i + h),
        "forward_train": rows * (i + h),
        "forward_backward": rows * (i + 2 * h),
        "weight_grads": rows * (i + h),
        "input_grad": rows * i,
        "xla_weight_grads": rows * (i + h),
    }
    return calls, flops


def measure(layer: Shape, reps: int) -> dict:
    """One layer's record: per call, its milliseconds (median, fastest) and GEMM FLOPs."""
    calls, flops = stage_calls(layer)
    x = np.random.default_rng(0).standard_normal((layer.seq_len, layer.batch, layer.in_size))
    x = x.astype(np.float32)
    for lib in ("flax_lstm", "torch"):
        calls[f"{lib}_fwd_bwd"] = BUILDERS[lib](layer, x)["fwd_bwd"]
        flops[f"{lib}_fwd_bwd"] = 3 * layer.flops()
    by_call = {name: {"run": call} for name, call in calls.items()}
    warm_up(by_call, 3)
    times = time_interleaved(by_call, ("run",), reps)
    record: dict = {"shape": dataclasses.asdict(layer), "label": layer.label(), "calls": {}}
    for name, ms in times.items():
        record["calls"][name] = {"ms": statistics.median(ms["run"]), "min_ms": min(ms["run"])}
    pair, train = record["calls"]["forward_backward"], record["calls"]["forward_train"]
    record["calls"]["backward"] = {key: pair[key] - train[key] for key in ("ms", "min_ms")}
    flops["backward"] = flops["forward_backward"] - flops["forward_train"]
    for name, c in record["calls"].items():  # (a difference within noise may not be positive)
        c["gflops"] = flops[name] / c["ms"] / 1e6 if c["ms"] > 0 else None
    record["stages_ms"] = sum(record["calls"][s]["ms"] for s in TRAINING_STAGES)
    return record


def table(record: dict, yardstick: float) -> str:
    """One layer's calls as a markdown table, with each one's share of the yardstick."""
    lines = [
        f"{record['label']}: the training stages sum to {record['stages_ms']:.2f} ms",
        "| call | ms | fastest ms | GFLOP/s | of best GEMM |",
        "|---|---|---|---|---|",
    ]
    for name, c in record["calls"].items():
        rate = (
            "– | –" if c["gflops"] is None else f"{c['gflops']:.0f} | {c['gflops'] / yardstick:.0%}"
        )
        lines.append(f"| {name} | {c['ms']:.2f} | {c['min_ms']:.2f} | {rate} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=parse_shape, action="append", required=True, help="B,T,H[,L][,bi][,in=I]"
    )
    parser.add_argument("--reps", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--json", help="write the records, the yardstick and the machine here")
    parser.add_argument(
        "--gemm-size", type=int, help="N of the yardstick's N×N GEMM (default: the benchmark's)"
    )
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be positive, got {args.reps}")
    if not kernel.available("float32"):
        parser.error(f"the CPU kernel is not available: {kernel.build_error()}")
    # Before torch loads: its idle OpenMP threads would spin on the core the next call needs.
    spin = limit_torch_spinning(["torch"])
    print(machine_line(machine_info()), f"torch's OpenMP threads: {spin}", sep="\n", flush=True)
    records = [measure(layer, args.reps) for shape in args.shape for layer in layers(shape)]
    ref = best_gemm("float32", args.gemm_size)
    for record in records:
        record["yardstick_gflops"] = ref["gflops"]
        print(table(record, ref["gflops"]), flush=True)
    n = int(ref["n"])
    print(f"yardstick: the best float32 {n}x{n} GEMM, {ref['gflops']:.0f} GFLOP/s ({ref['best']})")
    write_record(args.json, args.reps, records)


if __name__ == "__main__":
    main()

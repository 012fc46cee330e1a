"""Ragged-batch timing (issue 17): flax_lstm with and without seq_lengths beside torch.

B32 T512 I64 H256, one layer, lengths uniform in [16, 512]; forward and fwd+bwd (the sum of
the output as loss), interleaved rounds; the speedups of medians and of minima (the least
disturbed round, steadier on a shared machine), and the largest differences from torch's packed
LSTM. Not a test: run from the repository root,
``PYTHONPATH=$PWD python tools/ragged_timing.py [--reps 7] [--bidirectional]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import flax_lstm as fl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args()
    B, T, I, H = a.batch, a.seq_len, a.input, a.hidden  # noqa: E741
    rng = np.random.default_rng(0)
    lengths = rng.integers(a.min_len, T + 1, size=B)
    x_np = rng.standard_normal((T, B, I), dtype=np.float32)
    torch.manual_seed(0)
    tl = torch.nn.LSTM(I, H, bidirectional=a.bidirectional)
    cfg = fl.LSTMConfig(I, H, bidirectional=a.bidirectional)
    params = fl.from_torch_state_dict(tl.state_dict(), cfg)
    x = jnp.asarray(x_np)
    lens = jnp.asarray(lengths, jnp.int32)
    print(
        f"B{B} T{T} I{I} H{H} bidir={a.bidirectional} mean len {lengths.mean() / T:.2f} T, "
        f"torch threads {torch.get_num_threads()}, jax {jax.__version__}"
    )

    fwd_pad = jax.jit(lambda p, x: fl.lstm(p, x, config=cfg)[0])
    fwd_len = jax.jit(lambda p, x, n: fl.lstm(p, x, config=cfg, seq_lengths=n)[0])
    g_pad = jax.jit(jax.grad(lambda p, x: fl.lstm(p, x, config=cfg)[0].sum(), argnums=(0, 1)))
    g_len = jax.jit(
        jax.grad(lambda p, x, n: fl.lstm(p, x, config=cfg, seq_lengths=n)[0].sum(), argnums=(0, 1))
    )
    xt = torch.from_numpy(x_np)
    lt = torch.from_numpy(lengths)

    def t_pad_fwd():
        with torch.no_grad():
            tl(xt)

    def t_pack_fwd():
        with torch.no_grad():
            tl(torch.nn.utils.rnn.pack_padded_sequence(xt, lt, enforce_sorted=False))

    def t_pad_bwd():
        xg = xt.clone().requires_grad_()
        tl.zero_grad()
        tl(xg)[0].sum().backward()

    def t_pack_bwd():
        xg = xt.clone().requires_grad_()
        tl.zero_grad()
        p = torch.nn.utils.rnn.pack_padded_sequence(xg, lt, enforce_sorted=False)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(tl(p)[0], total_length=T)
        out.sum().backward()

    runs = {
        "fl fwd padded": lambda: fwd_pad(params, x).block_until_ready(),
        "fl fwd seq_lengths": lambda: fwd_len(params, x, lens).block_until_ready(),
        "fl f+b padded": lambda: jax.block_until_ready(g_pad(params, x)),
        "fl f+b seq_lengths": lambda: jax.block_until_ready(g_len(params, x, lens)),
    }
    if a.torch:
        runs |= {
            "torch fwd padded": t_pad_fwd,
            "torch fwd packed": t_pack_fwd,
            "torch f+b padded": t_pad_bwd,
            "torch f+b packed": t_pack_bwd,
        }
    if a.torch:
        _parity(tl, xt, lt, T, fwd_len(params, x, lens), g_len(params, x, lens)[1])
    for f in runs.values():  # compile, warm up
        f()
        f()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.reps):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:22s} median {med[k]:8.1f} ms  min {min(v):8.1f}  max {max(v):8.1f}")
    for what, stat in (("medians", med), ("minima", {k: min(v) for k, v in times.items()})):
        fwd = stat["fl fwd padded"] / stat["fl fwd seq_lengths"]
        fb = stat["fl f+b padded"] / stat["fl f+b seq_lengths"]
        print(f"speedup seq_lengths vs padded ({what}): fwd {fwd:.2f}x  f+b {fb:.2f}x")


def _parity(tl, xt, lt, T, out, dx) -> None:
    """Largest differences from torch's packed LSTM: the output, and the input's gradient."""
    xg = xt.clone().requires_grad_()
    p = torch.nn.utils.rnn.pack_padded_sequence(xg, lt, enforce_sorted=False)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(tl(p)[0], total_length=T)
    ref.sum().backward()
    d_out = np.abs(np.asarray(out) - ref.detach().numpy()).max()
    d_dx = np.abs(np.asarray(dx) - xg.grad.numpy()).max()
    print(f"vs torch packed: output max |diff| {d_out:.1e}, input gradient max |diff| {d_dx:.1e}")


if __name__ == "__main__":
    main()

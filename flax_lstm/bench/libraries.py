"""The libraries the benchmark times: one builder per library, and where each one runs.

A builder takes a `Shape` and the time-major float32 input and returns ``{"fwd": fn,
"fwd_bwd": fn}``; each ``fn()`` runs one call and blocks until it is done.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl
from flax_lstm.bench.shapes import Shape

__all__ = ["BUILDERS", "LIBS", "MODES", "limit_torch_spinning", "skip_reason"]

# flax_lstm_scan: flax_lstm with impl="scan", its lax.scan path (CPU only: elsewhere that
# is what flax_lstm runs anyway); the ratio against it is the compiled kernel's gain.
LIBS = ("flax_lstm", "flax_lstm_scan", "torch", "flax_rnn", "jax_cudnn")
MODES = ("fwd", "fwd_bwd")


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


def skip_reason(lib: str, shape: Shape) -> str | None:
    """Why ``lib`` does not run ``shape`` on this backend (a note for the JSON), or None."""
    if lib == "jax_cudnn" and jax.default_backend() != "gpu":
        return "skipped: needs a CUDA GPU"
    if lib == "flax_lstm_scan" and (
        jax.default_backend() != "cpu" or not fl.kernel.available(shape.dtype)
    ):
        return "skipped: flax_lstm runs the scan path here (no CPU kernel)"
    return None


# torch's OpenMP threads (GNU libgomp) spin for about 300,000 rounds after each call before they
# sleep: several milliseconds on a core that the next library's call then lacks. In the
# interleaved loop that charged torch's idle threads to whichever call came next (B1 T256 H256:
# flax_lstm's forward 8.4 ms median after torch's calls, 5.3 ms with 3,000 rounds; torch's own
# times alone were no slower with 3,000 rounds than with the default on any --set cpu shape,
# two runs each).
_TORCH_SPIN = "3000"


def limit_torch_spinning(libs: Sequence[str]) -> str:
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

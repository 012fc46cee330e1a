"""The libraries the benchmark times: one builder per library, and where each one runs.

A builder takes a `Shape` and the time-major float32 input and returns ``{"fwd": fn,
"fwd_bwd": fn}``; each ``fn()`` runs one call and blocks until it is done.

A ragged shape (``Shape.lengths``) gives its sequence lengths to every library that takes
them: flax_lstm (``seq_lengths``), its scan path, Flax nn.RNN (``seq_lengths``) and
jax.experimental.rnn. Two libraries run only there (`RAGGED_LIBS`): ``flax_lstm_padded``, the
same flax_lstm call without ``seq_lengths`` (every step of every sequence computed: the ratio
against it is what the lengths save), and ``torch_packed``, torch.nn.LSTM on a
``pack_padded_sequence(..., enforce_sorted=False)`` of the batch, unpacked again to (T, N, H)
with ``pad_packed_sequence``; ``torch`` stays the padded call.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl
from flax_lstm._timing import MODES, jitted_calls
from flax_lstm.bench.machine import torch_device, torch_waiter
from flax_lstm.bench.shapes import Shape

__all__ = [
    "BUILDERS",
    "LIBS",
    "MODES",
    "RAGGED_LIBS",
    "flax_lstm_plan",
    "limit_torch_spinning",
    "runs_on",
    "skip_reason",
]

# flax_lstm_scan: flax_lstm with impl="scan", its lax.scan path (CPU only: elsewhere that
# is what flax_lstm runs anyway); the ratio against it is the compiled kernel's gain.
# flax_lstm_kernel: flax_lstm with impl="kernel", only where its default runs the scan on CPU
# in a mode (a measured verdict, or the size rule): the ratio against it checks that choice.
# flax_lstm_padded and torch_packed: ragged shapes only (RAGGED_LIBS, see the docstring).
LIBS = (
    "flax_lstm",
    "flax_lstm_scan",
    "flax_lstm_kernel",
    "torch",
    "flax_rnn",
    "jax_cudnn",
    "flax_lstm_padded",
    "torch_packed",
)
RAGGED_LIBS = ("flax_lstm_padded", "torch_packed")


def runs_on(lib: str, shape: Shape) -> bool:
    """Whether ``lib`` belongs in the comparison of ``shape`` at all: `RAGGED_LIBS` only on a
    ragged shape (elsewhere they are left out without a note)."""
    return lib not in RAGGED_LIBS or shape.lengths is not None


def _flax_lstm_call(
    shape: Shape, x: np.ndarray, padded: bool = False
) -> tuple[fl.LSTMConfig, Any, jax.Array, jax.Array | None]:
    """flax_lstm's config, parameters, input and sequence lengths (None: padded) on ``shape``."""
    cfg = fl.LSTMConfig(
        shape.in_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional
    )
    dtype = jnp.dtype(shape.dtype)
    params = fl.init_params(jax.random.key(0), cfg, dtype=dtype)
    lengths = None if padded else shape.seq_lengths()
    return cfg, params, jnp.asarray(x, dtype), None if lengths is None else jnp.asarray(lengths)


def flax_lstm_plan(shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None) -> fl.Plan:
    """The `flax_lstm.Plan` of flax_lstm's call on ``shape``: the path it runs, and why."""
    cfg, params, xj, lengths = _flax_lstm_call(shape, x)
    return fl.lstm_plan(params, xj, config=cfg, seq_lengths=lengths, impl=impl)


def _build_flax_lstm(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None, padded: bool = False
) -> dict[str, Callable]:
    cfg, params, xj, lengths = _flax_lstm_call(shape, x, padded)
    if lengths is None:
        return jitted_calls(lambda p, x: fl.lstm(p, x, config=cfg, impl=impl)[0], params, xj)

    def apply(p, x, n):
        return fl.lstm(p, x, config=cfg, seq_lengths=n, impl=impl)[0]

    return jitted_calls(apply, params, xj, lengths)


def _build_flax_lstm_scan(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None
) -> dict[str, Callable]:
    scan = dataclasses.replace(fl.Implementation.of(impl), recurrence="scan")
    return _build_flax_lstm(shape, x, scan)


def _build_flax_lstm_kernel(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None
) -> dict[str, Callable]:
    kernel = dataclasses.replace(fl.Implementation.of(impl), recurrence="kernel")
    return _build_flax_lstm(shape, x, kernel)


def _build_flax_lstm_padded(
    shape: Shape, x: np.ndarray, impl: fl.Implementation | None = None
) -> dict[str, Callable]:
    return _build_flax_lstm(shape, x, impl, padded=True)


def _build_torch(shape: Shape, x: np.ndarray, packed: bool = False) -> dict[str, Callable]:
    import torch

    dev = torch_device() or "cpu"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    dtype = getattr(torch, shape.dtype)
    m = torch.nn.LSTM(
        shape.in_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional
    ).to(dev, dtype)
    xt = torch.tensor(x, device=dev, dtype=dtype)
    xg = xt.clone().requires_grad_(True)
    sync = torch_waiter(dev)
    lengths = None  # set only when packed: on CPU, as torch wants
    if packed:
        given = shape.seq_lengths()
        if given is None:
            raise ValueError("torch_packed needs a ragged shape (Shape.lengths)")
        lengths = torch.from_numpy(given)
    rnn_utils = torch.nn.utils.rnn

    def run(x):  # padded, or packed and unpacked again to (T, N, H)
        if lengths is None:
            return m(x)[0]
        out = m(rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
        return rnn_utils.pad_packed_sequence(out, total_length=shape.seq_len)[0]

    def fwd():
        with torch.no_grad():
            run(xt)
        sync()

    def fwd_bwd():
        m.zero_grad(set_to_none=True)
        xg.grad = None
        run(xg).float().sum().backward()
        sync()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def _build_torch_packed(shape: Shape, x: np.ndarray) -> dict[str, Callable]:
    return _build_torch(shape, x, packed=True)


def _build_flax_rnn(shape: Shape, x: np.ndarray) -> dict[str, Callable]:
    import flax.linen as nn

    dtype = jnp.dtype(shape.dtype)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, seq_lengths=None):  # (T, N, F), time-major like the others
            for _ in range(shape.layers):

                def cell():
                    return nn.OptimizedLSTMCell(shape.hidden, dtype=dtype, param_dtype=dtype)

                layer = nn.RNN(cell(), time_major=True)
                if shape.bidirectional:
                    layer = nn.Bidirectional(
                        layer, nn.RNN(cell(), time_major=True), time_major=True
                    )
                # flax types the result as output | (carry, output) whatever return_carry
                # says; without return_carry it is the output alone.
                x = cast(jax.Array, layer(x, seq_lengths=seq_lengths))
            return x

    net = Net()
    xj = jnp.asarray(x, dtype)
    params = net.init(jax.random.key(0), xj)
    lengths = shape.seq_lengths()
    extra = () if lengths is None else (jnp.asarray(lengths),)
    return jitted_calls(net.apply, params, xj, *extra)


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
    given = shape.seq_lengths()
    full = np.full((shape.batch,), shape.seq_len, np.int32)
    lengths = jnp.asarray(full if given is None else given)

    def f(w, x):
        # jax wraps lstm in functools.partial(custom_vjp, ...), which loses its return
        # type (y, h_n, c_n).
        return rnn.lstm(  # pyright: ignore[reportIndexIssue]
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

    return jitted_calls(f, w, xb)


BUILDERS = {
    "flax_lstm": _build_flax_lstm,
    "flax_lstm_scan": _build_flax_lstm_scan,
    "flax_lstm_kernel": _build_flax_lstm_kernel,
    "torch": _build_torch,
    "flax_rnn": _build_flax_rnn,
    "jax_cudnn": _build_jax_cudnn,
    "flax_lstm_padded": _build_flax_lstm_padded,
    "torch_packed": _build_torch_packed,
}


def skip_reason(lib: str, shape: Shape, plan: fl.Plan | None = None) -> str | None:
    """Why ``lib`` does not run ``shape`` on this backend (a note for the JSON), or None.
    ``plan`` is flax_lstm's default plan of the call, which ``flax_lstm_kernel`` needs."""
    if lib == "jax_cudnn" and jax.default_backend() != "gpu":
        return "skipped: needs a CUDA GPU"
    no_kernel = jax.default_backend() != "cpu" or not fl.kernel.available(shape.dtype)
    if lib in ("flax_lstm_scan", "flax_lstm_kernel") and no_kernel:
        return "skipped: flax_lstm runs the scan path here (no CPU kernel)"
    if lib != "flax_lstm_kernel":
        return None
    if plan is None:
        return "skipped: flax_lstm's default has no plan here"
    if plan.recurrence == plan.grad_recurrence == "kernel":
        return "skipped: flax_lstm's default runs the kernel here"
    return None


# torch's OpenMP threads (GNU libgomp) spin for a while after each call before they sleep,
# holding a core that the next library's call then lacks: in the interleaved loop that charged
# torch's idle threads to whichever call came next. 3,000 rounds left torch's own times as they
# were (measured in docs/performance/design.md, "How the benchmark runs on CPU").
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

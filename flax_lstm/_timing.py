"""How flax_lstm times a call against another: the one loop of the benchmark, the calibration
and the measuring tools.

A timed call is ``{"fwd": fn, "fwd_bwd": fn}`` (`jitted_calls`): ``fn()`` runs one jitted call,
forward or forward+backward (gradients w.r.t. the parameters and the input), and blocks until
it is done. `time_interleaved` times several such calls repetition by repetition, each
repetition in an order of a balanced cycle (`interleaved_order`), so that every call sees the
same machine state and follows every other one equally often.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

MODES = ("fwd", "fwd_bwd")

K = TypeVar("K", bound=Hashable)  # what names a call: a library, a path


def jitted_calls(apply: Callable, params: Any, x: jax.Array, *extra: Any) -> dict[str, Callable]:
    """Jitted forward and forward+backward (grads w.r.t. ``params`` and ``x``, of the float32
    sum of the output) of ``apply(params, x, *extra)``, as calls that block until done."""
    fwd = jax.jit(apply)
    loss = lambda p, x, *e: apply(p, x, *e).astype(jnp.float32).sum()  # noqa: E731
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {
        "fwd": lambda: jax.block_until_ready(fwd(params, x, *extra)),
        "fwd_bwd": lambda: jax.block_until_ready(fwd_bwd(params, x, *extra)),
    }


def warm_up(calls: Mapping[Any, Mapping[str, Callable[[], Any]]], times: int) -> None:
    """Runs every call in every mode ``times`` times (the first compiles it)."""
    for by_mode in calls.values():
        for call in by_mode.values():
            for _ in range(times):
                call()


def time_interleaved(
    calls: Mapping[K, Mapping[str, Callable[[], Any]]], modes: Sequence[str], reps: int
) -> dict[K, dict[str, list[float]]]:
    """Milliseconds of every call in every mode, ``reps`` repetitions each, interleaved: within
    a repetition each mode runs every call once, in the order `interleaved_order` gives. Warm
    the calls up (compile them) first."""
    times: dict[K, dict[str, list[float]]] = {key: {m: [] for m in modes} for key in calls}
    order = list(calls)
    for rep in range(reps):
        for mode in modes:
            for key in interleaved_order(order, rep):
                start = time.perf_counter()
                calls[key][mode]()
                times[key][mode].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_order(order: Sequence[K], rep: int) -> list[K]:
    """The calls in the order of repetition ``rep``: row ``rep`` of a cycle of orders in
    which each call follows every other one equally often (a Williams design: ``n`` orders
    for ``n`` calls, ``2n`` for an odd ``n``; two calls alternate).

    What a call leaves behind slows the call after it: JAX frees a computation's buffers
    (unmapping their pages) after it returns, and torch's OpenMP threads spin on. In a fixed
    order one library always came after the same one and paid for it (measured in
    docs/performance/design.md, "How the benchmark runs on CPU"). Rotating the order by one
    each repetition kept that for three calls or more (a rotation keeps who follows whom):
    flax_lstm ran after torch in every repetition of the plan sweeps ("Who follows whom")."""
    if not order:
        return []
    rows = _balanced_orders(len(order))
    return [order[i] for i in rows[rep % len(rows)]]


def _balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)``, n ≥ 1, in which each ordered pair is adjacent equally often and
    each number takes each place equally often: the first 0, 1, n-1, 2, n-2, …, the others it
    shifted by 1 to n-1 (mod n), and for an odd n > 1 their reverses too."""
    first = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]
    rows = [[(c + shift) % n for c in first] for shift in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 == 1 and n > 1 else rows


def summary(
    times: Mapping[K, Mapping[str, Sequence[float]]], modes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """`time_interleaved`'s milliseconds as a measuring tool records them: per mode, each
    call's median (``"<call>_ms"``) and fastest repetition (``"<call>_min_ms"``)."""
    return {
        mode: {f"{key}_ms": statistics.median(times[key][mode]) for key in times}
        | {f"{key}_min_ms": min(times[key][mode]) for key in times}
        for mode in modes
    }

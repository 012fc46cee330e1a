"""The kernel's settings that depend on the machine rather than on the call (private).

One setting so far: ``small_batch``, the largest batch (sequences per device) that the kernel runs
with its small-batch scheme, where each step's GEMM has too few rows to pay for reading every
weight: the input projection is computed for blocks of 64 steps at once, and each thread keeps to
its own share of the hidden units so that their weights stay in its core's cache (the kernel's
``forward.h`` and ``work_items.h``). It is an attribute of the kernel's forward and backward calls,
read when a function is traced. ``FLAX_LSTM_SMALL_BATCH`` sets it (a non-negative integer; 0: no
batch takes the scheme).
"""

from __future__ import annotations

import os

# The default: measured on AMD Zen 4 and Zen 5 (docs/performance/design.md, "The CPU kernel").
# Larger values: faster at their best on Zen 3 and Zen 2, but slower by medians beside other work
# (the scheme's threads do not take over a late thread's units): "AMD Zen 2: the first runs".
SMALL_BATCH = 4
ENV = "FLAX_LSTM_SMALL_BATCH"


def small_batch() -> int:
    """The largest batch that takes the kernel's small-batch scheme: ``FLAX_LSTM_SMALL_BATCH``
    if set, else `SMALL_BATCH`; ValueError if the variable is not a non-negative integer."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return SMALL_BATCH
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{ENV} must be a non-negative integer (sequences), got {text!r}")
    return int(text)

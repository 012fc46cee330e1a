"""The kernel's settings that depend on the machine rather than on the call (private).

One setting so far: ``small_batch``, the largest batch (sequences per device) that the kernel runs
with its small-batch scheme, where each step's GEMM has too few rows to pay for reading every
weight: the input projection is computed for blocks of 64 steps at once, and each thread keeps to
its own share of the hidden units so that their weights stay in its core's cache (the kernel's
``forward.h`` and ``work_items.h``). It is an attribute of the kernel's forward and backward calls,
read when a function is traced.
"""

from __future__ import annotations

# The default: measured on AMD Zen 4 and Zen 5 (docs/performance/design.md, "The CPU kernel").
SMALL_BATCH = 4


def small_batch() -> int:
    """The largest batch that takes the kernel's small-batch scheme on this machine."""
    return SMALL_BATCH

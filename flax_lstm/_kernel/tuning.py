"""The kernel's settings that depend on the machine rather than on the call (private).

Each is an attribute of the kernel's calls (or decides one), read when a function is traced,
and set by an environment variable (a non-negative integer):

- ``small_batch`` (``FLAX_LSTM_SMALL_BATCH``; 0: no batch takes the scheme): the largest batch
  (sequences per device) that the kernel runs with its small-batch scheme, where each step's
  GEMM has too few rows to pay for reading every weight: the input projection is computed for
  blocks of 64 steps at once, and each thread keeps to its own share of the hidden units so
  that their weights stay in its core's cache (the kernel's ``forward.h`` and
  ``work_items.h``).
- ``min_split_work`` (``FLAX_LSTM_MIN_SPLIT_WORK``; 0: every call shares its units among the
  threads): the work a layer's calls need before their hidden units are shared among threads
  (`flax_lstm._kernel.ffi.num_threads`); a layer of less work runs each call on one thread a
  direction.
"""

from __future__ import annotations

import os

# The default: measured on AMD Zen 4 and Zen 5 (docs/performance/design.md, "The CPU kernel").
# Larger values: faster at their best on Zen 3 and Zen 2, but slower by medians beside other work
# (the scheme's threads do not take over a late thread's units): "AMD Zen 2: the first runs".
SMALL_BATCH = 4
SMALL_BATCH_ENV = "FLAX_LSTM_SMALL_BATCH"

# The default, in the units of `flax_lstm._kernel.ffi.call_work` (steps × sequences ×
# H·(H + I)/2, a layer's work a direction): below it, a second thread cost a call more (waking
# it, meeting it every step) than its share of the work saved. Measured on AMD Zen 4 only
# (docs/performance/design.md, "Small calls on one thread"); ``tools/small_calls.py --threads``
# measures where the second thread starts to pay on another CPU.
MIN_SPLIT_WORK = 1 << 19
MIN_SPLIT_WORK_ENV = "FLAX_LSTM_MIN_SPLIT_WORK"


def small_batch() -> int:
    """The largest batch that takes the kernel's small-batch scheme: ``FLAX_LSTM_SMALL_BATCH``
    if set, else `SMALL_BATCH`; ValueError if the variable is not a non-negative integer."""
    return _setting(SMALL_BATCH_ENV, SMALL_BATCH, "sequences")


def min_split_work() -> int:
    """The least work of a layer whose kernel calls share its hidden units among threads:
    ``FLAX_LSTM_MIN_SPLIT_WORK`` if set, else `MIN_SPLIT_WORK`; ValueError if the variable is
    not a non-negative integer."""
    return _setting(MIN_SPLIT_WORK_ENV, MIN_SPLIT_WORK, "steps × sequences × H·(H + I)/2")


def _setting(env: str, default: int, unit: str) -> int:
    """The non-negative integer that ``env`` holds, else ``default``."""
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{env} must be a non-negative integer ({unit}), got {text!r}")
    return int(text)

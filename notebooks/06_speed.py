# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Speed: flax_lstm against torch and Flax
#
# `flax_lstm.bench` times the same LSTM in several libraries, in one process, interleaved
# repetition by repetition after a warm-up (so every library sees the same machine state):
#
# - `flax_lstm`: `fl.lstm` under `jax.jit` (on CPU its compiled recurrence kernel);
# - `flax_lstm_scan`: the same with `impl="scan"`, its `lax.scan` path (CPU only), so the
#   kernel's gain is measured in the same run;
# - `torch`: `torch.nn.LSTM` (oneDNN on CPU, cuDNN on a GPU);
# - `flax_rnn`: Flax's own `nn.RNN` over `nn.OptimizedLSTMCell`;
# - `jax_cudnn`: `jax.experimental.rnn` (cuDNN; skipped without a CUDA GPU).
#
# Each is timed forward (inference) and forward + backward (gradients with respect to the input
# and every weight); the figures are medians in milliseconds.
#
# **This notebook runs tiny shapes with few repetitions, so that it finishes in seconds on a
# laptop or a CI machine; its numbers show how to run and read the benchmark, not how fast
# the libraries are.** The real figures come from the command line on an idle machine,
# `flax-lstm bench --set cpu` and `flax-lstm bench --set gpu`, and are the ones quoted in the
# README. `FLAX_LSTM_FULL=1` runs the CPU shape set here (minutes).

# %%
import os
import tempfile
from pathlib import Path

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from flax_lstm import bench

FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)

if FULL:
    SHAPES, REPS, WARMUP = bench.CPU_SET, 10, 2
else:
    SHAPES = (
        bench.Shape(batch=8, seq_len=32, hidden=64, layers=1, input_size=32),
        bench.Shape(batch=8, seq_len=32, hidden=64, layers=1, bidirectional=True, input_size=32),
    )
    REPS, WARMUP = 5, 1
LIBS = ("flax_lstm", "flax_lstm_scan", "torch", "flax_rnn", "jax_cudnn")

# torch's CPU thread pool. On a machine whose cores other processes are using, torch's default
# pool (one thread per core) can slow down by orders of magnitude: on a busy 2-core machine we
# saw torch's LSTM run 5 to 150 times slower with two threads than with one. The tiny default
# shapes gain nothing from threads, so the small run uses one; the full run keeps torch's
# default (as `flax-lstm bench` does) and belongs on an idle machine.
# FLAX_LSTM_TORCH_THREADS=n overrides both (0: torch's default).
TORCH_THREADS = int(os.environ.get("FLAX_LSTM_TORCH_THREADS", "0" if FULL else "1"))
if TORCH_THREADS > 0:
    torch.set_num_threads(TORCH_THREADS)


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


print(
    f"backend {jax.default_backend()}, torch threads {torch.get_num_threads()}, "
    f"{os.cpu_count()} CPUs; shapes: {[s.label() for s in SHAPES]}"
)

# %% [markdown]
# ## Run it
#
# `bench.run(shapes, libs=..., reps=..., warmup=...)` returns a JSON-able dict: the machine,
# the library versions, and for every shape the median milliseconds per library and mode,
# the ratio of every peer's time to flax_lstm's (above 1: flax_lstm is faster), and notes on
# any library that was skipped.

# %%
result = bench.run(SHAPES, libs=LIBS, reps=REPS, warmup=WARMUP)
print(result["machine"].get("cpu_model", ""), "|", result["versions"])
print(bench.format_table(result["results"]))
for entry in result["results"]:
    for lib, note in entry["notes"].items():
        print(f"note: {entry['label']}: {lib} {note}")

# %%
# What the benchmark promises: every library that ran has a positive median time for both
# modes, and the ratios are those times divided by flax_lstm's.
modes = ("fwd", "fwd_bwd")
for entry in result["results"]:
    ms = entry["ms"]
    assert {"flax_lstm", "torch", "flax_rnn"} <= set(ms), (entry["label"], entry["notes"])
    for lib, times in ms.items():
        assert all(np.isfinite(times[m]) and times[m] > 0 for m in modes), (lib, times)
    for lib, ratio in entry["speedup_vs"].items():
        for m in modes:
            assert np.isclose(ratio[m], ms[lib][m] / ms["flax_lstm"][m])
    if jax.default_backend() != "gpu":
        assert "jax_cudnn" in entry["notes"]  # skipped, with the reason recorded
    if jax.default_backend() != "cpu":
        assert "flax_lstm_scan" in entry["notes"]  # the scan is what flax_lstm runs there

# %% [markdown]
# ## The picture
#
# Milliseconds per call (log scale; lower is better), one group per shape and mode.

# %%
libs_run = [lib for lib in LIBS if any(lib in e["ms"] for e in result["results"])]
groups = [(e, m) for e in result["results"] for m in modes]
width = 0.8 / len(libs_run)
colors = {
    "flax_lstm": "tab:blue",
    "flax_lstm_scan": "tab:cyan",
    "torch": "tab:red",
    "flax_rnn": "tab:green",
    "jax_cudnn": "tab:purple",
}
fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)), 4))
for k, lib in enumerate(libs_run):
    values = [e["ms"].get(lib, {}).get(m, np.nan) for e, m in groups]
    positions = np.arange(len(groups)) + (k - (len(libs_run) - 1) / 2) * width
    bars = ax.bar(positions, values, width, label=lib, color=colors[lib])
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
ax.set_xticks(np.arange(len(groups)), [f"{e['label']}\n{m}" for e, m in groups], fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("median ms per call")
ax.set_title(f"{jax.default_backend()}: {REPS} repetitions after {WARMUP} warm-up")
ax.legend()
show(fig, "06_speed")

# %% [markdown]
# ## Reading the numbers
#
# For the record of this run: the ratio of each peer's median time to flax_lstm's (above 1:
# flax_lstm was faster here). At these sizes the per-call overhead of each framework weighs as
# much as the arithmetic, and a busy machine moves the numbers by tens of percent between
# runs; only the command-line benchmark on an idle machine measures the libraries.

# %%
for entry in result["results"]:
    ratios = ", ".join(
        f"{lib} {r['fwd']:.2f}x / {r['fwd_bwd']:.2f}x" for lib, r in entry["speedup_vs"].items()
    )
    print(f"{entry['label']:22s} fwd / fwd+bwd: {ratios}")

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
# # A character-level language model of Python's standard library
#
# Every Python installation carries a few megabytes of carefully written Python: the
# standard library's own source files. We train a character-level LSTM language model on a
# fixed set of them (read from disk, nothing downloaded) and test it on modules it never saw.
#
# The story is the classic recipe of Karpathy's char-rnn, done the JAX way:
#
# - **streaming / truncated backpropagation through time**: the corpus is cut into parallel
#   streams, read in chunks of a few dozen characters; the LSTM state `(h, c)` is carried from
#   one chunk to the next (so the model remembers beyond the chunk), while gradients stop at
#   the chunk boundary;
# - **bfloat16 compute**: the LSTM runs in `dtype=jnp.bfloat16` with float32 parameters and a
#   float32 cell state, as the library does by default for bfloat16;
# - **perplexity curves** on training and held-out text, and **sampled text**.

# %%
import os
import re
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import flax_lstm as fl

# Small by default (well under a minute of training). FLAX_LSTM_FULL=1: two layers of 512 for
# 3000 steps, about 0.6 s a step on two busy CPU cores (half an hour); a GPU is far quicker.
FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)

HIDDEN = 512 if FULL else 256
LAYERS = 2 if FULL else 1
EMBED = 32
STREAMS = 32  # parallel streams (the batch)
CHUNK = 64  # characters per truncated-BPTT chunk
STEPS = 3000 if FULL else 250
EVAL_EVERY = 500 if FULL else 50
DTYPE = jnp.bfloat16


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


print(f"full-size run: {FULL} (hidden {HIDDEN}, {LAYERS} layer(s), {STEPS} steps)")

# %% [markdown]
# ## The text
#
# A fixed list of standard-library modules, read from the directory that holds `os.py`:
# fifteen for training, five others held out for validation. The selection is deterministic;
# the exact text depends on the Python version, which is printed.

# %%
STDLIB = Path(os.__file__).parent
TRAIN_MODULES = [
    "argparse", "calendar", "contextlib", "dataclasses", "fractions", "functools", "gettext",
    "heapq", "pprint", "queue", "random", "shlex", "statistics", "string", "textwrap",
]  # fmt: skip
VALID_MODULES = ["colorsys", "glob", "graphlib", "reprlib", "sched"]


def read_modules(names):
    return "\n".join((STDLIB / f"{name}.py").read_text(encoding="utf-8") for name in names)


train_text, valid_text = read_modules(TRAIN_MODULES), read_modules(VALID_MODULES)
print(f"Python {sys.version.split()[0]} at {STDLIB}")
print(f"train {len(train_text):,} characters, validation {len(valid_text):,}")

# The vocabulary: every character seen at least 5 times in training; the rest share one id.
chars, counts = np.unique(
    np.frombuffer(train_text.encode("utf-32-le"), np.uint32), return_counts=True
)
vocab = [chr(c) for c in chars[counts >= 5]] + ["\ufffd"]
index = {ch: i for i, ch in enumerate(vocab)}
UNKNOWN = len(vocab) - 1
V = len(vocab)


def encode(text):
    return np.array([index.get(ch, UNKNOWN) for ch in text], dtype=np.int32)


def decode(ids):
    return "".join(vocab[i] for i in ids)


train_ids, valid_ids = encode(train_text), encode(valid_text)
print(f"vocabulary: {V} symbols; a uniform guess has perplexity {V}")
print(repr(train_text[:300]))

# %% [markdown]
# ## Streams and chunks
#
# The training ids are cut into `STREAMS` equal, contiguous streams (one batch row each). Step
# k reads characters `[k·CHUNK, (k+1)·CHUNK)` of every stream and predicts each next
# character. Row n of the LSTM state after step k is exactly where stream n continues at step
# k + 1, so the state is carried over; when the streams wrap around to their beginning,
# `fl.streaming.reset_state` sets it back to zeros.


# %%
def as_streams(ids, streams):
    length = (len(ids) - 1) // streams
    starts = np.arange(streams) * length
    inputs = np.stack([ids[s : s + length] for s in starts], axis=1)  # (length, streams)
    targets = np.stack([ids[s + 1 : s + length + 1] for s in starts], axis=1)
    return inputs, targets


train_x, train_y = as_streams(train_ids, STREAMS)
chunks_per_epoch = len(train_x) // CHUNK
print(
    f"{STREAMS} streams of {len(train_x):,} characters = {chunks_per_epoch} chunks per epoch; "
    f"{STEPS} steps read {STEPS * CHUNK * STREAMS / len(train_ids):.2f} epochs"
)

VALID_STREAMS = 16
valid_x, valid_y = as_streams(valid_ids, VALID_STREAMS)
valid_chunks = len(valid_x) // CHUNK
print(f"validation: {VALID_STREAMS} streams × {valid_chunks} chunks of {CHUNK}")

# %% [markdown]
# ## The model
#
# Embedding → `fl.nnx.LSTM(dtype=bfloat16)` → linear readout to logits. The LSTM's matrix
# products run in bfloat16; its parameters stay float32 (the optimizer updates float32
# weights) and so do the gates' accumulation and the cell state `c`. The loss is computed in
# float32.


# %%
class CharLM(nnx.Module):
    def __init__(self, *, rngs):
        self.embed = nnx.Embed(V, EMBED, rngs=rngs)
        self.lstm = fl.nnx.LSTM(EMBED, HIDDEN, LAYERS, dtype=DTYPE, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, V, rngs=rngs)

    def __call__(self, ids, hx):
        """ids (T, N) -> logits (T, N, V) float32 and the final state (h_n, c_n)."""
        out, hx = self.lstm(self.embed(ids), hx)
        return self.head(out.astype(jnp.float32)), hx


model = CharLM(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(
    model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(4e-3)), wrt=nnx.Param
)


def initial_state(batch):
    """Zeros with the dtypes the LSTM returns (h in bfloat16, c in float32): one compile."""
    h, c = fl.streaming.zero_state(model.lstm.config, batch)
    return (h.astype(DTYPE), c)


def loss_fn(model, x, y, hx):
    logits, hx = model(x, hx)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), hx


@nnx.jit
def train_step(model, optimizer, x, y, hx):
    hx = jax.lax.stop_gradient(hx)  # truncated BPTT: no gradient into earlier chunks
    (loss, hx), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y, hx)
    optimizer.update(model, grads)
    return loss, hx


@nnx.jit
def eval_chunk(model, x, y, hx):
    return loss_fn(model, x, y, hx)


def validation_perplexity(model, carry_state=True):
    """Perplexity on the held-out streams, chunk by chunk, with or without carried state."""
    hx, total = initial_state(VALID_STREAMS), 0.0
    for k in range(valid_chunks):
        rows = slice(k * CHUNK, (k + 1) * CHUNK)
        if not carry_state:
            hx = initial_state(VALID_STREAMS)
        loss, hx = eval_chunk(model, valid_x[rows], valid_y[rows], hx)
        total += float(loss)
    return float(np.exp(total / valid_chunks))


valid_curve = [(0, validation_perplexity(model))]
print(f"before training: validation perplexity {valid_curve[0][1]:.1f} (vocabulary {V})")

# %% [markdown]
# ## Training

# %%
hx = initial_state(STREAMS)
train_curve = []
t0 = time.perf_counter()
for step in range(1, STEPS + 1):
    k = (step - 1) % chunks_per_epoch
    if k == 0 and step > 1:  # the streams start again from their beginning
        hx = fl.streaming.reset_state(hx, jnp.ones(STREAMS, bool))
    rows = slice(k * CHUNK, (k + 1) * CHUNK)
    loss, hx = train_step(model, optimizer, train_x[rows], train_y[rows], hx)
    train_curve.append(float(loss))
    if step % EVAL_EVERY == 0:
        valid_curve.append((step, validation_perplexity(model)))
        print(
            f"step {step:5d}: train perplexity {np.exp(np.mean(train_curve[-20:])):6.2f}, "
            f"validation {valid_curve[-1][1]:6.2f}  ({time.perf_counter() - t0:.0f}s)"
        )
print(f"{STEPS} steps, {STEPS * CHUNK * STREAMS:,} characters in {time.perf_counter() - t0:.1f}s")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
smooth = np.convolve(train_curve, np.ones(10) / 10, mode="valid")
ax.plot(np.arange(10, STEPS + 1), np.exp(smooth), label="training (10-chunk mean)")
steps_v, ppl_v = zip(*valid_curve, strict=True)
ax.plot(steps_v, ppl_v, "o-", label="validation (unseen modules)")
ax.axhline(V, color="gray", ls=":", label=f"uniform guess ({V})")
ax.set_yscale("log")
ax.set_xlabel("training step (chunk of 64 characters × 32 streams)")
ax.set_ylabel("perplexity")
ax.legend()
ax.set_title("Perplexity of a character LSTM in bfloat16")
show(fig, "05_perplexity")

first_ppl, final_ppl = valid_curve[0][1], valid_curve[-1][1]
assert final_ppl < 0.25 * first_ppl, valid_curve  # perplexity went down, a lot
assert np.exp(np.mean(train_curve[-20:])) < np.exp(np.mean(train_curve[:20]))
# The dtypes as promised: bfloat16 h, float32 c, float32 parameters.
assert hx[0].dtype == jnp.bfloat16 and hx[1].dtype == jnp.float32
assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(model.lstm.lstm_params()))

# %% [markdown]
# ## Does the carried state help?
#
# The same trained model on the same validation text, once carrying the state across chunk
# boundaries (as in training) and once starting every chunk from zeros. Without the carried
# state, the start of every chunk is read without any context, and perplexity is worse.

# %%
ppl_reset = validation_perplexity(model, carry_state=False)
print(f"validation perplexity: carried state {final_ppl:.2f}, reset every chunk {ppl_reset:.2f}")
assert final_ppl < ppl_reset

# %% [markdown]
# ## bfloat16 against float32
#
# The module's compute dtype is a setting, not part of the weights: the functional
# `fl.lstm` runs the same parameters in float32 (`dtype=jnp.float32`). On a validation chunk
# the two losses agree closely: bfloat16 changes the numbers a little, not the model.


# %%
@partial(jax.jit, static_argnames=("config", "dtype"))
def chunk_loss(lstm_params, embed, kernel, bias, x, y, *, config, dtype):
    out, _ = fl.lstm(lstm_params, embed[x], config=config, dtype=dtype)
    logits = out.astype(jnp.float32) @ kernel + bias
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


weights = (
    model.lstm.lstm_params(),
    model.embed.embedding[...],
    model.head.kernel[...],
    model.head.bias[...],
)
x0, y0 = valid_x[:CHUNK], valid_y[:CHUNK]
loss_bf16 = float(chunk_loss(*weights, x0, y0, config=model.lstm.config, dtype=jnp.bfloat16))
loss_f32 = float(chunk_loss(*weights, x0, y0, config=model.lstm.config, dtype=jnp.float32))
module_loss = float(eval_chunk(model, x0, y0, initial_state(VALID_STREAMS))[0])
print(f"first validation chunk: loss bfloat16 {loss_bf16:.6f}, float32 {loss_f32:.6f}")
assert abs(loss_bf16 - module_loss) < 1e-4  # the module is this functional call
assert abs(loss_bf16 - loss_f32) < 0.05

# %% [markdown]
# ## Sampling
#
# Generation runs the LSTM one character at a time, feeding each sampled character back in.
# We write it with the functional core inside one `jax.lax.scan`, so the whole sample is one
# compiled program: the prompt is read in one call, then each step is a one-step `fl.lstm`
# call with the carried `hx`.


# %%
@partial(jax.jit, static_argnames=("length", "config"))
def sample(weights, prompt, key, temperature, *, length, config):
    lstm_params, embed, kernel, bias = weights
    out, hx = fl.lstm(lstm_params, embed[prompt][:, None], config=config, dtype=DTYPE)
    logits = out[-1].astype(jnp.float32) @ kernel + bias  # (1, V)

    def step(carry, key):
        hx, logits = carry
        char = jax.random.categorical(key, logits / temperature)  # (1,)
        out, hx = fl.lstm(lstm_params, embed[char][None], hx, config=config, dtype=DTYPE)
        return (hx, out[-1].astype(jnp.float32) @ kernel + bias), char[0]

    _, chars = jax.lax.scan(step, (hx, logits), jax.random.split(key, length))
    return chars


prompt = "def "
samples = {}
for temperature in (0.5, 0.8):
    ids = sample(
        weights, encode(prompt), jax.random.key(1), temperature, length=400,
        config=model.lstm.config,
    )  # fmt: skip
    samples[temperature] = decode(np.asarray(ids))
    print(f"--- temperature {temperature} " + "-" * 50)
    print(prompt + samples[temperature])
    assert len(samples[temperature]) == 400

# %% [markdown]
# A rough measure of how word-like the samples are: the share of their words (runs of three or
# more letters) that occur in the training text, against text drawn character by character
# from the training text's character frequencies (a unigram model, which knows the alphabet
# and how often spaces come, but nothing about order).

# %%
train_words = set(re.findall(r"[A-Za-z_]{3,}", train_text))


def real_word_share(text):
    words = re.findall(r"[A-Za-z_]{3,}", text)
    return sum(w in train_words for w in words) / max(len(words), 1), len(words)


frequencies = np.bincount(train_ids, minlength=V) / len(train_ids)
unigram = decode(np.random.default_rng(0).choice(V, size=2000, p=frequencies))
share_unigram, n_unigram = real_word_share(unigram)
share_lstm, n_lstm = real_word_share("".join(samples.values()))
print(
    f"words found in the training text: LSTM samples {share_lstm:.0%} of {n_lstm}, "
    f"unigram text {share_unigram:.0%} of {n_unigram}"
)
assert share_lstm > 2 * share_unigram

# %% [markdown]
# After the small run's 250 steps (under a minute on two CPU cores) the samples are far from
# Python, but they are made of real words far more often than order-blind text, and they
# imitate the layout of source code, with new lines that start indented. `FLAX_LSTM_FULL=1`
# trains two layers of 512 for 3000 steps.

# %%
lines = "".join(samples.values()).splitlines()
assert any(line.startswith("    ") and line.strip() for line in lines[1:])

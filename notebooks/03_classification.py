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
# # Who is speaking? Sequence classification on Japanese Vowels
#
# Nine male speakers each said the Japanese vowels /ae/; every utterance was turned into a
# series of 12 LPC cepstrum coefficients, 7 to 29 frames long. The task: name the speaker
# from one utterance. It is a small, real, variable-length data set, which makes it a good
# first classification problem for an LSTM:
#
# - an NNX model (`fl.nnx.LSTM` and a linear readout) that reads padded batches with
#   `seq_lengths`, so padding never changes the answer;
# - an optax training loop, one `nnx.jit`-compiled step for every batch;
# - learning curves and a confusion matrix on the held-out test set;
# - a look inside: the per-step hidden states (`return_all_states=True`) of a few utterances,
#   and how early in an utterance the speaker can be recognised.
#
# Data: M. Kudo, J. Toyama, M. Shimbo (1999), "Multidimensional Curve Classification Using
# Passing-Through Regions", Pattern Recognition Letters 20(11–13), via the UCI Machine Learning
# Repository (CC BY 4.0); split as in the UEA/UCR archive, 270 training and 370 test series.

# %%
import os
import tempfile
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import flax_lstm as fl
from flax_lstm.data import load_japanese_vowels

FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)

HIDDEN = 96 if FULL else 48
EPOCHS = 80 if FULL else 30
BATCH = 30  # 270 = 9 batches of 30: one shape, one compile
LEARNING_RATE = 3e-3
SEED = 0


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


print(f"full-size run: {FULL} (hidden {HIDDEN}, {EPOCHS} epochs); figures in {FIGURES}")

# %% [markdown]
# ## The data
#
# `load_japanese_vowels()` returns the two splits zero-padded to their longest series, with
# the true lengths and the speaker labels. We standardise each channel with statistics of the
# training frames (padding excluded).

# %%
train, test = load_japanese_vowels()
classes = list(train.class_names)


def frames(ds):
    return np.arange(ds.max_length)[None, :] < ds.lengths[:, None]  # (N, T): real frames


mean = train.x[frames(train)].mean(axis=0)
std = train.x[frames(train)].std(axis=0)


def prepare(ds):
    x = np.where(frames(ds)[..., None], (ds.x - mean) / std, 0.0).astype(np.float32)
    y = np.array([classes.index(v) for v in ds.y], dtype=np.int32)
    return jnp.asarray(x), jnp.asarray(ds.lengths, jnp.int32), jnp.asarray(y)


x_train, len_train, y_train = prepare(train)
x_test, len_test, y_test = prepare(test)
print(
    f"train {x_train.shape} test {x_test.shape}; lengths {int(len_test.min())}–"
    f"{int(len_test.max())}; test utterances per speaker {np.bincount(y_test).tolist()}"
)

fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
for ax, speaker in zip(axes, (0, 4, 8), strict=True):
    i = int(np.flatnonzero(np.asarray(y_train) == speaker)[0])
    n = int(len_train[i])
    ax.imshow(np.asarray(x_train[i, :n]).T, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3)
    ax.set_title(f"speaker {classes[speaker]}, {n} frames")
    ax.set_xlabel("frame")
axes[0].set_ylabel("LPC cepstrum coefficient")
show(fig, "03_utterances")

# %% [markdown]
# ## The model
#
# An `fl.nnx.LSTM` reads the padded batch with `seq_lengths`; its final hidden state `h_n` is
# then the state at each utterance's own last frame. A linear layer maps it to nine logits.
# A little recurrent (variational) dropout regularises the small training set; it is active
# in `model.train()` mode only.


# %%
class SpeakerClassifier(nnx.Module):
    def __init__(self, hidden, *, rngs):
        self.lstm = fl.nnx.LSTM(12, hidden, batch_first=True, recurrent_dropout=0.1, rngs=rngs)
        self.head = nnx.Linear(hidden, len(classes), rngs=rngs)

    def __call__(self, x, lengths):
        _, (h_n, _) = self.lstm(x, seq_lengths=lengths)
        return self.head(h_n[-1])

    def per_step_logits(self, x, lengths):
        """Logits after every frame: the head applied to every per-step hidden state."""
        _, _, states = self.lstm(x, seq_lengths=lengths, return_all_states=True)
        return self.head(states.h[:, :, -1])  # (N, T, classes), batch-first


model = SpeakerClassifier(HIDDEN, rngs=nnx.Rngs(params=SEED, dropout=SEED + 1))
# Adam with a cosine decay of the learning rate over the run: large steps first, small ones
# at the end, so the last epochs settle instead of bouncing around.
schedule = optax.cosine_decay_schedule(LEARNING_RATE, decay_steps=EPOCHS * len(y_train) // BATCH)
optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
print(f"{n_params} parameters")

# %% [markdown]
# ## Training
#
# One compiled step per batch: forward, cross-entropy, gradients and the Adam update.
# Evaluation is compiled once per split. Every batch has the same shape (30 utterances padded
# to the training set's 26 frames), so nothing recompiles after the first step.


# %%
def loss_fn(model, x, lengths, y):
    logits = model(x, lengths)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
@chex.assert_max_traces(n=1)  # fails if the step were ever traced (and compiled) again
def train_step(model, optimizer, x, lengths, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, lengths, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, x, lengths, y):
    logits = model(x, lengths)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.sum(logits.argmax(-1) == y), logits.argmax(-1)


rng = np.random.default_rng(SEED)
curves = {"train loss": [], "test loss": [], "train acc": [], "test acc": []}
t0 = time.perf_counter()
for epoch in range(EPOCHS):
    model.train()
    for idx in rng.permutation(len(y_train)).reshape(-1, BATCH):
        train_step(model, optimizer, x_train[idx], len_train[idx], y_train[idx])
    model.eval()
    for split, (x, lengths, y) in (
        ("train", (x_train, len_train, y_train)),
        ("test", (x_test, len_test, y_test)),
    ):
        loss, correct, _ = evaluate(model, x, lengths, y)
        curves[f"{split} loss"].append(float(loss))
        curves[f"{split} acc"].append(int(correct) / len(y))
    if epoch % 5 == 4 or epoch == EPOCHS - 1:
        print(
            f"epoch {epoch + 1:3d}: train loss {curves['train loss'][-1]:.3f}, "
            f"test loss {curves['test loss'][-1]:.3f}, "
            f"test accuracy {curves['test acc'][-1]:.3f}"
        )
elapsed = time.perf_counter() - t0
print(f"{EPOCHS} epochs in {elapsed:.1f}s ({EPOCHS * len(y_train) // BATCH} steps)")

# %%
test_acc = curves["test acc"][-1]
chance = 1 / len(classes)
print(
    f"test accuracy {test_acc:.3f}; chance {chance:.3f}; majority class "
    f"{np.bincount(y_test).max() / len(y_test):.3f}"
)
assert test_acc > 0.85, test_acc  # chance is 0.11, the majority class 0.24
assert curves["train loss"][-1] < 0.25 * curves["train loss"][0]

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
epochs = np.arange(1, EPOCHS + 1)
for split in ("train", "test"):
    ax_loss.plot(epochs, curves[f"{split} loss"], label=split)
    ax_acc.plot(epochs, curves[f"{split} acc"], label=split)
ax_acc.axhline(chance, color="gray", ls=":", label="chance")
ax_loss.set_yscale("log")
ax_loss.set_ylabel("cross-entropy")
ax_acc.set_ylabel("accuracy")
for ax in (ax_loss, ax_acc):
    ax.set_xlabel("epoch")
    ax.legend()
fig.suptitle("Learning curves")
show(fig, "03_learning_curves")

# %% [markdown]
# ## Where the mistakes are
#
# The confusion matrix on the 370 test utterances (rows: true speaker, columns: predicted).

# %%
_, _, predicted = evaluate(model, x_test, len_test, y_test)
confusion = np.zeros((len(classes), len(classes)), dtype=int)
np.add.at(confusion, (np.asarray(y_test), np.asarray(predicted)), 1)
assert confusion.sum() == len(y_test) and np.trace(confusion) / len(y_test) == test_acc

fig, ax = plt.subplots(figsize=(5, 4.5))
im = ax.imshow(confusion, cmap="Blues")
for i in range(len(classes)):
    for j in range(len(classes)):
        if confusion[i, j]:
            color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
            ax.text(j, i, confusion[i, j], ha="center", va="center", color=color, fontsize=8)
ax.set_xticks(range(len(classes)), classes)
ax.set_yticks(range(len(classes)), classes)
ax.set_xlabel("predicted speaker")
ax.set_ylabel("true speaker")
ax.set_title(f"test accuracy {test_acc:.1%}")
fig.colorbar(im, ax=ax, fraction=0.046)
show(fig, "03_confusion")
per_speaker = confusion.diagonal() / confusion.sum(axis=1)

# Padding never changes the answer: five more frames of zeros at the end of every test
# utterance give the same logits, because `seq_lengths` stops each sequence at its own end.
padded = jnp.pad(x_test, ((0, 0), (0, 5), (0, 0)))
same = nnx.jit(lambda m, a, b: (m(a, len_test), m(b, len_test)))(model, x_test, padded)
assert np.allclose(*same, atol=1e-5)
print(
    "recall per speaker:",
    " ".join(f"{c}:{r:.2f}" for c, r in zip(classes, per_speaker, strict=True)),
)

# %% [markdown]
# ## Inside the LSTM: hidden-state trajectories
#
# `return_all_states=True` returns the hidden and cell states of every layer after every
# frame. We project the hidden states of all test frames onto their two principal components
# and draw the path that each of a few utterances takes, from its first frame (circle) to its
# last (square). Utterances of one speaker end up in the same region: that is what the linear
# readout separates.


# %%
@nnx.jit
def hidden_states(model, x, lengths):
    _, _, states = model.lstm(x, seq_lengths=lengths, return_all_states=True)
    return states.h[:, :, -1]  # (N, T, H): the (only) layer's state after each frame


h_test = np.asarray(hidden_states(model, x_test, len_test))
mask = np.asarray(frames(test))
assert (h_test[~mask] == 0).all()  # zero past each utterance's end
centre = h_test[mask].mean(axis=0)
_, _, vt = np.linalg.svd(h_test[mask] - centre, full_matrices=False)
pcs = (h_test - centre) @ vt[:2].T  # (N, T, 2)

fig, ax = plt.subplots(figsize=(6.5, 5.5))
colors = plt.get_cmap("tab10")
for speaker in (0, 2, 5, 8):
    for k, i in enumerate(np.flatnonzero(np.asarray(y_test) == speaker)[:3]):
        n = int(len_test[i])
        path = pcs[i, :n]
        label = f"speaker {classes[speaker]}" if k == 0 else None
        ax.plot(path[:, 0], path[:, 1], "-", color=colors(speaker), alpha=0.8, label=label)
        ax.plot(*path[0], "o", color=colors(speaker), ms=4)
        ax.plot(*path[-1], "s", color=colors(speaker), ms=7, mec="black")
ax.set_xlabel("principal component 1")
ax.set_ylabel("principal component 2")
ax.set_title("hidden-state trajectories (circle: first frame, square: last)")
ax.legend()
show(fig, "03_trajectories")

# In the full hidden space too, not just in this projection: the final states of two
# utterances by one speaker are closer, on average, than those of two different speakers.
lengths_np = np.asarray(len_test)
h_final = h_test[np.arange(len(lengths_np)), lengths_np - 1]  # (N, H)
dist = np.linalg.norm(h_final[:, None] - h_final[None, :], axis=-1)
same = np.asarray(y_test)[:, None] == np.asarray(y_test)[None, :]
off_diagonal = ~np.eye(len(lengths_np), dtype=bool)
within, between = dist[same & off_diagonal].mean(), dist[~same].mean()
print(f"mean distance between final states: same speaker {within:.2f}, different {between:.2f}")
assert within < 0.7 * between

# %% [markdown]
# ## How early is the speaker recognisable?
#
# The hidden state after frame t is exactly the final state the LSTM would have after reading
# only the first t frames, so applying the readout to every per-step state classifies every
# prefix of every utterance at once. Accuracy climbs as more of the utterance is heard; after
# the whole utterance it is the test accuracy above.

# %%
logits_t = np.asarray(nnx.jit(lambda m, x, n: m.per_step_logits(x, n))(model, x_test, len_test))
max_t = int(lengths_np.max())
prefix_acc = []
for t in range(1, max_t + 1):
    last = np.minimum(t, lengths_np) - 1  # a prefix longer than the utterance is all of it
    pred = logits_t[np.arange(len(lengths_np)), last].argmax(-1)
    prefix_acc.append(float((pred == np.asarray(y_test)).mean()))
print(
    "accuracy after 1, 3, 5, 10 frames and all:",
    [round(prefix_acc[t - 1], 3) for t in (1, 3, 5, 10)],
    round(prefix_acc[-1], 3),
)
assert abs(prefix_acc[-1] - test_acc) < 1e-9  # the full prefix is the classifier itself
assert prefix_acc[0] < prefix_acc[-1]

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(1, max_t + 1), prefix_acc, "o-", ms=3)
ax.axhline(chance, color="gray", ls=":", label="chance")
ax.set_xlabel("frames heard")
ax.set_ylabel("test accuracy")
ax.set_title("Recognising the speaker from the start of an utterance")
ax.legend()
show(fig, "03_prefix_accuracy")

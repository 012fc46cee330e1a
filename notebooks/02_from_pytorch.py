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
# # From PyTorch to JAX and back
#
# You have a `torch.nn.LSTM` that was trained in PyTorch. This notebook moves it into JAX
# without changing a single number, keeps training it there with optax, and moves it back:
#
# 1. train a small bidirectional, two-layer `torch.nn.LSTM` speaker classifier on the bundled
#    Japanese Vowels data (packed variable-length sequences, as a PyTorch user would);
# 2. move it with `fl.nnx.LSTM.from_torch` and check that outputs, final states and gradients
#    agree with torch to float32 rounding (max |jax − torch| < 1e-5);
# 3. continue training the same weights in JAX with optax under `nnx.jit`;
# 4. move them back into a fresh `torch.nn.LSTM` with `to_torch_state_dict` and check that
#    torch now computes what JAX computes.
#
# The data: M. Kudo, J. Toyama, M. Shimbo (1999), "Multidimensional Curve Classification Using
# Passing-Through Regions", Pattern Recognition Letters 20(11–13), via the UCI Machine Learning
# Repository (CC BY 4.0). Nine speakers, 12 LPC cepstrum channels, utterances 7–29 steps long.

# %%
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from flax import nnx
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import flax_lstm as fl
from flax_lstm.data import load_japanese_vowels

FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)

HIDDEN = 64 if FULL else 32
TORCH_EPOCHS = 30 if FULL else 8
JAX_EPOCHS = 30 if FULL else 8
BATCH = 30  # 270 training utterances = 9 batches of 30, so every step has the same shape
TOL = 1e-5  # float32: both libraries agree to rounding


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


torch.manual_seed(0)
# Batches of 30 short sequences gain nothing from intra-op threads, and on a busy machine
# torch's thread pool can slow the packed-sequence LSTM down many times over.
torch.set_num_threads(1)
print(f"torch {torch.__version__}, jax {jax.__version__}; full-size run: {FULL}")

# %% [markdown]
# ## The data
#
# Each split is zero-padded to its longest utterance and comes with the true lengths.
# We standardise the 12 channels with the training set's statistics (over real steps only).

# %%
train, test = load_japanese_vowels()
classes = list(train.class_names)


def steps_mask(ds):
    return np.arange(ds.max_length)[None, :] < ds.lengths[:, None]


real_steps = train.x[steps_mask(train)]  # (total steps, 12)
mean, std = real_steps.mean(axis=0), real_steps.std(axis=0)


def prepare(ds):
    x = np.where(steps_mask(ds)[..., None], (ds.x - mean) / std, 0.0).astype(np.float32)
    y = np.array([classes.index(v) for v in ds.y], dtype=np.int64)
    return x, ds.lengths.astype(np.int64), y


x_train, len_train, y_train = prepare(train)
x_test, len_test, y_test = prepare(test)
print(f"train {x_train.shape}, test {x_test.shape}, {len(classes)} speakers")

# %% [markdown]
# ## 1. Train in PyTorch
#
# A plain PyTorch classifier: the LSTM reads a `PackedSequence` (so padding never enters the
# recurrence), and a linear head reads the last layer's final states of both directions.


# %%
class TorchClassifier(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.lstm = torch.nn.LSTM(
            12, hidden, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1
        )
        self.head = torch.nn.Linear(2 * hidden, len(classes))

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=-1))  # layer 1: forward, reverse


def torch_eval(model, x, lengths, y):
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x), torch.from_numpy(lengths))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    return float(loss), float((logits.argmax(-1).numpy() == y).mean())


torch_model = TorchClassifier(HIDDEN)
torch_opt = torch.optim.Adam(torch_model.parameters(), lr=5e-3)
history = []  # (epoch, library, train loss, test accuracy)
rng = np.random.default_rng(0)
t0 = time.perf_counter()
for epoch in range(1, TORCH_EPOCHS + 1):
    torch_model.train()
    for idx in rng.permutation(len(y_train)).reshape(-1, BATCH):
        logits = torch_model(torch.from_numpy(x_train[idx]), torch.from_numpy(len_train[idx]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_train[idx]))
        torch_opt.zero_grad()
        loss.backward()
        torch_opt.step()
    train_loss, _ = torch_eval(torch_model, x_train, len_train, y_train)
    _, test_acc = torch_eval(torch_model, x_test, len_test, y_test)
    history.append((epoch, "torch", train_loss, test_acc))
print(f"torch: {TORCH_EPOCHS} epochs in {time.perf_counter() - t0:.1f}s")
print(f"train loss {train_loss:.3f}, test accuracy {test_acc:.3f} (chance {1 / len(classes):.3f})")

# %% [markdown]
# ## 2. Move it to JAX
#
# `fl.nnx.LSTM.from_torch` reads the sizes, `bias`, `bidirectional`, `proj_size`,
# `batch_first` and `dropout` off the torch module and copies the weights exactly (no
# transposes to get wrong: the parameters keep torch's layout). The linear head is one
# `nnx.Linear`, whose kernel is torch's weight transposed.
#
# The JAX model's forward is the torch one with `seq_lengths` in place of the packed sequence:
# `seq_lengths` has the semantics of `pack_padded_sequence(..., enforce_sorted=False)`.


# %%
class JaxClassifier(nnx.Module):
    def __init__(self, lstm, head):
        self.lstm = lstm
        self.head = head

    def __call__(self, x, lengths):
        _, (h_n, _) = self.lstm(x, seq_lengths=lengths)
        return self.head(jnp.concatenate([h_n[-2], h_n[-1]], axis=-1))


def head_from_torch(linear):
    head = nnx.Linear(linear.in_features, linear.out_features, rngs=nnx.Rngs(0))
    head.kernel[...] = jnp.asarray(linear.weight.detach().numpy().T)
    head.bias[...] = jnp.asarray(linear.bias.detach().numpy())
    return head


lstm = fl.nnx.LSTM.from_torch(torch_model.lstm, rngs=nnx.Rngs(dropout=0))
jax_model = JaxClassifier(lstm, head_from_torch(torch_model.head))
print(lstm.config)
assert lstm.config == fl.config_from_torch(torch_model.lstm)
# Exactly the same numbers: every weight, bit for bit.
for name, value in torch_model.lstm.state_dict().items():
    assert np.array_equal(lstm.to_torch_state_dict()[name], value.numpy()), name

# %% [markdown]
# ### Identical outputs
#
# In evaluation mode (no dropout) we compare, on the whole test set: the LSTM's padded output
# sequence (torch's `pad_packed_sequence`), both final states and the classifier's logits.


# %%
@nnx.jit
def jax_forward(model, x, lengths):
    out, (h_n, c_n) = model.lstm(x, seq_lengths=lengths)
    return out, h_n, c_n, model(x, lengths)


def torch_forward(model, x, lengths):
    model.eval()
    with torch.no_grad():
        xt, lt = torch.from_numpy(x), torch.from_numpy(lengths)
        packed = pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = model.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out.numpy(), h_n.numpy(), c_n.numpy(), model(xt, lt).numpy()


def max_differences(jax_model, torch_model, x, lengths):
    jax_model.eval()
    got = jax_forward(jax_model, jnp.asarray(x), jnp.asarray(lengths))
    want = torch_forward(torch_model, x, lengths)
    names = ("output", "h_n", "c_n", "logits")
    return {
        n: float(np.abs(np.asarray(g) - w).max()) for n, g, w in zip(names, got, want, strict=True)
    }


diffs = max_differences(jax_model, torch_model, x_test, len_test)
for name, d in diffs.items():
    print(f"max |jax - torch| {name:7s} {d:.2e}")
assert max(diffs.values()) < TOL, diffs

# %% [markdown]
# ### Identical gradients
#
# The same loss on one training batch, differentiated by torch's autograd and by `nnx.grad`.
# `lstm.to_torch_state_dict(grads)` names the JAX gradients in torch's terms, so the two can
# be compared parameter by parameter.

# %%
idx = np.arange(BATCH)
xb, lb, yb = x_train[idx], len_train[idx], y_train[idx]

torch_model.eval()  # no dropout, so both sides compute the same function
torch_model.zero_grad()
loss_t = torch.nn.functional.cross_entropy(
    torch_model(torch.from_numpy(xb), torch.from_numpy(lb)), torch.from_numpy(yb)
)
loss_t.backward()
torch_grads = {k: p.grad.numpy() for k, p in torch_model.lstm.named_parameters()}


def loss_fn(model, x, lengths, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x, lengths), y).mean()


jax_model.eval()
loss_j, grads = nnx.jit(nnx.value_and_grad(loss_fn))(
    jax_model, jnp.asarray(xb), jnp.asarray(lb), jnp.asarray(yb)
)
jax_grads = lstm.to_torch_state_dict(grads["lstm"])
assert list(jax_grads) == list(torch_grads)  # the same names, in the same order

print(f"loss: torch {loss_t.item():.6f}, jax {float(loss_j):.6f}")
grad_diffs = {k: float(np.abs(jax_grads[k] - torch_grads[k]).max()) for k in torch_grads}
for k, d in grad_diffs.items():
    print(f"  {k:26s} |grad| max {np.abs(torch_grads[k]).max():.2e}, max |jax - torch| {d:.1e}")
head_diff = float(
    np.abs(np.asarray(grads["head"]["kernel"][...]).T - torch_model.head.weight.grad.numpy()).max()
)
assert abs(loss_t.item() - float(loss_j)) < TOL
assert max(grad_diffs.values()) < TOL and head_diff < TOL, (grad_diffs, head_diff)

# %% [markdown]
# ## 3. Keep training in JAX
#
# The moved model is an ordinary NNX module. An `nnx.Optimizer` with optax's Adam updates it
# in place; the training step is compiled once (`nnx.jit`; every batch has the same shape).
# `model.train()` turns on the between-layer dropout the torch module was built with
# (`dropout=0.1`), drawing masks from the module's own `dropout` stream.

# %%
optimizer = nnx.Optimizer(jax_model, optax.adam(5e-3), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, lengths, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, lengths, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, x, lengths, y):
    logits = model(x, lengths)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


data_train = tuple(map(jnp.asarray, (x_train, len_train, y_train)))
data_test = tuple(map(jnp.asarray, (x_test, len_test, y_test)))
jax_model.eval()
handover_loss, handover_acc = map(float, evaluate(jax_model, *data_train))
t0 = time.perf_counter()
for epoch in range(TORCH_EPOCHS + 1, TORCH_EPOCHS + JAX_EPOCHS + 1):
    jax_model.train()
    for idx in rng.permutation(len(y_train)).reshape(-1, BATCH):
        train_step(jax_model, optimizer, *(a[idx] for a in data_train))
    jax_model.eval()
    train_loss = float(evaluate(jax_model, *data_train)[0])
    test_acc = float(evaluate(jax_model, *data_test)[1])
    history.append((epoch, "jax", train_loss, test_acc))
print(f"jax: {JAX_EPOCHS} epochs in {time.perf_counter() - t0:.1f}s (first one compiles)")
print(
    f"train loss at handover {handover_loss:.3f} -> {train_loss:.3f}; test accuracy {test_acc:.3f}"
)
assert train_loss < handover_loss

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
for lib, color in (("torch", "tab:red"), ("jax", "tab:blue")):
    rows = [h for h in history if h[1] == lib]
    epochs = [h[0] for h in rows]
    ax_loss.plot(epochs, [h[2] for h in rows], "o-", color=color, label=f"trained in {lib}")
    ax_acc.plot(epochs, [h[3] for h in rows], "o-", color=color, label=f"trained in {lib}")
for ax in (ax_loss, ax_acc):
    ax.axvline(TORCH_EPOCHS + 0.5, color="gray", ls=":")
    ax.set_xlabel("epoch")
    ax.legend()
ax_loss.set_yscale("log")
ax_loss.set_ylabel("training loss (eval mode)")
ax_acc.set_ylabel("test accuracy")
fig.suptitle("One model, trained first in PyTorch and then in JAX")
show(fig, "02_torch_then_jax")

# %% [markdown]
# ## 4. Back to PyTorch
#
# `to_torch_state_dict()` returns the LSTM's parameters under torch's names and shapes, so a
# fresh `torch.nn.LSTM` loads them with `load_state_dict` (all keys must match). The head goes
# back with its kernel transposed. Torch then computes what JAX computes.

# %%
back = TorchClassifier(HIDDEN)
state = {k: torch.from_numpy(v) for k, v in lstm.to_torch_state_dict().items()}
print(back.lstm.load_state_dict(state))
back.head.weight.data = torch.from_numpy(np.asarray(jax_model.head.kernel[...]).T.copy())
back.head.bias.data = torch.from_numpy(np.asarray(jax_model.head.bias[...]).copy())

diffs_back = max_differences(jax_model, back, x_test, len_test)
for name, d in diffs_back.items():
    print(f"max |jax - torch| {name:7s} {d:.2e}")
assert max(diffs_back.values()) < TOL, diffs_back
torch_acc = torch_eval(back, x_test, len_test, y_test)[1]
print(f"test accuracy: torch {torch_acc:.3f}, jax {test_acc:.3f}")
# The same predictions (up to an utterance whose top two logits tie within float32 rounding).
assert abs(torch_acc - test_acc) * len(y_test) <= 1.01

# %% [markdown]
# ## The functional route
#
# Without modules, `fl.config_from_torch` and `fl.from_torch_state_dict` give a config and a
# params pytree for `fl.lstm`, the pure function underneath the module.

# %%
config = fl.config_from_torch(back.lstm)
params = fl.from_torch_state_dict(back.lstm.state_dict(), config)
out, _ = jax.jit(fl.lstm, static_argnames="config")(
    params, jnp.asarray(x_test), config=config, seq_lengths=jnp.asarray(len_test)
)
assert np.abs(np.asarray(out) - torch_forward(back, x_test, len_test)[0]).max() < TOL
print("fl.lstm with params from the state dict matches torch too")

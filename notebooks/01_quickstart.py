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
# # Quick start: `flax_lstm` in ten minutes
#
# `flax_lstm` is an LSTM for JAX with exactly the semantics of `torch.nn.LSTM`: the same
# arguments, the same shapes, the same parameter names and the same numbers. This notebook
# walks through the whole public surface on one small example:
#
# 1. a frozen `LSTMConfig` and a params pytree;
# 2. the functional call `fl.lstm(params, x, hx, config=...)` and the shapes it returns for
#    time-major, `batch_first`, unbatched, bidirectional and `proj_size` inputs;
# 3. a padded batch of sequences of different lengths with `seq_lengths`;
# 4. the Flax modules `fl.nnx.LSTM` and `fl.linen.LSTM` over the same core;
# 5. `jax.jit` and `jax.grad`, and streaming a long sequence in chunks.
#
# Every claim below is checked with an `assert`, so the notebook fails (and the test suite with
# it) if the library ever stops behaving as described.

# %%
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import flax_lstm as fl

# Small by default (seconds); FLAX_LSTM_FULL=1 runs the full-size version.
FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


print("jax", jax.__version__, "on", jax.default_backend(), "| flax_lstm", fl.__version__)
print("full-size run:", FULL, "| figures in", FIGURES)

# %% [markdown]
# ## 1. A config and its parameters
#
# `LSTMConfig` takes `torch.nn.LSTM`'s constructor arguments and validates them the same way.
# It is frozen and hashable, so it can be a static argument of `jax.jit`. `init_params`
# draws every weight from U(-1/√H, 1/√H), as torch does, and returns a plain pytree: a list
# with one dict per layer, each array with a leading direction axis (1, or 2 when
# bidirectional) and torch's layout behind it.

# %%
INPUT, HIDDEN = 3, 16 if not FULL else 64
config = fl.LSTMConfig(input_size=INPUT, hidden_size=HIDDEN, num_layers=2)
params = fl.init_params(jax.random.key(0), config)
print(config)
for k, layer in enumerate(params):
    print(f"layer {k}:", {name: tuple(a.shape) for name, a in layer.items()})

assert params[0]["w_ih"].shape == (1, 4 * HIDDEN, INPUT)  # gates i, f, g, o stacked
assert params[1]["w_ih"].shape == (1, 4 * HIDDEN, HIDDEN)  # layer 1 reads layer 0's output
bound = 1 / np.sqrt(HIDDEN)
assert all(float(jnp.abs(a).max()) <= bound for layer in params for a in layer.values())

# Invalid arguments fail as in torch, with torch's messages (and its warning for dropout on a
# single layer).
try:
    fl.LSTMConfig(INPUT, HIDDEN, proj_size=HIDDEN)
except ValueError as e:
    print("ValueError:", e)
else:
    raise AssertionError("proj_size >= hidden_size must be rejected")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fl.LSTMConfig(INPUT, HIDDEN, num_layers=1, dropout=0.5)
print("UserWarning:", caught[0].message)
assert len(caught) == 1

# %% [markdown]
# The same parameters in torch's naming: `to_torch_state_dict` gives exactly the keys and
# shapes of `torch.nn.LSTM(...).state_dict()` (as NumPy arrays), and `from_torch_state_dict`
# reads them back losslessly.

# %%
state_dict = fl.to_torch_state_dict(params, config)
print({name: value.shape for name, value in state_dict.items()})
back = fl.from_torch_state_dict(state_dict, config)
assert all(
    np.array_equal(a, b)
    for la, lb in zip(params, back, strict=True)
    for a, b in zip(la.values(), lb.values(), strict=True)
)

# %% [markdown]
# ## 2. The functional call and its shapes
#
# `fl.lstm(params, x, hx=None, *, config)` returns `(output, (h_n, c_n))` with torch's shapes.
# With D = 2 for a bidirectional LSTM (else 1) and H_out = `proj_size` or `hidden_size`:
#
# | input | `output` | `h_n` | `c_n` |
# |---|---|---|---|
# | time-major `(L, N, in)` | `(L, N, D·H_out)` | `(D·layers, N, H_out)` | `(D·layers, N, H)` |
# | `batch_first` `(N, L, in)` | `(N, L, D·H_out)` | same (never batch-first) | same |
# | unbatched `(L, in)` | `(L, D·H_out)` | `(D·layers, H_out)` | `(D·layers, H)` |
#
# We check each row of that table, for plain, bidirectional and projected LSTMs.
#
# `fl.lstm` can be called eagerly: it checks its arguments in Python and then runs one program
# compiled once per config, shape and dtype, so only the first call pays for compilation and
# later eager calls take milliseconds (this run's timings are printed below). Inside a training
# step, jit the whole step; `fl.lstm` itself can be jitted too, with the config static (it is
# hashable). We use a jitted `lstm` from here on.

# %%
L, N = 11, 4
x = jax.random.normal(jax.random.key(1), (L, N, INPUT))

out, (h_n, c_n) = fl.lstm(params, x, config=config)  # eager: compiles on the first call
lstm = jax.jit(fl.lstm, static_argnames="config")
assert np.allclose(lstm(params, x, config=config)[0], out, atol=1e-6)  # compiles


def seconds_per_call(f, reps=3):
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(f(params, x, config=config))
    return (time.perf_counter() - start) / reps


# A repeated eager call reuses the compiled program: count XLA compilations while timing. (The
# timings are printed, not asserted: they depend on the machine and what else runs on it.)
compile_events = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: compile_events.append(event)
)
eager_s, jit_s = seconds_per_call(fl.lstm), seconds_per_call(lstm)
print(f"per call: eager {eager_s * 1e3:.1f} ms, jitted {jit_s * 1e3:.3f} ms")
assert "/jax/core/compile/backend_compile_duration" not in compile_events  # nothing recompiled

variants = {
    "plain": {},
    "batch_first": {"batch_first": True},
    "bidirectional": {"bidirectional": True},
    "proj_size=5": {"proj_size": 5},
    "bidirectional + proj_size=5": {"bidirectional": True, "proj_size": 5},
}
# jax.eval_shape traces a function without running (or compiling) it: the quickest way to
# check shapes.
rows = []
for name, kwargs in variants.items():
    cfg = fl.LSTMConfig(INPUT, HIDDEN, num_layers=2, **kwargs)
    p = jax.eval_shape(lambda cfg=cfg: fl.init_params(jax.random.key(0), cfg))  # shapes only
    d, h_out = cfg.num_directions, cfg.output_size
    xb = jnp.swapaxes(x, 0, 1) if cfg.batch_first else x
    out, (h_n, c_n) = jax.eval_shape(partial(fl.lstm, config=cfg), p, xb)
    out_u, (h_u, c_u) = jax.eval_shape(partial(fl.lstm, config=cfg), p, x[:, 0])  # unbatched
    expect_out = (N, L, d * h_out) if cfg.batch_first else (L, N, d * h_out)
    assert out.shape == expect_out, (name, out.shape)
    assert h_n.shape == (d * 2, N, h_out) and c_n.shape == (d * 2, N, HIDDEN), name
    assert out_u.shape == (L, d * h_out) and h_u.shape == (d * 2, h_out), name
    rows.append((name, out.shape, h_n.shape, c_n.shape, out_u.shape))

print(f"{'config':30s} {'output':14s} {'h_n':12s} {'c_n':12s} {'unbatched output'}")
for name, *shapes in rows:
    print(f"{name:30s} " + " ".join(f"{tuple(s)!s:12s}" for s in shapes))

# The numbers agree too: an unbatched call is the batched one without the batch axis.
out_u, _ = lstm(params, x[:, 0], config=config)
assert np.allclose(out_u, lstm(params, x, config=config)[0][:, 0], atol=1e-6)

# %% [markdown]
# For a bidirectional LSTM, `output[..., :H_out]` is the forward direction and
# `output[..., H_out:]` the reverse one; `h_n` row `layer·D + direction`. So the forward half
# of the last output step is the forward direction's final state, and the reverse half of the
# *first* output step is the reverse direction's final state (it read the sequence backwards).

# %%
cfg = fl.LSTMConfig(INPUT, HIDDEN, num_layers=2, bidirectional=True)
p = fl.init_params(jax.random.key(0), cfg)
out, (h_n, c_n) = lstm(p, x, config=cfg)
assert np.allclose(out[-1, :, :HIDDEN], h_n[2], atol=1e-6)  # layer 1, forward
assert np.allclose(out[0, :, HIDDEN:], h_n[3], atol=1e-6)  # layer 1, reverse
print("bidirectional: output halves match h_n rows 2 (forward) and 3 (reverse)")

# %% [markdown]
# ## 3. A padded batch with `seq_lengths`
#
# Real batches hold sequences of different lengths, zero-padded to the longest. Passing
# `seq_lengths` gives the semantics of torch's `pack_padded_sequence(..., enforce_sorted=False)`:
# outputs past each length are zero, and `h_n`/`c_n` are the states at each sequence's *own*
# last step, not at the padded end. We check that against running every sequence alone,
# without padding.

# %%
lengths = jnp.array([11, 7, 3, 9])
mask = jnp.arange(L)[:, None] < lengths[None, :]
x_padded = jnp.where(mask[:, :, None], x, 0.0)
out, (h_n, c_n) = lstm(params, x_padded, config=config, seq_lengths=lengths)

for n, length in enumerate(lengths.tolist()):
    alone, (h_alone, c_alone) = lstm(params, x[:length, n], config=config)
    assert np.allclose(out[:length, n], alone, atol=1e-6)
    assert np.allclose(h_n[:, n], h_alone, atol=1e-6)
    assert np.allclose(c_n[:, n], c_alone, atol=1e-6)
    assert (out[length:, n] == 0).all()
print("each padded sequence equals the same sequence run alone; padding outputs are zero")

# Without seq_lengths the LSTM keeps running over the padding, and the final state drifts.
_, (h_no_len, _) = lstm(params, x_padded, config=config)
drift = float(jnp.abs(h_no_len[:, 2] - h_n[:, 2]).max())
print(f"final-state error if the lengths are ignored (sequence of length 3): {drift:.3f}")
assert drift > 1e-3

# %% [markdown]
# The same picture as numbers: the first output unit of the top layer over time, for each
# sequence. With `seq_lengths` each trace stops at its length; without it, the short ones keep
# changing while they read zeros.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
out_no_len, _ = lstm(params, x_padded, config=config)
for n, length in enumerate(lengths.tolist()):
    (line,) = axes[0].plot(np.asarray(out[:, n, 0]), marker="o", ms=3, label=f"length {length}")
    axes[1].plot(np.asarray(out_no_len[:, n, 0]), marker="o", ms=3, color=line.get_color())
    axes[1].axvline(length - 1, color=line.get_color(), ls=":", lw=1)
axes[0].set_title("with seq_lengths (packed semantics)")
axes[1].set_title("without seq_lengths (padding is read)")
for ax in axes:
    ax.set_xlabel("time step")
axes[0].set_ylabel("output[t, n, 0]")
axes[0].legend(fontsize=8)
show(fig, "01_seq_lengths")

# %% [markdown]
# ## 4. The Flax modules
#
# `fl.nnx.LSTM` and `fl.linen.LSTM` take torch's constructor arguments, own the parameters
# (with the same keys and shapes as `init_params`) and call `fl.lstm` once per forward.
# An NNX module is stateful: build it with `rngs`, call it, and switch dropout with
# `.train()` / `.eval()`. A Linen module is stateless: `init` infers the input size and
# `apply` runs it.

# %%
model = fl.nnx.LSTM(INPUT, HIDDEN, num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))


# nnx.jit traces the module call once; the module's state (its dropout stream) flows through.
@nnx.jit(static_argnames=("return_all_states", "deterministic"))
def run_model(model, x, lengths, return_all_states=False, deterministic=None):
    return model(
        x, seq_lengths=lengths, return_all_states=return_all_states, deterministic=deterministic
    )


model.eval()  # no dropout, as torch_module.eval()
out_nnx, (h_nnx, _) = run_model(model, x_padded, lengths)
out_ref, (h_ref, _) = lstm(model.lstm_params(), x_padded, config=model.config, seq_lengths=lengths)
assert np.array_equal(out_nnx, out_ref) and np.array_equal(h_nnx, h_ref)

model.train()  # dropout between the two layers, a fresh mask per call
out_train_1, _ = run_model(model, x_padded, lengths)
out_train_2, _ = run_model(model, x_padded, lengths)
assert not np.array_equal(out_train_1, out_train_2)
print("nnx:", model.config, "| eval = functional call; train mode draws new dropout masks")

module = fl.linen.LSTM(hidden_size=HIDDEN, num_layers=2)
variables = jax.jit(module.init)(jax.random.key(0), x_padded)
out_linen, (h_linen, _) = jax.jit(module.apply)(variables, x_padded, seq_lengths=lengths)
print("linen params:", jax.tree.map(jnp.shape, variables["params"]["layer_0"]))
assert out_linen.shape == out_nnx.shape and h_linen.shape == h_nnx.shape
# The Linen module's parameters are the functional layout too.
linen_params = module.lstm_params(variables)
out_fn, _ = lstm(linen_params, x_padded, config=model.config, seq_lengths=lengths)
assert np.array_equal(out_fn, out_linen)

# %% [markdown]
# Both modules can also hand back every per-step state of every layer
# (`return_all_states=True`), useful for analysing what the network does, as notebook 3 does.

# %%
_, (h_n, _), states = run_model(
    model, x_padded, lengths, return_all_states=True, deterministic=True
)
print("per-step h:", states.h.shape, "= (L, D·layers, N, H)")
assert states.h.shape == (L, 2, N, HIDDEN)
for n, length in enumerate(lengths.tolist()):
    assert np.allclose(states.h[length - 1, :, n], h_n[:, n])

# %% [markdown]
# ## 5. `jit` and `grad`
#
# `fl.lstm` is a pure function, so it composes with every JAX transform. The config is a
# static argument (it is hashable); the parameters are an ordinary pytree, so `jax.grad`
# returns gradients with the parameters' structure, and `to_torch_state_dict` names them in
# torch's terms.


# %%
@partial(jax.jit, static_argnames="config")
def loss_fn(params, x, lengths, target, config):
    _, (h_n, _) = fl.lstm(params, x, config=config, seq_lengths=lengths)
    return jnp.mean((h_n[-1] - target) ** 2)


target = jnp.ones((N, HIDDEN)) * 0.5
loss = loss_fn(params, x_padded, lengths, target, config)
grads = jax.jit(jax.grad(loss_fn), static_argnames="config")(
    params, x_padded, lengths, target, config
)
print(f"loss {float(loss):.4f}")
for name, g in fl.to_torch_state_dict(grads, config).items():
    print(f"  d loss / d {name:14s} {g.shape!s:10s} |g| = {np.linalg.norm(g):.4f}")
assert jax.tree.structure(grads) == jax.tree.structure(params)

# The gradient is the real derivative: a small step against it lowers the loss, and the
# change matches the first-order prediction -lr·|g|².
lr = 1e-2
stepped = jax.tree.map(lambda p, g: p - lr * g, params, grads)
predicted = -lr * sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads))
actual = float(loss_fn(stepped, x_padded, lengths, target, config) - loss)
print(f"loss change: predicted {predicted:.3e}, actual {actual:.3e}")
assert actual < 0 and abs(actual - predicted) < 0.1 * abs(predicted)

# %% [markdown]
# A few gradient steps with plain SGD under `jit` fit the target. The step is traced and
# compiled once; every step after the first reuses it (`chex.assert_max_traces` would raise
# otherwise).


# %%
@partial(jax.jit, static_argnames="config")
@chex.assert_max_traces(n=1)
def sgd_step(params, x, lengths, target, config):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, lengths, target, config)
    return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), loss


p, losses = params, []
for _ in range(200 if FULL else 60):
    p, loss = sgd_step(p, x_padded, lengths, target, config)
    losses.append(float(loss))
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
assert losses[-1] < 0.5 * losses[0]

fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogy(losses)
ax.set_xlabel("SGD step")
ax.set_ylabel("loss")
ax.set_title("fitting h_n to a target under jax.jit")
show(fig, "01_sgd")

# %% [markdown]
# ## 6. Streaming a long sequence
#
# A unidirectional LSTM is a left-to-right recurrence, so a long sequence can be fed in chunks,
# passing each call's `(h_n, c_n)` as the next call's `hx`: the result is the same as one call
# over the whole sequence. `fl.streaming.chunk_lengths` keeps `seq_lengths` right chunk by
# chunk, and `fl.streaming.reset_state` restarts chosen batch rows. Notebook 5 trains a
# language model this way (truncated backpropagation through time).

# %%
long_x = jax.random.normal(jax.random.key(2), (40, N, INPUT))
long_lengths = jnp.array([40, 25, 8, 33])
full_out, (h_full, c_full) = lstm(params, long_x, config=config, seq_lengths=long_lengths)
hx, chunks, CHUNK = None, [], 10
for start in range(0, 40, CHUNK):
    chunk_len = fl.streaming.chunk_lengths(long_lengths, start, CHUNK)
    out, hx = lstm(params, long_x[start : start + CHUNK], hx, config=config, seq_lengths=chunk_len)
    chunks.append(out)
assert np.allclose(jnp.concatenate(chunks), full_out, atol=1e-5)
assert np.allclose(hx[0], h_full, atol=1e-5) and np.allclose(hx[1], c_full, atol=1e-5)
print("4 chunks of 10 steps = one call over 40 steps (outputs and final states)")

restarted = fl.streaming.reset_state(hx, jnp.array([False, True, False, False]))
assert (restarted.h[:, 1] == 0).all() and np.array_equal(restarted.h[:, 0], hx[0][:, 0])

# %% [markdown]
# ## Where next
#
# - `02_from_pytorch.py`: move a trained `torch.nn.LSTM` into JAX and back, with identical
#   numbers and gradients.
# - `03_classification.py`: speaker recognition on the Japanese Vowels data with an NNX model.
# - `04_forecasting.py`: forecasting yearly sunspots against classical baselines.
# - `05_char_language_model.py`: a character-level language model with truncated BPTT in
#   bfloat16.
# - `06_speed.py`: `flax_lstm` against torch and Flax's own `nn.RNN`.

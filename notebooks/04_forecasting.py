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
# # Forecasting sunspots
#
# The yearly mean sunspot number (1700–2008, NOAA NGDC, public domain) is one of the oldest
# benchmark series in time-series analysis: a roughly 11-year cycle whose peaks vary a lot in
# height and whose rises are shorter than its falls (a linear autoregression with Gaussian
# noise cannot produce that: it looks the same run backwards). We train a small LSTM on
# 1700–1928, choose when to stop on 1929–1958, and forecast the held-out years 1959–2008,
# comparing it with two classical baselines:
#
# - **persistence**: next year is this year (the naive forecast every model must beat);
# - **linear autoregression** AR(p): least squares on the previous p years, with p chosen on
#   the validation years (Yule fitted the first such model to this very series in 1927).
#
# Two kinds of forecast: one step ahead (each year from all the years before it), and free
# running up to 11 years ahead from every origin in the test span, the model feeding its own
# predictions back in. Errors are in sunspot numbers.

# %%
import os
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import flax_lstm as fl
from flax_lstm.data import load_sunspots

FULL = os.environ.get("FLAX_LSTM_FULL", "0") == "1"
FIGURES = Path(os.environ.get("FLAX_LSTM_FIGURES") or tempfile.mkdtemp(prefix="flax_lstm_"))
FIGURES.mkdir(parents=True, exist_ok=True)

HIDDEN = 64 if FULL else 32
STEPS = 2000 if FULL else 600  # full-batch Adam steps (the training span is one sequence)
EVAL_EVERY = 25
HORIZON = 11  # years: about one solar cycle
VAL_START, TEST_START = 1929, 1959


def show(fig, name):
    """Save a figure to FIGURES; display it when the backend can (Jupyter), else close it."""
    fig.savefig(FIGURES / f"{name}.png", dpi=100, bbox_inches="tight")
    if "agg" in matplotlib.get_backend().lower():
        plt.close(fig)
    else:
        plt.show()


print(f"full-size run: {FULL} (hidden {HIDDEN}, {STEPS} steps); figures in {FIGURES}")

# %% [markdown]
# ## The series and the split

# %%
year, activity = load_sunspots()
i_val = int(np.flatnonzero(year == VAL_START)[0])
i_test = int(np.flatnonzero(year == TEST_START)[0])
print(
    f"{len(year)} years {year[0]}–{year[-1]}: train {i_val}, validation {i_test - i_val}, "
    f"test {len(year) - i_test}"
)

fig, ax = plt.subplots(figsize=(11, 3))
ax.plot(year, activity, color="black", lw=1)
ax.axvspan(VAL_START, TEST_START, color="tab:orange", alpha=0.15, label="validation")
ax.axvspan(TEST_START, year[-1], color="tab:blue", alpha=0.15, label="test (held out)")
ax.set_xlabel("year")
ax.set_ylabel("sunspot number")
ax.legend(loc="upper left")
show(fig, "04_series")

# The asymmetry in numbers: the series goes up in fewer years than it goes down.
rising = float(np.mean(np.diff(activity) > 0))
print(f"years with a rise: {rising:.0%}")
assert rising < 0.45

# The model sees the series divided by the largest training value (no peeking at the rest).
scale = float(activity[:i_val].max())
z = (activity / scale).astype(np.float32)


def rmse(pred, truth):
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(truth)) ** 2)))


def mae(pred, truth):
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(truth))))


# %% [markdown]
# ## The LSTM
#
# One `fl.nnx.LSTM` layer reads the series one year at a time (an unbatched `(L, 1)` input)
# and a linear readout predicts the next year from every hidden state. The whole training
# span is one sequence, so a training step is one full-batch gradient of the one-step-ahead
# squared error: one compile, milliseconds per step. We keep the weights that do best on the
# validation years.


# %%
class Forecaster(nnx.Module):
    def __init__(self, hidden, *, rngs):
        self.lstm = fl.nnx.LSTM(1, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, z, hx=None):
        """z: (L,) scaled values -> predictions of the next value (L,), and the final state."""
        out, state = self.lstm(z[:, None], hx)
        return self.head(out)[:, 0], state


model = Forecaster(HIDDEN, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4), wrt=nnx.Param)
inputs, targets = jnp.asarray(z[:-1]), jnp.asarray(z[1:])  # predict year t+1 from years ≤ t


@nnx.jit
def train_step(model, optimizer):
    def loss_fn(model):
        pred, _ = model(inputs[: i_val - 1])
        return jnp.mean((pred - targets[: i_val - 1]) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def one_step_predictions(model):
    return model(inputs)[0]  # [t] predicts year t+1 from years 0..t


history, best = [], (np.inf, None, 0)
t0 = time.perf_counter()
for step in range(1, STEPS + 1):
    loss = train_step(model, optimizer)
    if step % EVAL_EVERY == 0:
        pred = np.asarray(one_step_predictions(model)) * scale
        val = rmse(pred[i_val - 1 : i_test - 1], activity[i_val:i_test])
        history.append((step, float(loss), val))
        if val < best[0]:
            best = (val, nnx.clone(nnx.state(model, nnx.Param)), step)
print(
    f"{STEPS} steps in {time.perf_counter() - t0:.1f}s; best validation RMSE {best[0]:.1f} "
    f"at step {best[2]}"
)
nnx.update(model, best[1])

fig, ax = plt.subplots(figsize=(6, 3.2))
steps_, losses, vals = zip(*history, strict=True)
ax.plot(steps_, np.sqrt(losses) * scale, label="train (one-step RMSE)")
ax.plot(steps_, vals, label="validation (one-step RMSE)")
ax.axvline(best[2], color="gray", ls=":", label="kept")
ax.set_yscale("log")
ax.set_xlabel("Adam step")
ax.set_ylabel("RMSE (sunspot number)")
ax.legend()
show(fig, "04_training")

# %% [markdown]
# ## The baselines
#
# Persistence needs no fitting. The autoregression is fitted by least squares on the training
# years; its order p is the one with the lowest one-step error on the validation years.


# %%
def ar_design(series, p, targets_idx):
    """Rows [z[t-p], ..., z[t-1], 1] for each target index t."""
    return np.stack([np.r_[series[t - p : t], 1.0] for t in targets_idx])


ar_fits = {}
for p in range(1, 16):
    w = np.linalg.lstsq(ar_design(z, p, range(p, i_val)), z[p:i_val], rcond=None)[0]
    val_pred = ar_design(z, p, range(i_val, i_test)) @ w * scale
    ar_fits[p] = (rmse(val_pred, activity[i_val:i_test]), w)
P = min(ar_fits, key=lambda p: ar_fits[p][0])
ar_w = ar_fits[P][1]
print(f"AR order chosen on validation: p = {P} (validation RMSE {ar_fits[P][0]:.1f})")

# %% [markdown]
# ## One step ahead on the held-out years

# %%
truth = activity[i_test:]
one_step = {
    "persistence": activity[i_test - 1 : -1],
    f"AR({P})": ar_design(z, P, range(i_test, len(z))) @ ar_w * scale,
    "LSTM": np.asarray(one_step_predictions(model))[i_test - 1 :] * scale,
}
one_step_rmse = {name: rmse(pred, truth) for name, pred in one_step.items()}

fig, ax = plt.subplots(figsize=(11, 3.5))
ax.plot(year[i_test:], truth, "k-", lw=2, label="truth")
styles = {"persistence": ":", f"AR({P})": "--", "LSTM": "-"}
for name, pred in one_step.items():
    ax.plot(year[i_test:], pred, styles[name], label=f"{name} (RMSE {one_step_rmse[name]:.1f})")
ax.set_xlabel("year")
ax.set_ylabel("sunspot number")
ax.set_title("one-step-ahead forecasts of the held-out years 1959–2008")
ax.legend(loc="upper right", fontsize=8)
show(fig, "04_one_step")

# %% [markdown]
# ## Free-running forecasts up to 11 years ahead
#
# From every origin year in the test span, each method forecasts the next 11 years from the
# history up to the origin alone. The LSTM does this by carrying its state: we read the true
# history once with `return_all_states=True`, which gives the LSTM's state at every origin;
# from there it runs on its own predictions, all origins in one batch (`hx` holds one state
# per origin). Persistence repeats the origin's value; the AR model iterates its recursion.

# %%
origins = np.arange(i_test - 1, len(z) - 1)  # forecast from the end of year `origin`


@nnx.jit(static_argnames="horizon")
def free_run(model, z, origins, horizon):
    """(len(origins), horizon) forecasts (scaled) from the state after reading z[: o + 1]."""
    pred, _, states = model.lstm(z[:, None], return_all_states=True)  # states: (L, layers, H)
    h = jnp.swapaxes(states.h[origins], 0, 1)  # (layers, N, H): one batch row per origin
    c = jnp.swapaxes(states.c[origins], 0, 1)
    value = model.head(pred[origins])  # (N, 1): the forecast of origin + 1
    forecasts = [value[:, 0]]
    for _ in range(horizon - 1):
        out, (h, c) = model.lstm(value[None], (h, c))  # one step, (1, N, 1) time-major
        value = model.head(out[0])
        forecasts.append(value[:, 0])
    return jnp.stack(forecasts, axis=1)


lstm_runs = np.asarray(free_run(model, jnp.asarray(z), jnp.asarray(origins), HORIZON)) * scale
# Consistency: the first step of a free run is the one-step forecast.
assert np.allclose(lstm_runs[:, 0], one_step["LSTM"], atol=1e-3)

ar_runs = np.zeros_like(lstm_runs)
for k, o in enumerate(origins):
    window = list(z[o + 1 - P : o + 1])
    for h in range(HORIZON):
        window.append(float(np.r_[window[-P:], 1.0] @ ar_w))
        ar_runs[k, h] = window[-1] * scale
persistence_runs = np.repeat(activity[origins][:, None], HORIZON, axis=1)
runs = {"persistence": persistence_runs, f"AR({P})": ar_runs, "LSTM": lstm_runs}

horizons = np.arange(1, HORIZON + 1)
rmse_by_horizon = {}
for name, r in runs.items():
    rows = []
    for h in horizons:
        ok = origins + h < len(z)  # the target year is in the data
        rows.append(rmse(r[ok, h - 1], activity[origins[ok] + h]))
    rmse_by_horizon[name] = np.array(rows)

fig, (ax_h, ax_ex) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2]})
for name, errors in rmse_by_horizon.items():
    ax_h.plot(horizons, errors, "o" + styles[name], label=name)
ax_h.set_xlabel("years ahead")
ax_h.set_ylabel("RMSE over test origins")
ax_h.legend()
ax_ex.plot(year[i_test - 12 :], activity[i_test - 12 :], "k-", lw=2, label="truth")
for k, origin_year in enumerate((1964, 1975, 1985, 1996)):
    o = int(np.flatnonzero(year[origins] == origin_year)[0])
    span = year[origins[o]] + horizons
    keep = span <= year[-1]
    first = k == 0  # label each method once
    ax_ex.plot(span[keep], lstm_runs[o][keep], "-", color="tab:green", label="LSTM" * first)
    ax_ex.plot(span[keep], ar_runs[o][keep], "--", color="tab:orange", label=f"AR({P})" * first)
    ax_ex.plot(year[origins[o]], activity[origins[o]], "ks", ms=5)
ax_ex.set_xlabel("year")
ax_ex.set_title("11-year free runs from four origins (squares)")
ax_ex.legend(loc="upper right", fontsize=8)
show(fig, "04_free_run")

# %% [markdown]
# ## The errors

# %%
rows = []
for name in runs:
    rows.append(
        (
            name,
            one_step_rmse[name],
            mae(one_step[name], truth),
            rmse_by_horizon[name][4],
            rmse_by_horizon[name].mean(),
        )
    )
header = ("method", "1-step RMSE", "1-step MAE", "5-year RMSE", "mean RMSE 1–11 y")
print("| " + " | ".join(header) + " |")
print("|---" * len(header) + "|")
for name, *values in rows:
    print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")

# The claims of this notebook, checked: the LSTM beats the naive forecast clearly, one step
# ahead and over the whole 11-year range.
assert one_step_rmse["LSTM"] < 0.8 * one_step_rmse["persistence"], one_step_rmse
assert rmse_by_horizon["LSTM"].mean() < 0.8 * rmse_by_horizon["persistence"].mean()

# %% [markdown]
# Persistence is hard to beat one year ahead only where the series is flat; across a cycle
# it is far off. The linear autoregression is a strong baseline on this series: whether the
# small LSTM beats it depends on the run (the table above is this run's, not a general
# verdict). A larger LSTM trained longer (`FLAX_LSTM_FULL=1`), ensembles of seeds, or a
# square-root transform of the counts are the usual next steps.

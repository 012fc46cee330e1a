"""The main job: train and evaluate an LSTM sequence classifier with optax, on one or many devices.

The model is the functional core (`flax_lstm.lstm` with ``seq_lengths``, so variable-length
series are never truncated) followed by a linear head on pooled features: by default the masked
mean of the LSTM's outputs over each series' valid steps concatenated with the final hidden
state of each direction (``pooling="mean+last"``). By default ``members=8`` such models (small,
independently initialised) are trained side by side as one vmapped model on the same batches,
each on its own loss, and predict by averaging their probabilities; Gaussian input noise and
dropout on the pooled features regularise them. Everything is plain JAX: parameters are a
pytree, the train step is one `jax.jit` compiled once (batches are padded to a fixed shape), and
the optimizer is optax's AdamW with global-norm gradient clipping and a warmup + cosine
learning-rate schedule; early stopping watches the loss on a stratified validation split of the
training data, and the epoch with the best validation loss is the model that is kept.

Data parallelism: a `jax.sharding.Mesh` over every device along one ``data`` axis; each batch
is sharded along it, parameters and optimizer state are replicated, and XLA inserts the gradient
all-reduce. Batches are padded to a multiple of the device count with rows of weight 0, so the
result does not depend on the number of devices beyond float rounding. On several hosts, call
`jax.distributed.initialize()` first (``flax-lstm train --distributed``); every process reads
the same data and feeds its own devices' shards, and the run folder must be on a shared file
system (process 0 writes the JSON files and plots; orbax coordinates the checkpoint).

Reproducibility: the validation split, initialisation, the data order of every epoch and every
dropout mask derive from ``(seed, epoch, step)`` alone, and checkpoints (orbax, committed
atomically) hold the parameters, the optimizer state and the early-stopping state, so a run
that is stopped and resumed ends with exactly the parameters of an uninterrupted run.

A run folder holds ``config.json`` (the resolved configuration, class names and normalisation
statistics), ``checkpoints/`` (orbax), ``metrics.json`` (written when the run has finished),
``learning_curves.png`` and ``confusion_matrix.png``.

Example:
  >>> import tempfile
  >>> from flax_lstm.train import TrainConfig, train, evaluate
  >>> config = TrainConfig(epochs=1, hidden_size=4, members=1, val_fraction=0.0)
  >>> with tempfile.TemporaryDirectory() as d:
  ...     result = train(config, out=f"{d}/run", quiet=True)
  ...     again = evaluate(f"{d}/run")
  >>> again["test_accuracy"] == result.metrics["test_accuracy"]
  True
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import flax_lstm as fl
from flax_lstm import data as fdata

__all__ = [
    "RunData",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "evaluate",
    "load_run_config",
    "train",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
POOLINGS = ("mean", "last", "mean+last")


class TrainError(Exception):
    """A training or evaluation run cannot go on (the message says why, in one line)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so its result, given the data).

    Args:
      train: a ``.ts`` or ``.npz`` training file; None for the bundled Japanese Vowels data.
      test: the matching test file (required with ``train``).
      epochs: the most epochs to train; early stopping may end sooner.
      hidden_size: LSTM hidden size per direction.
      num_layers: stacked LSTM layers.
      bidirectional: run a reverse direction too.
      dropout: dropout rate on the pooled features before the head, and (torch semantics)
        between LSTM layers when ``num_layers > 1``.
      lr: peak learning rate of the warmup + cosine schedule.
      batch_size: series per optimizer step (over all devices together); None: a sixth of the
        training examples, clipped to [4, 32], so that small data sets still get six steps
        an epoch.
      seed: seeds the validation split, initialisation, data order and dropout.
      weight_decay: AdamW's decoupled weight decay (not applied to biases).
      clip_norm: gradients are clipped to this global norm.
      warmup: fraction of the step budget spent warming the learning rate up from 0.
      val_fraction: fraction of each class of the training data held out for validation
        (early stopping, choice of the best epoch); 0 trains on everything for ``epochs``.
      patience: stop after this many epochs without a better validation loss.
      pooling: what the head sees: ``"mean"`` (masked mean of the outputs over each series'
        valid steps), ``"last"`` (final hidden state of each direction) or ``"mean+last"``
        (both, concatenated).
      input_noise: standard deviation of Gaussian noise added to the (normalised) inputs
        during training; 0 disables it.
      members: train this many independently initialised LSTM + head models side by side (one
        vmapped model, the same batches) and average their predicted probabilities.
    """

    train: str | None = None
    test: str | None = None
    epochs: int = 100
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    lr: float = 3e-3
    batch_size: int | None = None
    seed: int = 0
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    warmup: float = 0.05
    val_fraction: float = 0.1
    patience: int = 30
    pooling: str = "mean+last"
    input_noise: float = 0.3
    members: int = 8

    def validate(self) -> TrainConfig:
        """Check every field; raise `TrainError` naming the first bad one. Returns self."""
        if (self.train is None) != (self.test is None):
            raise TrainError("give both --train and --test, or neither for the bundled data")
        positive = ("epochs", "hidden_size", "num_layers", "batch_size", "patience", "members")
        for name in positive:
            value = getattr(self, name)
            if name == "batch_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise TrainError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.input_noise, (int, float)) or not self.input_noise >= 0:
            raise TrainError(f"input_noise must be >= 0, got {self.input_noise!r}")
        for name in ("dropout", "warmup", "val_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise TrainError(f"{name} must lie in [0, 1), got {value!r}")
        for name in ("lr", "clip_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TrainError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise TrainError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.pooling not in POOLINGS:
            raise TrainError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainError(f"unknown training settings {unknown}")
        return cls(**values)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      run_dir: the run folder.
      metrics: the content of ``metrics.json``; only ``{"epochs_run"}`` when
        ``stop_after_epochs`` stopped the run.
      params: the selected (best-validation) model parameters, ``{"lstm": ..., "head": ...}``.
      state: the final training state ``{"params", "opt_state", "step"}``.
      finished: False when ``stop_after_epochs`` stopped the run before its end.
    """

    run_dir: Path
    metrics: dict[str, Any]
    params: Any
    state: Any
    finished: bool


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class RunData:
    """Normalised, label-encoded arrays ready for the model (padded to ``max_length``)."""

    x: np.ndarray  # (N, T, C) float32
    lengths: np.ndarray  # (N,) int32
    y: np.ndarray  # (N,) int32 class indices

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray) -> RunData:
        return RunData(self.x[idx], self.lengths[idx], self.y[idx])


def _label_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _classes(ds: fdata.SequenceDataset) -> list[str]:
    """Class names in natural order (numbers by value, then strings)."""
    return sorted(set(ds.y.tolist()), key=_label_key)


def _split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) indices; every class keeps at least one fit example.

    ``round(fraction * N)`` examples go to validation, shared among the classes in proportion
    to their sizes (largest remainders first, so small classes still contribute).
    """
    rng = np.random.default_rng([seed, 0])
    classes, counts = np.unique(y, return_counts=True)
    exact = fraction * counts
    k = np.floor(exact).astype(np.int64)
    rest = round(fraction * y.size) - int(k.sum())
    if rest > 0:
        order = np.lexsort((rng.random(classes.size), -(exact - k)))
        k[order[:rest]] += 1
    k = np.minimum(k, counts - 1)
    fit, val = [], []
    for c, kc in zip(classes, k, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.extend(idx[:kc])
        fit.extend(idx[kc:])
    return np.sort(np.array(fit, np.int64)), np.sort(np.array(val, np.int64))


def _norm_stats(ds: fdata.SequenceDataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the valid (non-missing) steps of the series ``idx``."""
    x = ds.x[idx].astype(np.float64)
    valid = np.arange(x.shape[1])[None, :] < ds.lengths[idx][:, None]
    values = np.where(valid[:, :, None], x, np.nan).reshape(-1, x.shape[2])
    count = (~np.isnan(values)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
        var = np.nansum((values - mean) ** 2, axis=0) / np.maximum(count, 1)
    std = np.sqrt(var)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, std


def _encode(
    ds: fdata.SequenceDataset,
    classes: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    max_length: int,
    what: str,
) -> RunData:
    """Normalise ``ds`` with the training statistics and map its labels to class indices."""
    if ds.num_channels != len(mean):
        raise TrainError(
            f"{what} data ({ds.name}) has {ds.num_channels} channels but the training data has "
            f"{len(mean)}"
        )
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(ds.y.tolist()) - set(index), key=_label_key)
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
        raise TrainError(
            f"{what} data ({ds.name}) has labels that training never saw: {shown} "
            f"(training classes: {', '.join(classes[:20])})"
        )
    n, t = len(ds), max(max_length, ds.max_length)
    x = np.zeros((n, t, ds.num_channels), np.float32)
    valid = np.arange(ds.max_length)[None, :, None] < ds.lengths[:, None, None]
    z = (ds.x.astype(np.float64) - mean) / std
    z = np.where(valid & ~np.isnan(z), z, 0.0)  # missing values → the training mean
    x[:, : ds.max_length] = z
    y = np.array([index[v] for v in ds.y.tolist()], np.int32)
    return RunData(x, ds.lengths.astype(np.int32), y)


def _load_sources(config: TrainConfig) -> tuple[fdata.SequenceDataset, fdata.SequenceDataset]:
    if config.train is None:
        return fdata.load_japanese_vowels()
    return fdata.read_dataset(config.train), fdata.read_dataset(config.test)


def _fingerprint(*datasets: fdata.SequenceDataset) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        for a in (ds.x, ds.lengths, ds.y.astype(str)):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- model


def _lstm_config(config: TrainConfig, input_size: int) -> fl.LSTMConfig:
    return fl.LSTMConfig(
        input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        batch_first=True,
        bidirectional=config.bidirectional,
        dropout=config.dropout if config.num_layers > 1 else 0.0,
    )


def init_model(
    key: jax.Array, lstm_config: fl.LSTMConfig, num_classes: int, pooling: str = "mean"
) -> dict[str, Any]:
    """Parameters ``{"lstm": fl.init_params(...), "head": {"w": (F, K), "b": (K,)}}``."""
    k_lstm, k_head = jax.random.split(key)
    features = lstm_config.num_directions * lstm_config.output_size * len(pooling.split("+"))
    bound = 1.0 / math.sqrt(features)
    return {
        "lstm": fl.init_params(k_lstm, lstm_config),
        "head": {
            "w": jax.random.uniform(k_head, (features, num_classes), jnp.float32, -bound, bound),
            "b": jnp.zeros((num_classes,), jnp.float32),
        },
    }


def forward(
    params: dict[str, Any],
    x: jax.Array,
    lengths: jax.Array,
    *,
    lstm_config: fl.LSTMConfig,
    pooling: str = "mean",
    dropout: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Class logits ``(N, K)`` for a padded batch ``x`` ``(N, T, C)`` with ``lengths`` ``(N,)``.

    Dropout (``key`` given) applies between LSTM layers and to the pooled features.
    """
    lstm_key = feat_key = None
    if key is not None:
        lstm_key, feat_key = jax.random.split(key)
    out, (h_n, _) = fl.lstm(
        params["lstm"], x, config=lstm_config, seq_lengths=lengths, dropout_key=lstm_key
    )
    d = lstm_config.num_directions
    parts = []
    if pooling in ("mean", "mean+last"):  # outputs are zero past each length: a masked mean
        parts.append(out.sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(out.dtype))
    if pooling in ("last", "mean+last"):  # (N, D·H): each direction's final state
        parts.append(jnp.concatenate(list(h_n[-d:]), axis=-1))
    feats = jnp.concatenate(parts, axis=-1)
    if feat_key is not None and dropout > 0:
        keep = jax.random.bernoulli(feat_key, 1.0 - dropout, feats.shape)
        feats = jnp.where(keep, feats / (1.0 - dropout), 0.0)
    return feats @ params["head"]["w"] + params["head"]["b"]


def _optimizer(
    config: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    warmup = max(1, int(config.warmup * total_steps)) if config.warmup > 0 else 0
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, warmup, max(total_steps, warmup + 1), end_value=config.lr * 0.01
    )

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not str(getattr(path[-1], "key", "")).startswith("b"), params
        )

    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
    ), schedule


# ------------------------------------------------------------------------- devices


class _Devices:
    """A 1-D mesh over every device (all hosts) along the ``data`` axis."""

    def __init__(self) -> None:
        devices = np.array(jax.devices())
        self.mesh = Mesh(devices, ("data",))
        self.count = devices.size
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P("data"))

    def round_up(self, n: int) -> int:
        return -(-n // self.count) * self.count

    def put_batch(self, array: np.ndarray) -> jax.Array:
        # Every process holds the whole (identical) batch and supplies its devices' shards.
        return jax.make_array_from_callback(array.shape, self.batch, lambda idx: array[idx])


def _padded(data: RunData, idx: np.ndarray, rows: int) -> tuple[np.ndarray, ...]:
    """Rows ``idx`` of ``data`` padded to ``rows`` with copies of a real row of weight 0."""
    m = idx.size
    full = np.concatenate([idx, np.full(rows - m, idx[0] if m else 0, idx.dtype)])
    w = (np.arange(rows) < m).astype(np.float32)
    return data.x[full], data.lengths[full], data.y[full], w


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


# ------------------------------------------------------------------------ run files


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainError(f"{path.parent}: no {path.name}; {what}") from None
    except (OSError, ValueError) as e:
        raise TrainError(f"{path}: unreadable ({e})") from None


def load_run_config(run: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` a run folder was trained with."""
    saved = _read_json(Path(run) / CONFIG_FILE, "not a flax-lstm run folder")
    return TrainConfig.from_dict(saved["train_config"])


class _Checkpoints:
    """Orbax checkpoints: ``state`` (to resume), ``model`` (the selected params), ``meta``."""

    def __init__(self, directory: Path, create: bool) -> None:
        import orbax.checkpoint as ocp

        self.ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=create, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, model: Any, meta: dict[str, Any]) -> None:
        args = self.ocp.args
        self.manager.save(
            epoch,
            args=args.Composite(
                state=args.StandardSave(state),
                model=args.StandardSave(model),
                meta=args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, epoch: int, **abstract: Any) -> dict[str, Any]:
        args = self.ocp.args
        items = {k: args.StandardRestore(v) for k, v in abstract.items()}
        restored = self.manager.restore(
            epoch, args=args.Composite(meta=args.JsonRestore(), **items)
        )
        return {k: restored[k] for k in ("meta", *abstract)}

    def close(self) -> None:
        self.manager.close()


def _restore(ckpts: _Checkpoints, epoch: int, run_dir: Path, **abstract: Any) -> dict[str, Any]:
    try:
        return ckpts.restore(epoch, **abstract)
    except Exception as e:  # orbax/tensorstore errors: a damaged or foreign checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TrainError(f"{run_dir}: cannot restore checkpoint {epoch}: {first}") from None


# ------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=8)
def _step_functions(config: TrainConfig, lstm_config: fl.LSTMConfig, total_steps: int, mesh: Mesh):
    """The optimizer and the jitted train/eval steps; cached, so runs alike compile once."""
    tx, schedule = _optimizer(config, total_steps)
    rep = NamedSharding(mesh, P())
    model_fn = functools.partial(
        forward, lstm_config=lstm_config, pooling=config.pooling, dropout=config.dropout
    )
    base_key = jax.random.fold_in(jax.random.key(config.seed), 2)
    noise, members = config.input_noise, config.members

    def member_log_probs(params, x, lengths, key=None):
        """(K, N, classes) log-probabilities of each ensemble member."""
        if members == 1:
            return jax.nn.log_softmax(model_fn(params, x, lengths, key=key))[None]
        keys = None if key is None else jax.random.split(key, members)
        fn = lambda p, k: jax.nn.log_softmax(model_fn(p, x, lengths, key=k))  # noqa: E731
        return jax.vmap(fn, in_axes=(0, None if key is None else 0))(params, keys)

    def ensemble(logp):
        return jax.nn.logsumexp(logp, axis=0) - math.log(members)

    def train_step(state, x, lengths, y, w):
        key = jax.random.fold_in(base_key, state["step"])
        if noise > 0:
            key, noise_key = jax.random.split(key)
            valid = jnp.arange(x.shape[1])[None, :, None] < lengths[:, None, None]
            x = x + jnp.where(valid, noise * jax.random.normal(noise_key, x.shape), 0.0)

        def loss_fn(params):
            logp = member_log_probs(params, x, lengths, key)  # (K, N, C)
            member_ce = -jnp.take_along_axis(logp, y[None, :, None], axis=-1)[..., 0]
            member_ce = member_ce.mean(0)  # (N,): the members learn independently
            return (member_ce * w).sum() / jnp.maximum(w.sum(), 1.0), ensemble(logp)

        (_, logp), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ce = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        correct = ((jnp.argmax(logp, -1) == y) * w).sum()
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, jnp.stack([(ce * w).sum(), correct, w.sum()])

    def eval_step(params, x, lengths, y):
        logp = ensemble(member_log_probs(params, x, lengths))
        ce = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        return jnp.argmax(logp, -1), ce

    train_jit = jax.jit(train_step, out_shardings=(rep, rep))
    return tx, schedule, train_jit, jax.jit(eval_step, out_shardings=(rep, rep))


class _Run:
    """Shared set-up of `train` and `evaluate`: data, model, optimizer, jitted functions."""

    def __init__(self, config: TrainConfig, data_info: dict[str, Any], devices: _Devices):
        self.config = config
        self.devices = devices
        self.num_classes = len(data_info["classes"])
        self.lstm_config = _lstm_config(config, data_info["num_channels"])
        self.batch_size = data_info["batch_size"]
        self.train_rows = devices.round_up(self.batch_size)
        self.eval_rows = devices.round_up(data_info["eval_batch_size"])
        self.steps_per_epoch = -(-data_info["n_fit"] // self.batch_size)
        key = dataclasses.replace(config, train=None, test=None)  # paths do not change the code
        total = config.epochs * self.steps_per_epoch
        self.tx, self.schedule, self.train_step, self.eval_step = _step_functions(
            key, self.lstm_config, total, devices.mesh
        )

    def _init_params(self, batched: bool) -> Any:
        """Initial parameters: one member's, or the members' stacked on a leading axis."""
        key = jax.random.fold_in(jax.random.key(self.config.seed), 1)
        init = functools.partial(
            init_model,
            lstm_config=self.lstm_config,
            num_classes=self.num_classes,
            pooling=self.config.pooling,
        )
        if self.config.members == 1:
            return init(key)
        keys = jax.random.split(key, self.config.members)
        if batched:  # traced (eval_shape): one vmapped init
            return jax.vmap(init)(keys)
        members = [init(k) for k in keys]  # eager: reuses each op's compilation
        return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *members)

    def init_state(self) -> dict[str, Any]:
        """The initial training state, replicated over the mesh.

        Built eagerly (a jitted, vmapped init compiles for seconds) and placed shard by shard,
        which also works when the mesh spans several hosts.
        """
        params = self._init_params(batched=False)
        state = {"params": params, "opt_state": self.tx.init(params), "step": np.int32(0)}
        rep = self.devices.replicated

        def place(leaf):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, rep, lambda idx: host[idx])

        return jax.tree.map(place, state)

    def _abstract_init(self) -> dict[str, Any]:
        params = self._init_params(batched=True)
        return {"params": params, "opt_state": self.tx.init(params), "step": jnp.int32(0)}

    def abstract_state(self) -> dict[str, Any]:
        rep = self.devices.replicated
        shapes = jax.eval_shape(self._abstract_init)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)

    def batches(self, data: RunData, order: np.ndarray, size: int, rows: int) -> Iterator[tuple]:
        for start in range(0, len(order), size):
            x, lengths, y, w = _padded(data, order[start : start + size], rows)
            put = self.devices.put_batch
            yield put(x), put(lengths), put(y), put(w)

    def evaluate(self, params: Any, data: RunData) -> dict[str, Any]:
        """Loss, accuracy and predictions of ``params`` on ``data`` (in order)."""
        preds, ces = [], []
        order = np.arange(len(data))
        for x, lengths, y, _ in self.batches(data, order, self.eval_rows, self.eval_rows):
            p, ce = self.eval_step(params, x, lengths, y)
            preds.append(p)
            ces.append(ce)
        pred = np.concatenate([np.asarray(p) for p in preds])[: len(data)]
        ce = np.concatenate([np.asarray(c) for c in ces])[: len(data)]
        correct = int((pred == data.y).sum())
        return {
            "loss": float(ce.astype(np.float64).mean()),
            "accuracy": correct / len(data),
            "correct": correct,
            "pred": pred,
        }


def _describe_source(path: str | None, split: str) -> str:
    return f"{fdata.JAPANESE_VOWELS}/{split} (bundled)" if path is None else path


def _prepare(config: TrainConfig) -> tuple[dict[str, Any], RunData, RunData, RunData]:
    """Read the data and derive the split, classes and normalisation (all before any file)."""
    train_ds, test_ds = _load_sources(config)
    classes = _classes(train_ds)
    if len(classes) < 2:
        raise TrainError(f"training data ({train_ds.name}) has a single class {classes}")
    y_all = np.array([classes.index(v) for v in train_ds.y.tolist()])
    fit_idx, val_idx = _split(y_all, config.val_fraction, config.seed)
    mean, std = _norm_stats(train_ds, fit_idx)
    max_length = max(train_ds.max_length, test_ds.max_length)
    train_all = _encode(train_ds, classes, mean, std, max_length, "training")
    test = _encode(test_ds, classes, mean, std, max_length, "test")
    info = {
        "train": _describe_source(config.train, "train"),
        "test": _describe_source(config.test, "test"),
        "fingerprint": _fingerprint(train_ds, test_ds),
        "classes": classes,
        "num_channels": train_ds.num_channels,
        "max_length": max_length,
        "n_train": len(train_ds),
        "n_fit": int(fit_idx.size),
        "n_val": int(val_idx.size),
        "n_test": len(test_ds),
        # One evaluation shape for validation (every epoch) and test: sized to the validation
        # set so that the per-epoch check wastes little on padding rows.
        "batch_size": config.batch_size or int(np.clip(fit_idx.size // 6, 4, 32)),
        "eval_batch_size": int(min(256, val_idx.size or len(test_ds))),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    return info, train_all.take(fit_idx), train_all.take(val_idx), test


def _resolve_paths(config: TrainConfig) -> TrainConfig:
    if config.train is None:
        return config
    return dataclasses.replace(
        config, train=str(Path(config.train).absolute()), test=str(Path(config.test).absolute())
    )


def _default_out() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    k = 1
    while out.exists():
        out = Path("runs") / f"{stamp}-{k}"
        k += 1
    return out


def _sync(name: str) -> None:
    """Wait for every process (multi-host runs only)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _start_run_dir(out: Path, config: TrainConfig, info: dict[str, Any], run: _Run) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(
            f"{out} already exists and is not empty; continue it with --resume or choose "
            "another --out"
        )
    _sync("flax_lstm: run folder checked")  # every host checks before any host writes
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"cannot create the run folder {out}: {e.strerror or e}") from None
    if jax.process_index() == 0:
        _write_json(out / CONFIG_FILE, _run_config_json(config, info, run))
    _sync("flax_lstm: run folder written")


def _run_config_json(config: TrainConfig, info: dict[str, Any], run: _Run) -> dict[str, Any]:
    return {
        "flax_lstm_version": fl.__version__,
        "train_config": config.to_dict(),
        "model": {
            **dataclasses.asdict(run.lstm_config),
            "pooling": config.pooling,
            "num_classes": run.num_classes,
        },
        "data": info,
    }


def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    quiet: bool = False,
    checkpoint_every_s: float = 10.0,
) -> TrainResult:
    """Train a classifier; write the run folder; return the selected parameters and metrics.

    Args:
      config: the run's settings (default `TrainConfig()`: the bundled Japanese Vowels). With
        ``resume``, None takes the saved ones; a config that differs from them is an error.
      out: the run folder (default ``runs/<timestamp>``); must not hold files unless resuming.
      resume: continue the run in ``out`` from its last checkpoint.
      stop_after_epochs: stop (with a checkpoint) once this many epochs are done; the run can
        then be resumed. The result has ``finished=False`` and no test metrics.
      quiet: no progress bar.
      checkpoint_every_s: save a checkpoint at the end of an epoch once this many seconds
        have passed since the last one; one is always saved after the last epoch, and when
        ``stop_after_epochs`` stops the run.

    Returns:
      `TrainResult`; ``metrics`` is what ``metrics.json`` holds.

    Raises:
      TrainError, flax_lstm.data.DataError: with a one-line message, before writing anything
        for bad settings or data.
    """
    t_start = time.perf_counter()
    if resume:
        if out is None:
            raise TrainError("--resume needs the run folder: --out DIR")
        out = Path(out)
        if not out.is_dir():
            raise TrainError(f"{out}: no such run folder to resume")
        saved = load_run_config(out)
        if config is not None:
            config = _resolve_paths(config)
        if config is not None and config != saved:
            diff = [
                f"{f.name}={getattr(config, f.name)!r} (run has {getattr(saved, f.name)!r})"
                for f in dataclasses.fields(TrainConfig)
                if getattr(config, f.name) != getattr(saved, f.name)
            ]
            raise TrainError(f"--resume keeps the run's settings; these differ: {', '.join(diff)}")
        config = saved
    else:
        config = _resolve_paths((config or TrainConfig()).validate())
        out = Path(out) if out is not None else _default_out()
    config.validate()

    info, fit, val, test = _prepare(config)
    devices = _Devices()
    run = _Run(config, info, devices)
    ckpt_dir = out / CHECKPOINT_DIR

    if resume:
        saved_info = _read_json(out / CONFIG_FILE, "not a flax-lstm run folder")["data"]
        if saved_info["fingerprint"] != info["fingerprint"]:
            raise TrainError(
                f"the data in {info['train']} / {info['test']} changed since the run started; "
                "cannot resume it"
            )
        if not ckpt_dir.is_dir():
            raise TrainError(
                f"{out}: no checkpoint to resume from (the run saved none); delete the folder "
                "and train again"
            )
        ckpts = _Checkpoints(ckpt_dir, create=False)
        last = ckpts.latest()
        if last is None:
            raise TrainError(
                f"{out}: no checkpoint to resume from (the run saved none); delete the folder "
                "and train again"
            )
        abstract = run.abstract_state()
        restored = _restore(ckpts, last, out, state=abstract, model=abstract["params"])
        state, best_params, meta = restored["state"], restored["model"], restored["meta"]
    else:
        _start_run_dir(out, config, info, run)
        ckpts = _Checkpoints(ckpt_dir, create=True)
        state = run.init_state()
        best_params = state["params"]
        meta = {
            "epoch": 0,
            "best_epoch": 0,
            "best_val_loss": None,
            "bad_epochs": 0,
            "done": False,
            "stopped_early": False,
            "elapsed_s": 0.0,
            "history": [],
        }

    try:
        return _train_loop(
            run, config, info, out, ckpts, state, best_params, meta, fit, val, test,
            stop_after_epochs=stop_after_epochs, quiet=quiet,
            checkpoint_every_s=checkpoint_every_s, t_start=t_start,
        )  # fmt: skip
    finally:
        ckpts.close()


def _train_loop(
    run: _Run,
    config: TrainConfig,
    info: dict[str, Any],
    out: Path,
    ckpts: _Checkpoints,
    state: Any,
    best_params: Any,
    meta: dict[str, Any],
    fit: RunData,
    val: RunData,
    test: RunData,
    *,
    stop_after_epochs: int | None,
    quiet: bool,
    checkpoint_every_s: float,
    t_start: float,
) -> TrainResult:
    from tqdm.auto import tqdm

    steps = run.steps_per_epoch
    start_epoch = meta["epoch"]
    elapsed_before = meta["elapsed_s"]
    last_save = time.perf_counter()
    saved_epoch = start_epoch
    bar = tqdm(
        total=config.epochs * steps,
        initial=start_epoch * steps,
        disable=quiet or meta["done"],
        unit="step",
        desc="train",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stopped = False
    used_devices = None
    with bar:
        epoch = start_epoch
        while not meta["done"] and epoch < config.epochs:
            t_epoch = time.perf_counter()
            order = _epoch_order(config.seed, epoch, len(fit))
            stats = []
            for x, lengths, y, w in run.batches(fit, order, run.batch_size, run.train_rows):
                if used_devices is None:
                    used_devices = len(x.sharding.device_set)
                state, s = run.train_step(state, x, lengths, y, w)
                stats.append(s)
                bar.update(1)
            total = np.sum(np.stack(jax.device_get(stats)), axis=0, dtype=np.float64)
            epoch += 1
            record = {
                "epoch": epoch,
                "train_loss": float(total[0] / total[2]),
                "train_accuracy": float(total[1] / total[2]),
                "lr": float(run.schedule(epoch * steps - 1)),
            }
            improved = True
            if len(val):
                v = run.evaluate(state["params"], val)
                record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
                best = meta["best_val_loss"]
                improved = best is None or v["loss"] < best
            if improved:
                best_params = state["params"]
                meta["best_epoch"] = epoch
                meta["best_val_loss"] = record.get("val_loss")
                meta["bad_epochs"] = 0
            else:
                meta["bad_epochs"] += 1
            record["time_s"] = time.perf_counter() - t_epoch
            meta["history"].append(record)
            meta["epoch"] = epoch
            if meta["bad_epochs"] >= config.patience:
                meta["stopped_early"] = True
            meta["done"] = meta["stopped_early"] or epoch >= config.epochs
            stopped = stop_after_epochs is not None and epoch >= stop_after_epochs
            postfix = {"epoch": epoch, "loss": f"{record['train_loss']:.3f}"}
            postfix["acc"] = f"{record['train_accuracy']:.3f}"
            if "val_accuracy" in record:
                postfix["val_acc"] = f"{record['val_accuracy']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            now = time.perf_counter()
            if meta["done"] or stopped or now - last_save >= checkpoint_every_s:
                meta["elapsed_s"] = elapsed_before + now - t_start
                ckpts.save(epoch, state, best_params, meta)
                last_save, saved_epoch = time.perf_counter(), epoch
            if stopped and not meta["done"]:
                return TrainResult(out, {"epochs_run": epoch}, best_params, state, finished=False)
    if saved_epoch != meta["epoch"]:  # cannot happen: the last epoch always saves
        raise AssertionError("final epoch was not checkpointed")

    final = run.evaluate(best_params, test)
    history = meta["history"]
    best = history[meta["best_epoch"] - 1] if meta["best_epoch"] else {}
    wall = elapsed_before + (time.perf_counter() - t_start)
    confusion = np.zeros((run.num_classes, run.num_classes), np.int64)
    np.add.at(confusion, (test.y, final["pred"]), 1)
    metrics = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_correct": final["correct"],
        "n_test": len(test),
        "best_epoch": meta["best_epoch"],
        "best_val_loss": best.get("val_loss"),
        "best_val_accuracy": best.get("val_accuracy"),
        "epochs_run": meta["epoch"],
        "stopped_early": meta["stopped_early"],
        "wall_time_s": wall,
        "device_count": run.devices.count,
        "devices_used": used_devices if used_devices is not None else run.devices.count,
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in run.devices.mesh.devices.flat],
        "seed": config.seed,
        "config": config.to_dict(),
        "data": {k: v for k, v in info.items() if k not in ("mean", "std")},
        "classes": info["classes"],
        "confusion_matrix": confusion.tolist(),
        "history": history,
    }
    if jax.process_index() == 0:
        _write_json(out / METRICS_FILE, metrics)
        _plot_learning_curves(history, meta["best_epoch"], out / "learning_curves.png")
        _plot_confusion(confusion, info["classes"], final["accuracy"], out / "confusion_matrix.png")
    return TrainResult(out, metrics, best_params, state, finished=True)


# ------------------------------------------------------------------------ evaluation


def evaluate(run_dir: str | os.PathLike, *, test: str | os.PathLike | None = None) -> dict:
    """Restore a run's selected parameters and measure them on its test data (or ``test``).

    On the run's own test data the result equals the training run's ``test_accuracy``
    exactly: the same normalisation, padding and batch shapes give the same predictions.

    Args:
      run_dir: a run folder written by `train`.
      test: a ``.ts`` or ``.npz`` file to evaluate on instead of the run's test data.

    Returns:
      ``{"test_accuracy", "test_loss", "test_correct", "n_test", "epoch", "test", "run"}``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"{run_dir}: no such run folder")
    saved = _read_json(run_dir / CONFIG_FILE, "not a flax-lstm run folder")
    config = TrainConfig.from_dict(saved["train_config"])
    info = saved["data"]
    if test is not None:
        test_ds, source = fdata.read_dataset(test), str(test)
    elif config.test is None:
        test_ds, source = fdata.load_japanese_vowels()[1], info["test"]
    else:
        test_ds, source = fdata.read_dataset(config.test), config.test
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    data = _encode(test_ds, info["classes"], mean, std, info["max_length"], "test")
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        raise TrainError(f"{run_dir}: no checkpoint to evaluate")
    ckpts = _Checkpoints(ckpt_dir, create=False)
    try:
        last = ckpts.latest()
        if last is None:
            raise TrainError(f"{run_dir}: no checkpoint to evaluate")
        run = _Run(config, info, _Devices())
        restored = _restore(ckpts, last, run_dir, model=run.abstract_state()["params"])
    finally:
        ckpts.close()
    result = run.evaluate(restored["model"], data)
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_correct": result["correct"],
        "n_test": len(data),
        "epoch": restored["meta"]["best_epoch"],
        "test": source,
        "run": str(run_dir),
    }


# --------------------------------------------------------------------------- plots


def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    _atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _plot_learning_curves(history: list[dict], best_epoch: int, path: Path) -> None:
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        if history and f"val_{key}" in history[0]:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", linestyle="--", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    _save_figure(fig, path)


def _plot_confusion(confusion: np.ndarray, classes: list[str], acc: float, path: Path) -> None:
    from matplotlib.figure import Figure

    k = len(classes)
    size = min(12, 3 + 0.45 * k)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 40:
        ax.set_xticks(range(k), [c[:12] for c in classes], rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), [c[:12] for c in classes])
    if k <= 25:
        hi = confusion.max() / 2 if confusion.size else 0
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    color = "white" if confusion[i, j] > hi else "black"
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test confusion matrix (accuracy {acc:.4f})")
    fig.tight_layout()
    _save_figure(fig, path)

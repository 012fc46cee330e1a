"""The model: `flax_lstm.lstm` (with ``seq_lengths``) and a linear head on pooled features.

Parameters are a plain pytree ``{"lstm": fl.init_params(...), "head": {"w", "b"}}``; an
ensemble of ``members`` models stacks each leaf on a leading axis and is run with `jax.vmap`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_lstm as fl
from flax_lstm import _random
from flax_lstm.train.config import TrainConfig

__all__ = ["forward", "init_members", "init_model", "lstm_config"]


def lstm_config(config: TrainConfig, input_size: int) -> fl.LSTMConfig:
    """The `flax_lstm.LSTMConfig` of a run's LSTM on ``input_size`` channels."""
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
            "w": _random.uniform(k_head, (features, num_classes), jnp.float32, -bound, bound),
            "b": jnp.zeros((num_classes,), jnp.float32),
        },
    }


def init_members(
    config: TrainConfig, lstm_config: fl.LSTMConfig, num_classes: int, *, batched: bool
) -> Any:
    """A run's initial parameters: one member's, or the members' stacked on a leading axis.

    ``batched``: one vmapped init (for tracing under `jax.eval_shape`); else member by member,
    eagerly, which reuses each op's compilation (a jitted, vmapped init compiles for seconds).
    """
    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    init = functools.partial(
        init_model, lstm_config=lstm_config, num_classes=num_classes, pooling=config.pooling
    )
    if config.members == 1:
        return init(key)
    keys = jax.random.split(key, config.members)
    if batched:
        return jax.vmap(init)(keys)
    members = [init(k) for k in keys]
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *members)


def patch_steps(x: jax.Array, lengths: jax.Array, patch: int) -> tuple[jax.Array, jax.Array]:
    """``(N, T, C)`` steps as ``(N, ceil(T / patch), patch * C)`` patches; lengths in patches.

    A series' last patch is completed with zeros (the padding past its length).
    """
    n, t, c = x.shape
    steps = -(-t // patch)
    x = jnp.pad(x, ((0, 0), (0, steps * patch - t), (0, 0)))
    return x.reshape(n, steps, patch * c), (lengths + patch - 1) // patch


def forward(
    params: dict[str, Any],
    x: jax.Array,
    lengths: jax.Array,
    *,
    lstm_config: fl.LSTMConfig,
    pooling: str = "mean",
    dropout: float = 0.0,
    key: jax.Array | None = None,
    patch: int = 1,
) -> jax.Array:
    """Class logits ``(N, K)`` for a padded batch ``x`` ``(N, T, C)`` with ``lengths`` ``(N,)``.

    With ``patch`` > 1 the LSTM runs over `patch_steps` of ``x`` (``params`` are sized for
    ``patch * C`` inputs). Dropout (``key`` given) applies between LSTM layers and to the pooled
    features.
    """
    if patch > 1:
        x, lengths = patch_steps(x, lengths, patch)
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
        feats = _random.dropout(feat_key, feats, dropout)
    return feats @ params["head"]["w"] + params["head"]["b"]

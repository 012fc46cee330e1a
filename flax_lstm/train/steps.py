"""The optimizer and the jitted train and evaluation steps of the (ensemble) classifier.

The train step's randomness (input noise, dropout) is ``fold_in(key(seed), 2)`` folded with
the global step, so it depends on nothing but the seed and the step count.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import flax_lstm as fl
from flax_lstm import _random
from flax_lstm.train.config import TrainConfig
from flax_lstm.train.model import forward

__all__ = ["Steps", "optimizer", "step_functions"]


def optimizer(
    config: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (no decay on biases) after global-norm clipping; warmup + cosine schedule."""
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


class Steps:
    """``tx``, ``schedule`` and the jitted ``train_step`` and ``eval_step``.

    ``train_step(state, x, lengths, y, w) -> (state, [loss·w, correct·w, w] sums)`` with
    ``state = {"params", "opt_state", "step"}``; ``eval_step(params, x, lengths, y) ->
    (predictions, cross-entropies)``. Rows of weight ``w = 0`` (padding) change nothing.
    """

    def __init__(
        self,
        config: TrainConfig,
        lstm_config: fl.LSTMConfig,
        total_steps: int,
        mesh,
        patch: int,
    ):
        self.tx, self.schedule = optimizer(config, total_steps)
        self.model_fn = functools.partial(
            forward,
            lstm_config=lstm_config,
            pooling=config.pooling,
            dropout=config.dropout,
            patch=patch,
        )
        self.base_key = jax.random.fold_in(jax.random.key(config.seed), 2)
        self.noise, self.members = config.input_noise, config.members
        rep = NamedSharding(mesh, P())
        self.train_step = jax.jit(self._train_step, out_shardings=(rep, rep))
        self.eval_step = jax.jit(self._eval_step, out_shardings=(rep, rep))

    def _member_log_probs(self, params, x, lengths, key=None):
        """(K, N, classes) log-probabilities of each ensemble member."""
        model_fn = self.model_fn
        if self.members == 1:
            return jax.nn.log_softmax(model_fn(params, x, lengths, key=key))[None]
        keys = None if key is None else jax.random.split(key, self.members)
        fn = lambda p, k: jax.nn.log_softmax(model_fn(p, x, lengths, key=k))  # noqa: E731
        return jax.vmap(fn, in_axes=(0, None if key is None else 0))(params, keys)

    def _ensemble(self, logp):
        return jax.nn.logsumexp(logp, axis=0) - math.log(self.members)

    def _train_step(self, state, x, lengths, y, w):
        key = jax.random.fold_in(self.base_key, state["step"])
        if self.noise > 0:
            key, noise_key = jax.random.split(key)
            valid = jnp.arange(x.shape[1])[None, :, None] < lengths[:, None, None]
            x = x + jnp.where(valid, self.noise * _random.normal(noise_key, x.shape), 0.0)

        def loss_fn(params):
            logp = self._member_log_probs(params, x, lengths, key)  # (K, N, C)
            member_ce = -jnp.take_along_axis(logp, y[None, :, None], axis=-1)[..., 0]
            member_ce = member_ce.mean(0)  # (N,): the members learn independently
            return (member_ce * w).sum() / jnp.maximum(w.sum(), 1.0), self._ensemble(logp)

        (_, logp), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ce = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        correct = ((jnp.argmax(logp, -1) == y) * w).sum()
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, jnp.stack([(ce * w).sum(), correct, w.sum()])

    def _eval_step(self, params, x, lengths, y):
        logp = self._ensemble(self._member_log_probs(params, x, lengths))
        ce = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        return jnp.argmax(logp, -1), ce


@functools.lru_cache(maxsize=8)
def step_functions(
    config: TrainConfig,
    lstm_config: fl.LSTMConfig,
    total_steps: int,
    mesh: Mesh,
    patch: int = 1,
) -> Steps:
    """`Steps` for a run; cached, so runs alike (paths aside) compile once."""
    return Steps(config, lstm_config, total_steps, mesh, patch)

"""The device mesh, and `Runner`: what `train` and `evaluate` share for one run's settings.

Data parallelism: a `jax.sharding.Mesh` over every device along one ``data`` axis; each batch
is sharded along it, parameters and optimizer state are replicated, and XLA inserts the
gradient all-reduce. Batches are padded to a multiple of the device count with rows of weight 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flax_lstm.train.checkpoints import require_train_extra
from flax_lstm.train.config import TrainConfig
from flax_lstm.train.derive import derived_of
from flax_lstm.train.model import init_members, lstm_config
from flax_lstm.train.pipeline import RunData, epoch_batches, padded
from flax_lstm.train.steps import step_functions

__all__ = ["Devices", "Runner"]


class Devices:
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


class Runner:
    """A run's model, optimizer and jitted steps on the mesh; batching and evaluation."""

    def __init__(self, config: TrainConfig, data_info: dict[str, Any], devices: Devices):
        require_train_extra()  # before a new run writes its folder
        self.config = config
        self.devices = devices
        self.num_classes = len(data_info["classes"])
        derived = derived_of(data_info, config)
        self.patch = derived["patch"]
        self.lstm_config = lstm_config(config, data_info["num_channels"] * self.patch)
        self.batch_size = derived["batch_size"]
        # The padded lengths of the training batches (older run folders: the longest series).
        self.bucket_steps = data_info.get("bucket_steps", [data_info["max_length"]])
        self.train_rows = devices.round_up(self.batch_size)
        self.eval_rows = devices.round_up(data_info["eval_batch_size"])
        self.steps_per_epoch = -(-data_info["n_fit"] // self.batch_size)
        key = dataclasses.replace(config, train=None, test=None)  # paths do not change the code
        self.epochs = derived["epochs"]
        total = self.epochs * self.steps_per_epoch
        steps = step_functions(key, self.lstm_config, total, devices.mesh, self.patch)
        self.tx, self.schedule = steps.tx, steps.schedule
        self.train_step, self.eval_step = steps.train_step, steps.eval_step

    def _init_params(self, batched: bool) -> Any:
        return init_members(self.config, self.lstm_config, self.num_classes, batched=batched)

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
        """Shapes, dtypes and shardings of the training state (what a restore fills in)."""
        rep = self.devices.replicated
        shapes = jax.eval_shape(self._abstract_init)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)

    def batches(
        self, data: RunData, plan: Iterable[tuple[np.ndarray, int | None]], rows: int
    ) -> Iterator[tuple]:
        """``(x, lengths, y, w)`` on the mesh for each ``(indices, steps)`` of ``plan``.

        Each batch is padded to ``rows`` rows (`padded`) and cut to ``steps`` time steps.
        """
        put = self.devices.put_batch
        for idx, steps in plan:
            x, lengths, y, w = padded(data, idx, rows, steps)
            yield put(x), put(lengths), put(y), put(w)

    def epoch_batches(self, data: RunData, epoch: int) -> Iterator[tuple]:
        """The training batches of ``epoch`` (0-based) of ``data`` (`epoch_batches`)."""
        plan = epoch_batches(
            self.config.seed, epoch, data.lengths, self.batch_size, self.bucket_steps
        )
        return self.batches(data, plan, self.train_rows)

    def evaluate(self, params: Any, data: RunData) -> dict[str, Any]:
        """Loss, accuracy and predictions of ``params`` on ``data`` (in order)."""
        preds, ces = [], []
        size = self.eval_rows
        plan = ((np.arange(s, min(s + size, len(data))), None) for s in range(0, len(data), size))
        for x, lengths, y, _ in self.batches(data, plan, size):
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

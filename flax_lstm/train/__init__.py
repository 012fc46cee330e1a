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

The package, by concern: `config` (`TrainConfig`, its validation, `TrainError`), `pipeline`
(split, normalisation, encoding, padding, epoch order), `model` (`init_model`, `forward`),
`steps` (optimizer, jitted train and evaluation steps), `runner` (the device mesh and a run's
shared set-up), `loop` (the epoch loop, early stopping, metrics), `checkpoints` (orbax and the
run folder's JSON files), `plots` (matplotlib), `api` (`train`, `evaluate`) and `cli` (the
``flax-lstm train`` and ``evaluate`` commands, their flags made from `TrainConfig`'s fields).

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

from flax_lstm.train.api import evaluate, train
from flax_lstm.train.checkpoints import load_run_config
from flax_lstm.train.config import POOLINGS, TrainConfig, TrainError
from flax_lstm.train.loop import TrainResult
from flax_lstm.train.model import forward, init_model
from flax_lstm.train.pipeline import RunData

__all__ = [
    "POOLINGS",
    "RunData",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "evaluate",
    "forward",
    "init_model",
    "load_run_config",
    "train",
]

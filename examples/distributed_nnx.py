"""Data-parallel training of a flax_lstm NNX model across processes, with `jax.distributed`.

Every process runs this same script; each feeds its own rows of every batch, the parameters are
replicated, and the gradient is reduced across processes by XLA (gloo on CPU, NCCL on GPU).
The LSTM runs each device's rows where they are: under a batch-sharded mesh neither the CPU
kernel nor the scan gathers the batch (see `flax_lstm.kernel`).

Two processes on one machine, one CPU device each::

    python examples/distributed_nnx.py --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 0 &
    python examples/distributed_nnx.py --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 1

On a cluster, the same command on every host with process 0's address (or no flags at all
under SLURM, Open MPI, Kubernetes or Cloud TPU, which `jax.distributed.initialize` detects).
Without ``--num-processes`` it runs in one process on its local devices. Each process prints
one JSON line: its index, the global device count and the loss after every step.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="HOST:PORT of process 0")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import jax

    if args.num_processes:  # before any other jax call
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )

    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import flax_lstm as fl

    class Classifier(nnx.Module):
        """A bidirectional LSTM over the sequence, a linear layer on its last states."""

        def __init__(self, rngs: nnx.Rngs):
            self.lstm = fl.nnx.LSTM(4, 32, bidirectional=True, batch_first=True, rngs=rngs)
            self.head = nnx.Linear(64, 3, rngs=rngs)

        def __call__(self, x, lengths):
            _, (h_n, _) = self.lstm(x, seq_lengths=lengths)
            return self.head(jax.numpy.concatenate([h_n[-2], h_n[-1]], axis=-1))

    mesh = Mesh(np.array(jax.devices()), ("data",))  # every device of every process
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # The same seed in every process: identical replicas, placed shard by shard (host values
    # cannot be device_put onto devices of other processes).
    model = Classifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    graph, state = nnx.split((model, optimizer))

    def place(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, replicated, lambda idx: host[idx])

    state = jax.tree.map(place, state)
    model, optimizer = nnx.merge(graph, state)

    @nnx.jit
    def train_step(model, optimizer, x, lengths, y):
        def loss_fn(model):
            logits = model(x, lengths)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    batch, steps = 8 * jax.device_count(), 20
    per_process = batch // jax.process_count()
    losses = []
    for step in range(args.steps):
        # A toy task (the class sets the level of channel 0); every process makes the same
        # global batch here and keeps its own rows, as a data loader would read only those.
        rng = np.random.default_rng(step)
        y = rng.integers(0, 3, batch).astype(np.int32)
        x = rng.normal(size=(batch, steps, 4)).astype(np.float32) * 0.3
        x[:, :, 0] += y[:, None]
        lengths = rng.integers(5, steps + 1, batch).astype(np.int32)
        mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
        x, lengths, y = (
            jax.make_array_from_process_local_data(rows, a[mine]) for a in (x, lengths, y)
        )
        losses.append(float(train_step(model, optimizer, x, lengths, y)))
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "device_count": jax.device_count(),
                "losses": losses,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

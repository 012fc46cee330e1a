"""The README's python examples, in order, as a user's script for the type checker.

Generated from README.md by ``python tests/test_typing.py``; tests/test_typing.py checks that
it matches. Wrapped in a function so that importing it runs nothing.
"""


def readme_examples() -> None:
    # README python block 0
    import jax, jax.numpy as jnp
    import flax_lstm as fl

    config = fl.LSTMConfig(input_size=12, hidden_size=64, num_layers=2, bidirectional=True,
                           batch_first=True, dropout=0.2, proj_size=0)
    params = fl.init_params(jax.random.key(0), config)      # list of per-layer dicts (torch layout)

    x = jnp.ones((8, 29, 12))                                 # (N, L, input_size) with batch_first
    lengths = jnp.array([29, 20, 7, 29, 1, 15, 29, 3])        # packed-sequence semantics
    output, (h_n, c_n) = fl.lstm(params, x, config=config, seq_lengths=lengths)
    print(output.shape, h_n.shape)                            # (8, 29, 128) (4, 8, 64)

    # training: dropout only where a key is given, on every layer's output but the last
    loss = lambda p, x, key: fl.lstm(p, x, config=config, dropout_key=key)[0].mean()
    grads = jax.jit(jax.grad(loss))(params, x, jax.random.key(1))

    # one step, torch.nn.LSTMCell semantics
    h, c = fl.lstm_cell(fl.cell_params(params, layer=0, direction=0), x[:, 0])

    # README python block 1
    import numpy as np, torch, jax.numpy as jnp
    import flax_lstm as fl

    torch_lstm = torch.nn.LSTM(12, 64, num_layers=2, bidirectional=True, proj_size=16)
    config, params = fl.from_torch(torch_lstm)      # its hyper-parameters and exact weights

    x = torch.randn(29, 8, 12)
    want, (h, c) = torch_lstm(x)
    got, (h_n, c_n) = fl.lstm(params, jnp.asarray(x.numpy()), config=config)
    assert np.abs(np.asarray(got) - want.detach().numpy()).max() < 1e-5

    # back to torch: tensors under torch's names, in its order (bfloat16 too, bit for bit)
    torch_lstm.load_state_dict(fl.to_torch_state_dict(params, config, as_tensors=True))

    # README python block 2
    import jax.numpy as jnp, optax, torch
    from flax import nnx
    import flax_lstm as fl

    torch_lstm = torch.nn.LSTM(8, 32, num_layers=2, dropout=0.2, batch_first=True)
    model = fl.nnx.LSTM.from_torch(torch_lstm, rngs=nnx.Rngs(0))   # torch's config and exact weights
    x = jnp.ones((4, 50, 8))                                         # (N, L, input_size)
    model.train()                                                    # dropout on, a fresh key every call
    output, (h_n, c_n) = model(x, seq_lengths=jnp.array([50, 42, 7, 1]))
    model.eval()                                                     # torch's eval semantics
    state_dict = model.to_torch_state_dict()                         # back to torch, lossless

    model = fl.nnx.LSTM(8, 32, num_layers=2, dropout=0.2, recurrent_dropout=0.1,
                        learnable_initial_state=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            out, _ = model(x)
            return jnp.mean((out[:, -1].astype(jnp.float32) - y) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    # README python block 3
    import jax
    module = fl.linen.LSTM(32, num_layers=2, dropout=0.2, batch_first=True)
    variables = module.init(jax.random.key(0), x)                    # input size inferred from x
    out, (h_n, c_n) = module.apply(variables, x)                     # deterministic=True by default
    out, _ = module.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    module, variables = fl.linen.LSTM.from_torch(torch_lstm)

    # README python block 4
    model = fl.nnx.LSTM(8, 32, num_layers=2, rngs=nnx.Rngs(0))
    long_x = jnp.ones((3000, 4, 8))                                  # (L, N, input_size)
    lengths = jnp.array([3000, 2500, 10, 1700])
    hx = None
    for start in range(0, 3000, 500):
        out, hx = model(long_x[start:start + 500], hx,
                        seq_lengths=fl.streaming.chunk_lengths(lengths, start, 500))
        new_episode = jnp.array([False, False, start == 1000, False])
        hx = fl.streaming.reset_state(hx, new_episode, initial=model.initial_state())

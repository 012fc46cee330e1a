"""flax_lstm: a JAX/Flax LSTM with the exact semantics of ``torch.nn.LSTM``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import flax_lstm as fl
  >>> config = fl.LSTMConfig(input_size=3, hidden_size=5)
  >>> params = fl.init_params(jax.random.key(0), config)
  >>> output, (h_n, c_n) = fl.lstm(params, jnp.ones((7, 2, 3)), config=config)
  >>> output.shape, h_n.shape
  ((7, 2, 5), (1, 2, 5))
"""

# The Flax modules and streaming helpers, as ``fl.nnx``, ``fl.linen`` and ``fl.streaming``.
from flax_lstm import kernel, linen, nnx, streaming
from flax_lstm._flax_cell import LSTMCarry
from flax_lstm._kernel import export as _kernel_export
from flax_lstm.cell import LSTMState, lstm_cell
from flax_lstm.config import LSTMConfig
from flax_lstm.params import Params, cell_params, init_cell_params, init_params, torch_uniform
from flax_lstm.plan import Implementation, Plan
from flax_lstm.stack import lstm, lstm_plan
from flax_lstm.torch_io import (
    cell_params_from_torch,
    cell_to_torch_state_dict,
    config_from_state_dict,
    config_from_torch,
    from_torch,
    from_torch_state_dict,
    to_torch_state_dict,
)

__version__ = "0.1.0"

# A kernel built earlier on this machine is registered now (no build at import), so that a
# process can call a deserialized `jax.export` artifact that uses it (`flax_lstm._kernel.export`).
_kernel_export.register_if_built()

__all__ = [
    "Implementation",
    "LSTMCarry",
    "LSTMConfig",
    "LSTMState",
    "Params",
    "Plan",
    "__version__",
    "cell_params",
    "cell_params_from_torch",
    "cell_to_torch_state_dict",
    "config_from_state_dict",
    "config_from_torch",
    "from_torch",
    "from_torch_state_dict",
    "init_cell_params",
    "init_params",
    "kernel",
    "linen",
    "lstm",
    "lstm_cell",
    "lstm_plan",
    "nnx",
    "streaming",
    "to_torch_state_dict",
    "torch_uniform",
]

"""Shared test settings: full float32 matmuls (TF32 on GPUs would break 1e-5 parity), and the
default plan by the size rule alone."""

import os

import jax
import numpy as np
import pytest
import torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.set_num_threads(1)  # the 2-core CI machine runs pytest-xdist workers side by side
# The tests of the default plan check the size rule, whatever this CPU would measure (and
# measuring takes seconds): tests/test_calibrate.py turns the measurement on where it is tested.
os.environ["FLAX_LSTM_CALIBRATE"] = "0"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    from torch_ref import WORST

    if WORST["forward"] or WORST["gradient"]:
        terminalreporter.write_line(
            f"largest difference vs torch.nn.LSTM: forward {WORST['forward']:.3g}, "
            f"gradients {WORST['gradient']:.3g}"
        )

"""Every misuse: a ValueError/TypeError naming the argument, eagerly and under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import flax_lstm as fl

CFG = fl.LSTMConfig(3, 4, num_layers=2, bidirectional=True)
PARAMS = fl.init_params(jax.random.key(0), CFG)
X = jnp.ones((5, 2, 3))
H = jnp.zeros((4, 2, 4))


def _eager(**kw):
    kw.setdefault("input", X)
    return fl.lstm(PARAMS, kw.pop("input"), kw.pop("hx", None), config=CFG, **kw)


BAD = [
    ({"input": jnp.ones((5, 2, 4))}, ValueError, r"input.*input_size.*3.*got 4"),
    ({"input": jnp.ones((5, 2, 3, 1))}, ValueError, r"input must be 3-D"),
    ({"input": jnp.ones((3,))}, ValueError, r"input must be 3-D"),
    ({"input": jnp.ones((0, 2, 3))}, ValueError, r"input must have at least one time step"),
    ({"input": jnp.ones((5, 2, 3), jnp.int32)}, TypeError, r"input must have a floating dtype"),
    ({"input": "hello"}, TypeError, r"input"),
    ({"hx": H}, TypeError, r"hx must be a pair"),
    ({"hx": (H, H, H)}, TypeError, r"hx must be a pair"),
    ({"hx": (jnp.zeros((2, 2, 4)), H)}, ValueError, r"h_0.*\(4, 2, 4\).*\(2, 2, 4\)"),
    ({"hx": (H, jnp.zeros((4, 3, 4)))}, ValueError, r"c_0.*\(4, 2, 4\).*\(4, 3, 4\)"),
    ({"hx": (jnp.zeros((4, 4)), jnp.zeros((4, 4)))}, ValueError, r"h_0"),
    ({"seq_lengths": jnp.array([5])}, ValueError, r"seq_lengths must be shape \(2,\)"),
    ({"seq_lengths": jnp.array([5, 6])}, ValueError, r"seq_lengths must lie in \[0, 5\]"),
    ({"seq_lengths": jnp.array([5, -1])}, ValueError, r"seq_lengths must lie in \[0, 5\]"),
    ({"seq_lengths": jnp.array([5.0, 2.0])}, TypeError, r"seq_lengths must have an integer"),
    ({"recurrent_dropout": 1.0}, ValueError, r"recurrent_dropout"),
]


@pytest.mark.parametrize(("kw", "exc", "match"), BAD)
def test_eager_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        _eager(**kw)


@pytest.mark.parametrize(
    ("kw", "exc", "match"), [b for b in BAD if "input" not in b[0] and "seq_lengths" not in b[0]]
)
def test_errors_under_jit(kw, exc, match):
    hx = kw.get("hx")
    rest = {k: v for k, v in kw.items() if k != "hx"}
    f = jax.jit(lambda hx: fl.lstm(PARAMS, X, hx, config=CFG, **rest))
    with pytest.raises(exc, match=match):
        f(hx)


@pytest.mark.parametrize(
    ("x", "match"),
    [(jnp.ones((5, 2, 4)), r"input.*Expected 3, got 4"), (jnp.ones((5, 2, 3, 1)), r"3-D")],
)
def test_input_errors_under_jit(x, match):
    f = jax.jit(lambda x: fl.lstm(PARAMS, x, config=CFG))
    with pytest.raises(ValueError, match=match):
        f(x)


def test_seq_lengths_shape_error_under_jit():
    f = jax.jit(lambda n: fl.lstm(PARAMS, X, config=CFG, seq_lengths=n))
    with pytest.raises(ValueError, match=r"seq_lengths must be shape \(2,\)"):
        f(jnp.array([1, 2, 3]))


def test_unbatched_input_needs_unbatched_state_and_scalar_length():
    x = jnp.ones((5, 3))
    with pytest.raises(ValueError, match=r"h_0.*\(4, 4\)"):
        fl.lstm(PARAMS, x, (H, H), config=CFG)
    with pytest.raises(ValueError, match=r"seq_lengths must be a scalar"):
        fl.lstm(PARAMS, x, config=CFG, seq_lengths=jnp.array([3]))
    out, (h, _) = fl.lstm(PARAMS, x, config=CFG, seq_lengths=3)
    assert out.shape == (5, 8) and h.shape == (4, 4)


def test_config_must_be_a_config():
    with pytest.raises(TypeError, match="config must be an LSTMConfig"):
        fl.lstm(PARAMS, X, config={"input_size": 3})
    with pytest.raises(TypeError, match="config must be an LSTMConfig"):
        fl.init_params(jax.random.key(0), (3, 4))


def test_cell_errors():
    p = fl.init_cell_params(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        fl.lstm_cell(p, jnp.ones((2, 5)))
    with pytest.raises(TypeError, match="state must be a pair"):
        fl.lstm_cell(p, jnp.ones((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \(2, 4\)"):
        fl.lstm_cell(p, jnp.ones((2, 3)), (jnp.zeros((2, 4)), jnp.zeros((3, 4))))
    with pytest.raises(ValueError, match=r"params\['w_hh'\]"):
        fl.lstm_cell({**p, "w_hh": jnp.zeros((16, 5))}, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="params must be a dict"):
        fl.lstm_cell([p], jnp.ones((2, 3)))

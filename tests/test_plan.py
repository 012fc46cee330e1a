"""`flax_lstm.plan`: one request (`Implementation`) resolved into one `Plan` per call."""

from __future__ import annotations

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import flax_lstm as fl
from flax_lstm import kernel

ON_CPU = jax.default_backend() == "cpu"
needs_kernel = pytest.mark.skipif(
    not ON_CPU or not kernel.available(), reason="the kernel is for the CPU backend"
)


def _setup(**config):
    cfg = fl.LSTMConfig(**{"input_size": 3, "hidden_size": 20, **config})
    return cfg, fl.init_params(jax.random.key(0), cfg)


def test_plan_is_static_and_hashable():
    cfg, params = _setup()
    plan = fl.lstm_plan(params, jnp.ones((20, 2, 3)), config=cfg)
    other = fl.Plan(**{**plan.__dict__, "reason": "another wording"})
    assert plan == other and hash(plan) == hash(other)  # the reason takes no part
    assert plan.platform == jax.default_backend()


@needs_kernel
def test_auto_plans_and_their_reasons():
    cfg, params = _setup()
    x = jnp.ones((20, 2, 3))
    plan = fl.lstm_plan(params, x, config=cfg)
    assert (plan.recurrence, plan.unroll, plan.hoist_input, plan.fuse_directions) == (
        "kernel", 1, False, True
    )  # fmt: skip
    assert "kernel applies" in plan.reason and "compiled CPU kernel" in str(plan)
    short = fl.lstm_plan(params, jnp.ones((5, 3, 3)), config=cfg)
    assert short.recurrence == "scan" and "15 steps × sequences" in short.reason
    scan = fl.lstm_plan(params, x, config=cfg, impl="scan")
    assert (scan.recurrence, scan.fuse_directions, scan.kernel_transpose) == ("scan", False, False)
    cfg_p, params_p = _setup(proj_size=4)
    assert fl.lstm_plan(params_p, x, config=cfg_p).reason == (
        "the CPU kernel does not support proj_size > 0"
    )
    rdrop = fl.lstm_plan(
        params, x, config=cfg, dropout_key=jax.random.key(0), recurrent_dropout=0.2
    )
    assert "recurrent_dropout" in rdrop.reason
    # Without a key there is no recurrent dropout, so the kernel applies.
    assert fl.lstm_plan(params, x, config=cfg, recurrent_dropout=0.2).recurrence == "kernel"
    remat = fl.lstm_plan(params, x, config=cfg, impl=fl.Implementation(backward="remat"))
    assert remat.recurrence == "scan" and "backward='remat'" in remat.reason


def test_platform_override_picks_that_platforms_defaults_and_computes_the_same():
    cfg, params = _setup(bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (20, 2, 3))
    gpu = fl.Implementation(platform="gpu")
    plan = fl.lstm_plan(params, x, config=cfg, impl=gpu)
    assert (plan.platform, plan.recurrence, plan.unroll, plan.hoist_input) == (
        "gpu",
        "scan",
        8,
        True,
    )
    assert plan.fuse_directions and "the gpu platform" in plan.reason
    # The other platform's program runs here too: the same function.
    want = fl.lstm(params, x, config=cfg)
    got = fl.lstm(params, x, config=cfg, impl=gpu)
    chex.assert_trees_all_close(got, want, atol=2e-6, rtol=2e-6)


def test_platform_of_reads_the_inputs_devices_then_the_default_device():
    cpu = jax.devices("cpu")[0]
    x = jax.device_put(jnp.ones(3), cpu)
    assert fl.plan.platform_of(x) == "cpu"
    assert fl.plan.platform_of(np.ones(3)) == jax.default_backend()
    with jax.default_device(cpu):
        assert fl.plan.platform_of(np.ones(3)) == "cpu"


@pytest.mark.parametrize(
    ("impl", "error", "match"),
    [
        ("fast", ValueError, "recurrence must be one of"),
        (fl.Implementation, TypeError, "impl must be None, 'auto', 'kernel', 'scan'"),
        (3, TypeError, "impl must be"),
    ],
)
def test_bad_impl_is_a_clear_error(impl, error, match):
    cfg, params = _setup()
    with pytest.raises(error, match=match):
        fl.lstm(params, jnp.ones((4, 1, 3)), config=cfg, impl=impl)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backward": "checkpoint"}, ValueError, "backward must be one of"),
        ({"unroll": 0}, ValueError, "unroll must be a positive int"),
        ({"unroll": True}, ValueError, "unroll must be a positive int"),
        ({"hoist_input": "yes"}, TypeError, "hoist_input must be a bool"),
        ({"fuse_directions": 1.0}, TypeError, "fuse_directions must be a bool"),
        ({"platform": 0}, TypeError, "platform must be a str"),
    ],
)
def test_bad_implementation_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        fl.Implementation(**kwargs)


@needs_kernel
def test_kernel_switch_is_read_at_every_call(monkeypatch):
    """FLAX_LSTM_CPU_KERNEL is not frozen by the first call: a later call reads it again."""
    cfg, params = _setup()
    x = jnp.ones((20, 2, 3))
    assert fl.lstm_plan(params, x, config=cfg).recurrence == "kernel"
    monkeypatch.setenv("FLAX_LSTM_CPU_KERNEL", "0")
    plan = fl.lstm_plan(params, x, config=cfg)
    assert plan.recurrence == "scan" and "disabled by FLAX_LSTM_CPU_KERNEL" in plan.reason
    monkeypatch.delenv("FLAX_LSTM_CPU_KERNEL")
    assert fl.lstm_plan(params, x, config=cfg).recurrence == "kernel"


def test_scan_compiles_nothing(tmp_path):
    """impl="scan" builds no library, bfloat16 weight gradients included (their transposed
    copy is the kernel library's on the default path)."""
    code = (
        "import jax, jax.numpy as jnp, flax_lstm as fl\n"
        "cfg = fl.LSTMConfig(3, 20, bidirectional=True)\n"
        "p = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)\n"
        "x = jnp.ones((40, 4, 3), jnp.bfloat16)\n"
        "f = lambda p: fl.lstm(p, x, config=cfg, impl='scan')[0].astype(jnp.float32).sum()\n"
        "g = jax.jit(jax.grad(f))(p)\n"
        "print(g[0]['w_hh'].dtype, 'transpose' in str(jax.make_jaxpr(jax.grad(f))(p)))\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "FLAX_LSTM_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bfloat16", "True"]
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", ["auto", "scan", fl.Implementation(backward="remat")])
def test_empty_batch_forward_and_gradient(bidirectional, impl):
    """N = 0 works end to end: empty outputs and zero gradients, on every path that takes it."""
    cfg, params = _setup(num_layers=2, bidirectional=bidirectional)
    x = jnp.ones((6, 0, 3))
    lengths = jnp.zeros((0,), jnp.int32)

    def loss(p, x):
        out, (h, c) = fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl=impl)
        return out.sum() + h.sum() + c.sum()

    out, (h, c) = fl.lstm(params, x, config=cfg, impl=impl)
    assert (
        c.shape == h.shape
        and out.shape == (6, 0, 20 * cfg.num_directions)
        and h.shape
        == (
            4 if bidirectional else 2,
            0,
            20,
        )
    )
    grads, dx = jax.grad(loss, argnums=(0, 1))(params, x)
    assert dx.shape == x.shape
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, 0)


@needs_kernel
def test_kernel_requested_for_an_empty_batch_is_a_clear_error():
    cfg, params = _setup()
    with pytest.raises(ValueError, match=r"recurrence='kernel'.*an empty batch"):
        fl.lstm(params, jnp.ones((20, 0, 3)), config=cfg, impl="kernel")


class JitVariantsTest(chex.TestCase):
    """`fl.lstm` gives the same numbers eagerly and under `jax.jit`, on every recurrence."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("auto", "auto"), ("scan", "scan"), ("autodiff", fl.Implementation(backward="autodiff"))
    )
    def test_same_numbers(self, impl):
        cfg, params = _setup(num_layers=2, bidirectional=True)
        x = jax.random.normal(jax.random.key(1), (9, 3, 3))
        lengths = jnp.array([9, 4, 1])

        def loss(p, x, impl):
            out, (h, c) = fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl=impl)
            return jnp.sin(out).sum() + (h * c).sum()

        @self.variant
        def loss_and_grad(params, x):
            return jax.value_and_grad(loss)(params, x, impl)

        got = loss_and_grad(params, x)
        want = jax.value_and_grad(loss)(params, x, "scan")
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_equal_shapes_and_dtypes(got[1], params)

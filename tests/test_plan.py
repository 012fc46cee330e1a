"""`flax_lstm.plan`: one request (`Implementation`) resolved into one `Plan` per call, which
alone decides where compiled code runs."""

from __future__ import annotations

import re
from pathlib import Path

import chex
import fake_calibration
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_process
from absl.testing import parameterized
from kernel_checks import bf16_kernel, kernel_calls, needs_kernel, require_bf16_kernel

import flax_lstm as fl
from flax_lstm import _auto
from flax_lstm import plan as plans
from flax_lstm._kernel import build as kernel_build
from flax_lstm._kernel import calibrate, tuning


def _setup(**config):
    cfg = fl.LSTMConfig(**{"input_size": 3, "hidden_size": 64, **config})
    return cfg, fl.init_params(jax.random.key(0), cfg)


def _uses_kernel(cfg, x, **kwargs) -> bool:
    """Whether the gradient of `fl.lstm` on ``x`` runs the kernel's forward and backward, in
    any dtype."""
    dtype = kwargs.get("dtype") or jnp.float32
    params = fl.init_params(jax.random.key(0), cfg, dtype=dtype)
    loss = lambda p: fl.lstm(p, x, config=cfg, **kwargs)[0].astype(jnp.float32).sum()  # noqa: E731
    calls = {name.removesuffix("_bf16") for name in kernel_calls(jax.grad(loss), params)}
    return {"forward", "backward"} <= calls


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
    assert short.recurrence == "scan" and "5 steps × 3 sequences × 64 hidden units" in short.reason
    scan = fl.lstm_plan(params, x, config=cfg, impl="scan")
    assert (scan.recurrence, scan.fuse_directions) == ("scan", False)
    assert "no compiled code" in str(scan)
    # A single step on the CPU scan: both directions in one step, no per-direction weights.
    step = fl.lstm_plan(params, x[:1], config=cfg, impl="scan")
    assert (step.recurrence, step.fuse_directions) == ("scan", True)
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
        ({"weight_grads": "torch"}, ValueError, "weight_grads must be one of"),
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


@needs_kernel
def test_default_follows_the_measured_verdict_of_each_regime(monkeypatch, tmp_path):
    """Measured (fake timings): the kernel 1.5× the scan at small batches, half as fast at
    large ones. The default takes the scan where it won, with the reason, also under
    `jax.jit`; later plans read the cached verdict and measure nothing."""
    fake = fake_calibration.install(monkeypatch, tmp_path, small=1.5, large=0.5)
    cfg, params = _setup()
    small = fl.lstm_plan(params, jnp.ones((20, tuning.small_batch(), 3)), config=cfg)
    assert small.recurrence == "kernel"
    assert small.reason.endswith("; measured on this CPU: the kernel 1.5× the scan")
    large = fl.lstm_plan(params, jnp.ones((20, 8, 3)), config=cfg)
    assert large.recurrence == "scan"
    assert large.reason.startswith(
        "measured on this CPU: the scan path 2.0× as fast as the kernel for float32 at batches "
        "of more than 4 sequences"
    )
    assert str(calibrate.cache_path()) in large.reason and "impl='kernel'" in large.reason
    assert not _uses_kernel(cfg, jnp.ones((20, 8, 3)))  # under jax.grad's trace
    assert _uses_kernel(cfg, jnp.ones((20, 2, 3)))
    assert _uses_kernel(cfg, jnp.ones((20, 8, 3)), impl="kernel")  # forced: no measuring
    # every regime once, the scan's verdict confirmed
    assert fake.calls == [("float32", r) for r in ("small", "large", "large", "short")]


@needs_kernel
@pytest.mark.parametrize("short", [1.5, 0.5])
def test_short_calls_follow_their_own_verdict(monkeypatch, tmp_path, short):
    """A call of 2 steps or more under the size rule's thresholds takes the kernel, in both
    modes, only where this CPU measured it faster on such calls."""
    fake_calibration.install(monkeypatch, tmp_path, small=2.0, large=2.0, short=short)
    cfg, params = _setup(hidden_size=calibrate.SHORT_PROBE_HIDDEN)
    plan = fl.lstm_plan(params, jnp.ones((2, 1, 3)), config=cfg)
    if short > 1:
        assert plan.recurrence == "kernel"
        assert "it measured 1.5× the scan on short calls (2 or more steps, too few for" in (
            plan.reason
        )
    else:
        assert plan.recurrence == "scan"
        assert plan.reason.startswith(
            "measured on this CPU: the scan path 2.0× as fast as the kernel for float32 at "
            "short calls"
        )
    assert _uses_kernel(cfg, jnp.ones((2, 1, 3))) == (short > 1)  # under jax.grad's trace
    # Fewer units, in one layer and direction or more: a short call too, in both modes.
    for more in ({}, {"num_layers": 2}, {"bidirectional": True}):
        narrow, params = _setup(hidden_size=calibrate.SHORT_PROBE_HIDDEN - 1, **more)
        plan = fl.lstm_plan(params, jnp.ones((2, 1, 3)), config=narrow)
        assert plan.recurrence == plan.grad_recurrence == ("kernel" if short > 1 else "scan")
        assert _uses_kernel(narrow, jnp.ones((2, 1, 3))) == (short > 1)
    # Large enough for the size rule: the batch's verdict, not the short calls'.
    assert fl.lstm_plan(params, jnp.ones((40, 1, 3)), config=narrow).recurrence == "kernel"


def _runs_kernel(f, *args) -> bool:
    """Whether ``f(*args)`` calls the kernel's forward (its jaxpr)."""
    return "forward" in kernel_calls(f, *args)


@needs_kernel
@pytest.mark.parametrize(("hidden", "bidirectional"), [(128, False), (96, True), (20, False)])
def test_a_single_step_takes_the_kernels_forward_and_the_scans_gradient(
    monkeypatch, tmp_path, hidden, bidirectional
):
    """One step whose weights are no more than the short calls' probe's, the kernel's forward
    measured faster there: undifferentiated it runs the kernel, differentiated the scan
    (forward and backward); the outputs are the kernel's, the gradients the scan's."""
    fake_calibration.install(monkeypatch, tmp_path, short=1.5)
    cfg, params = _setup(hidden_size=hidden, bidirectional=bidirectional)
    x = jax.random.normal(jax.random.key(1), (1, 3, 3))
    plan = fl.lstm_plan(params, x, config=cfg)
    assert (plan.recurrence, plan.grad_recurrence) == ("kernel", "scan")
    assert plan.differentiated.recurrence == "scan"
    assert plan.reason.startswith("a single step")
    assert "its forward measured 1.5× the scan's on this CPU at short calls" in plan.reason
    assert str(plan).startswith("the compiled CPU kernel; differentiated, lax.scan (custom")
    assert "no compiled code" not in str(plan)

    def output(p, x, impl=None):
        return fl.lstm(p, x, config=cfg, impl=impl)[0]

    def loss(p, x, impl=None):
        return (output(p, x, impl) ** 2).sum()

    grad = jax.grad(loss, argnums=(0, 1))
    assert _runs_kernel(output, params, x) and not _runs_kernel(grad, params, x)
    np.testing.assert_array_equal(output(params, x), output(params, x, "kernel"))
    chex.assert_trees_all_close(grad(params, x), grad(params, x, "scan"), atol=1e-6, rtol=1e-6)
    value, _ = jax.value_and_grad(loss)(params, x)  # the differentiated call's own forward
    np.testing.assert_allclose(value, loss(params, x, "scan"), rtol=1e-6)


@needs_kernel
def test_a_single_step_stays_on_the_scan_unless_measured_faster(monkeypatch, tmp_path):
    """A measured slower forward or no measurement: the scan, with the reason."""
    fake_calibration.install(monkeypatch, tmp_path, short=0.5)
    for hidden in (calibrate.SHORT_PROBE_HIDDEN, 20):
        cfg, params = _setup(hidden_size=hidden)
        plan = fl.lstm_plan(params, jnp.ones((1, 2, 3)), config=cfg)
        assert (plan.recurrence, plan.grad_recurrence) == ("scan", "scan")
        assert plan.reason.startswith(
            "measured on this CPU: the scan's forward 2.0× as fast as the kernel's for float32 "
            "at short calls"
        )
    monkeypatch.setenv(calibrate.ENV, "0")
    wide, params = _setup(hidden_size=160)  # wider than the probe, with fewer weights
    plan = fl.lstm_plan(params, jnp.ones((1, 2, 3)), config=wide)
    assert plan.recurrence == "scan"
    assert "decides a single step's forward, and none was made (FLAX_LSTM_CALIBRATE=0" in (
        plan.reason
    )


def test_a_plan_names_its_recurrences():
    plan = fl.Plan("cpu", "kernel", "custom", 1, False, True, "why")
    assert plan.grad_recurrence == "kernel" and plan.differentiated is plan
    both = fl.Plan("cpu", "kernel", "custom", 1, False, True, "why", grad_recurrence="scan")
    assert both != plan and both.differentiated.recurrence == "scan"
    with pytest.raises(ValueError, match="grad_recurrence must be 'kernel' or 'scan'"):
        fl.Plan("cpu", "kernel", "custom", 1, False, True, grad_recurrence="gpu")  # type: ignore[arg-type]
    assert plan.weight_grads == "kernel"
    xla = fl.Plan("cpu", "kernel", "custom", 1, False, True, "why", weight_grads="xla")
    assert xla != plan and hash(xla) != hash(plan)  # a static argument: traced apart
    with pytest.raises(ValueError, match="weight_grads must be one of"):
        fl.Plan("cpu", "kernel", "custom", 1, False, True, weight_grads="gpu")  # type: ignore[arg-type]


def _kernel_weight_grads_in(cfg, x, **kwargs) -> bool:
    """Whether the gradient of `fl.lstm` on ``x`` calls the kernel library's weight gradients."""
    params = fl.init_params(jax.random.key(0), cfg)
    loss = lambda p: fl.lstm(p, x, config=cfg, **kwargs)[0].sum()  # noqa: E731
    return "weight_grads" in kernel_calls(jax.grad(loss), params)


@needs_kernel
@pytest.mark.parametrize("xla_speedup", [1.2, 1.0])
def test_default_takes_the_weight_grads_measured_faster(monkeypatch, tmp_path, xla_speedup):
    """Measured (fake timings): XLA's weight gradients 1.2× the kernel library's, or level.
    The default follows (the large regime's verdict) at every batch whose GEMM is at least the
    probe's, and says so; smaller ones keep the kernel library's; a request wins;
    ``recurrence="kernel"`` measures nothing."""
    fake = fake_calibration.install(monkeypatch, tmp_path, xla_weight_grads=xla_speedup)
    probe = calibrate.probe("large")
    cfg, params = _setup(hidden_size=probe.hidden)
    xla = xla_speedup > 1
    rows = probe.steps * probe.batch
    for steps, batch in ((probe.steps, probe.batch), (rows // 2, 2), (rows, 1)):
        x = jnp.ones((steps, batch, 3))
        plan = fl.lstm_plan(params, x, config=cfg)
        assert (plan.recurrence, plan.weight_grads) == ("kernel", "xla" if xla else "kernel")
        measured = "float32 weight gradients on XLA's GEMMs: fwd+bwd measured 1.20× as fast"
        assert (measured in plan.reason) == xla
        assert ("(float32 weight gradients on XLA's GEMMs) on cpu" in str(plan)) == xla
        assert _kernel_weight_grads_in(cfg, x) != xla
        asked = fl.Implementation(weight_grads="kernel")
        assert fl.lstm_plan(params, x, config=cfg, impl=asked).weight_grads == "kernel"
        assert _kernel_weight_grads_in(cfg, x, impl=asked)
    assert fake.grads_calls == ["float32"] * (2 if xla else 1)
    # A smaller GEMM: fewer rows, or fewer hidden units.
    assert fl.lstm_plan(params, jnp.ones((40, 8, 3)), config=cfg).weight_grads == "kernel"
    narrow, narrow_params = _setup(hidden_size=probe.hidden // 2)
    x = jnp.ones((probe.steps, probe.batch, 3))
    assert fl.lstm_plan(narrow_params, x, config=narrow).weight_grads == "kernel"
    fake_calibration.install(monkeypatch, tmp_path / "unmeasured", xla_weight_grads=xla_speedup)
    assert fl.lstm_plan(params, x, config=cfg, impl="kernel").weight_grads == "kernel"
    assert calibrate.cached() == {}


@needs_kernel
def test_short_calls_without_a_verdict_run_the_scan():
    """Measuring is off in the tests (tests/conftest.py): the size rule alone leaves a short
    call to the scan, and says that a measurement would decide."""
    cfg, params = _setup(hidden_size=256)
    plan = fl.lstm_plan(params, jnp.ones((2, 4, 3)), config=cfg)
    assert plan.recurrence == "scan"
    assert "a measurement on this CPU decides such a call, and none was made (FLAX_LSTM_" in (
        plan.reason
    )


@needs_kernel
def test_a_symbolic_batch_follows_the_large_batches_verdict(monkeypatch, tmp_path):
    fake_calibration.install(monkeypatch, tmp_path, small=2.0, large=0.5)
    cfg, params = _setup()
    (b,) = jax.export.symbolic_shape("b")
    f = jax.jit(lambda p, x: fl.lstm(p, x, config=cfg)[0])
    exported = jax.export.export(f, disabled_checks=fl.kernel.export_checks())(
        params, jax.ShapeDtypeStruct((20, b, 3), jnp.float32)
    )
    assert "flax_lstm_cpu_forward" not in exported.mlir_module()


@needs_kernel
@pytest.mark.parametrize(
    ("impl", "switch", "recurrence"),
    [
        ("kernel", "1", "kernel"),
        ("scan", "1", "scan"),
        (None, "0", "kernel"),  # the size rule alone
    ],
)
def test_requests_and_the_switch_never_measure(monkeypatch, tmp_path, impl, switch, recurrence):
    fake = fake_calibration.install(monkeypatch, tmp_path, small=0.5, large=0.5)
    monkeypatch.setenv("FLAX_LSTM_CALIBRATE", switch)
    cfg, params = _setup()
    plan = fl.lstm_plan(params, jnp.ones((20, 8, 3)), config=cfg, impl=impl)
    assert plan.recurrence == recurrence and "measured" not in plan.reason
    assert fake.calls == [] and not calibrate.cache_path().exists()


@pytest.mark.parametrize(
    ("config", "steps", "impl", "why"),
    [
        ("proj_size=4", 40, "None", "proj_size > 0"),
        ("", 1, "'scan'", "recurrence='scan' was requested"),
        ("", 40, "'scan'", "recurrence='scan' was requested"),
    ],
    ids=["projection", "requested-step", "requested"],
)
def test_a_scan_plan_runs_no_compiled_code(tmp_path, config, steps, impl, why):
    """A bfloat16 gradient whose plan is "scan" builds no library and calls none: its cache
    folder stays empty (a fresh process, so nothing is loaded yet)."""
    code = (
        "import jax, jax.numpy as jnp, flax_lstm as fl\n"
        f"cfg = fl.LSTMConfig(3, 20, bidirectional=True, {config})\n"
        "p = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)\n"
        f"x = jnp.ones(({steps}, 4, 3), jnp.bfloat16)\n"
        "lengths = jnp.minimum(jnp.array([1, 2, 2, 1]), x.shape[0])\n"
        f"plan = fl.lstm_plan(p, x, config=cfg, seq_lengths=lengths, impl={impl})\n"
        f"f = lambda p: fl.lstm(p, x, config=cfg, seq_lengths=lengths, impl={impl})[0]\n"
        "g = jax.jit(jax.grad(lambda p: f(p).astype(jnp.float32).sum()))(p)\n"
        "print(g[0]['w_hh'].dtype)\n"
        "print(plan)\n"
    )
    cache = tmp_path / "cache"
    proc = python_process.run("-c", code, FLAX_LSTM_CACHE_DIR=str(cache))
    dtype, plan = proc.stdout.strip().splitlines()
    assert dtype == "bfloat16"
    assert plan.startswith("lax.scan") and "no compiled code" in plan and why in plan
    assert not cache.exists() or not list(cache.iterdir())


def test_kernel_reach_is_quoted_by_the_docs():
    """docs/guides/implementations.md quotes `plan.KERNEL_REACH` and the default's floor."""
    page = Path(__file__).resolve().parents[1] / "docs" / "guides" / "implementations.md"
    page_text = page.read_text(encoding="utf-8")
    _, block, _ = page_text.split("<!-- kernel-reach -->")
    quoted = re.findall(r"^- (.+?);?$", block, flags=re.M)
    assert quoted == [c.text for c in plans.KERNEL_REACH]
    text = " ".join(page_text.split())
    assert f"at least {_auto.KERNEL_MIN_STEPS} steps" in text
    assert f"{_auto.KERNEL_MIN_STEP_UNITS} steps × hidden units" in text
    assert f"{_auto.KERNEL_MIN_WORK_UNITS} steps × sequences × hidden units" in text
    assert f"`SHORT_PROBE_HIDDEN` ({calibrate.SHORT_PROBE_HIDDEN})" in text


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "steps", "hidden", "recurrence"),
    [
        (4, 4, 64, "scan"),  # 16 rows, where the old rule took the kernel (measured slower)
        (2, 8, 64, "scan"),
        (4, 8, 64, "scan"),
        (1, 16, 64, "kernel"),
        (8, 8, 64, "kernel"),  # a short sequence, but a batch large enough
        (1, 1, 256, "scan"),
        (16, 1, 256, "scan"),  # a single step
        (16, 2, 256, "kernel"),
        (4, 4, 256, "kernel"),
        (0, 40, 64, "scan"),  # an empty batch
    ],
)
def test_default_takes_the_kernel_from_the_measured_size(batch, steps, hidden, recurrence):
    cfg, params = _setup(hidden_size=hidden)
    plan = fl.lstm_plan(params, jnp.ones((steps, batch, 3)), config=cfg)
    assert plan.recurrence == recurrence, plan


@needs_kernel
def test_symbolic_batch_and_length_export_the_default_path():
    """Under `jax.export` with a symbolic batch and length the plan compares no dimension with
    a number: a symbolic length counts as long, and the default takes the kernel."""
    cfg, params = _setup(hidden_size=16)
    b, t = jax.export.symbolic_shape("b, t")
    f = jax.jit(lambda p, x: fl.lstm(p, x, config=cfg)[0])
    exported = jax.export.export(f, disabled_checks=fl.kernel.export_checks())(
        params, jax.ShapeDtypeStruct((t, b, 3), jnp.float32)
    )
    assert "flax_lstm_cpu_forward" in exported.mlir_module()
    x = jax.random.normal(jax.random.key(1), (70, 2, 3))
    np.testing.assert_allclose(exported.call(params, x), f(params, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", ["auto", "scan", fl.Implementation(backward="remat")])
def test_empty_batch_forward_and_gradient(bidirectional, impl):
    """N = 0 works end to end: empty outputs and zero gradients, on every path that takes it."""
    cfg, params = _setup(hidden_size=20, num_layers=2, bidirectional=bidirectional)
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


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"dtype": jnp.float16}, "dtype float16"),
        ({"impl": fl.Implementation(recurrence="kernel", backward="remat")}, "backward='remat'"),
        (
            {"impl": fl.Implementation(recurrence="kernel", backward="autodiff")},
            "backward='autodiff'",
        ),
    ],
)
def test_kernel_requested_where_it_does_not_apply(kwargs, what):
    cfg = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), cfg)
    kwargs = {"impl": "kernel", **kwargs}
    with pytest.raises(ValueError, match=f"recurrence='kernel'.*{what}"):
        fl.lstm(params, jnp.ones((2, 1, 3)), config=cfg, **kwargs)


def test_kernel_requested_with_projection_or_recurrent_dropout():
    cfg = fl.LSTMConfig(3, 4, proj_size=2)
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="proj_size"):
        fl.lstm(params, jnp.ones((2, 1, 3)), config=cfg, impl="kernel")
    cfg = fl.LSTMConfig(3, 4)
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        fl.lstm(
            params,
            jnp.ones((2, 1, 3)),
            config=cfg,
            impl="kernel",
            dropout_key=jax.random.key(1),
            recurrent_dropout=0.5,
        )


@needs_kernel
def test_default_falls_back_where_it_does_not_apply():
    x = jnp.ones((20, 4, 3))
    assert not _uses_kernel(fl.LSTMConfig(3, 64, proj_size=2), x)
    assert not _uses_kernel(fl.LSTMConfig(3, 64), x, impl="scan")
    assert _uses_kernel(fl.LSTMConfig(3, 64), x)
    # Under KERNEL_MIN_STEP_UNITS steps × hidden units the scan is faster.
    assert not _uses_kernel(fl.LSTMConfig(3, 64), jnp.ones((15, 4, 3)))
    assert not _uses_kernel(fl.LSTMConfig(3, 5), jnp.ones((1, 3)))
    assert _uses_kernel(fl.LSTMConfig(3, 5), jnp.ones((1, 3)), impl="kernel")


@needs_kernel
@bf16_kernel
def test_bfloat16_uses_the_kernel_by_default():
    require_bf16_kernel()
    cfg = fl.LSTMConfig(3, 64, bidirectional=True)
    x = jnp.ones((20, 4, 3), jnp.bfloat16)
    assert _uses_kernel(cfg, x, dtype=jnp.bfloat16)
    params = fl.init_params(jax.random.key(0), cfg, dtype=jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(lambda p: fl.lstm(p, x, config=cfg)[0])(params))
    assert "flax_lstm_cpu_forward_bf16" in jaxpr


@needs_kernel
def test_bfloat16_without_the_instructions_runs_the_scan(monkeypatch):
    """A kernel built for a CPU without AVX512_BF16 has only the float32 entry points."""
    monkeypatch.setattr(kernel_build, "load", lambda: frozenset({"float32"}))
    cfg = fl.LSTMConfig(3, 64)
    x = jnp.ones((20, 4, 3))
    assert not _uses_kernel(cfg, x.astype(jnp.bfloat16), dtype=jnp.bfloat16)
    assert _uses_kernel(cfg, x)  # float32 still runs the kernel
    params = fl.init_params(jax.random.key(0), cfg)
    with pytest.raises(RuntimeError, match=r"recurrence='kernel'.*AVX512_BF16"):
        fl.lstm(params, x, config=cfg, dtype=jnp.bfloat16, impl="kernel")


@needs_kernel
def test_modules_pass_impl_through():
    """``impl`` of the NNX and Linen modules reaches `fl.lstm`: same numbers both ways."""
    from flax import nnx

    x = jax.random.normal(jax.random.key(1), (2, 12, 3))  # batch-first, 24 steps x sequences
    outs = {}
    for flag in (True, False):
        impl = "kernel" if flag else fl.Implementation(recurrence="scan")
        model = fl.nnx.LSTM(3, 20, num_layers=2, batch_first=True, impl=impl, rngs=nnx.Rngs(0))
        jaxpr = str(jax.make_jaxpr(lambda x, model=model: model(x)[0])(x))
        assert ("flax_lstm_cpu_forward" in jaxpr) == flag
        outs[("nnx", flag)] = model(x)[0]
        module = fl.linen.LSTM(20, num_layers=2, batch_first=True, impl=impl)
        variables = module.init(jax.random.key(0), x)
        jaxpr = str(jax.make_jaxpr(lambda x, v=variables, m=module: m.apply(v, x)[0])(x))
        assert ("flax_lstm_cpu_forward" in jaxpr) == flag
        outs[("linen", flag)] = module.apply(variables, x)[0]
    for kind in ("nnx", "linen"):
        np.testing.assert_allclose(outs[(kind, True)], outs[(kind, False)], atol=1e-6, rtol=1e-6)


@needs_kernel
@pytest.mark.parametrize(
    "config",
    [
        {"hidden_size": 256},
        {"input_size": 200, "hidden_size": 128},
        {"input_size": 128, "hidden_size": 128, "num_layers": 2, "bidirectional": True},
    ],
    ids=["wide", "wide input", "second layer's input"],
)
def test_a_single_step_with_more_weights_than_its_batch_amortises_takes_the_scan(
    monkeypatch, tmp_path, config
):
    """Measured faster at the probe, the kernel's forward still leaves a single step to the scan
    where a layer holds more weights (D·4·H·(I + H_out)) than the probe's for every
    `STEP_BATCH` sequences and at least the probe's: the kernel packs them at every call, the
    scan multiplies them as stored."""
    fake_calibration.install(monkeypatch, tmp_path, short=1.5)
    cfg, params = _setup(**config)
    x = jnp.ones((1, 2, cfg.input_size))
    plan = fl.lstm_plan(params, x, config=cfg)
    assert (plan.recurrence, plan.grad_recurrence) == ("scan", "scan")
    assert plan.reason.startswith("a single step whose layers' weights (D·4·H·(I + H_out) = ")
    assert "are more than 131072, what 2 sequences amortise of the kernel's packing" in (
        plan.reason
    )
    assert not _runs_kernel(lambda p, x: fl.lstm(p, x, config=cfg)[0], params, x)
    # A larger batch amortises the packing: STEP_BATCH sequences for each probe's layer.
    probe_weights = _auto.packed_weights(fl.LSTMConfig(128, 128))  # 131072
    batches = -(-_auto.packed_weights(cfg) // probe_weights) * _auto.STEP_BATCH
    for batch, path in ((batches, "kernel"), (batches - _auto.STEP_BATCH, "scan")):
        plan = fl.lstm_plan(params, jnp.ones((1, batch, cfg.input_size)), config=cfg)
        assert (plan.recurrence, plan.grad_recurrence) == (path, "scan")
    width = calibrate.SHORT_PROBE_HIDDEN
    probe, params = _setup(input_size=width, hidden_size=width)  # the probe's own: the kernel
    assert fl.lstm_plan(params, jnp.ones((1, 2, width)), config=probe).recurrence == "kernel"

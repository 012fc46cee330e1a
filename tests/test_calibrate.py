"""The measured rule of the default plan (issue 23), `flax_lstm._kernel.calibrate`: the verdict
per dtype and regime, its cache next to the library (measured once, re-measured when corrupt,
shared by concurrent processes), its switch, ``flax-lstm kernel --calibrate``, and one real
measurement under `jax.jit`. What the plan does with a verdict: tests/test_plan.py.

Fake timings (tests/fake_calibration.py) keep all but the real measurement to milliseconds;
tests/conftest.py turns measuring off for every other test, and `fake_calibration.install`
turns it on here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import fake_calibration
import jax
import jax.numpy as jnp
import pytest
import python_process
from kernel_checks import bf16_kernel, require_bf16_kernel

from flax_lstm import _auto, cli, kernel
from flax_lstm._kernel import build, calibrate, ffi, tuning


def test_regimes():
    small = tuning.small_batch()
    assert [calibrate.regime(n) for n in (1, small)] == ["small", "small"]
    assert calibrate.regime(small + 1) == "large"
    assert calibrate.probe("small") == calibrate.Probe(steps=64, hidden=256, batch=small)
    assert calibrate.probe("large") == calibrate.Probe(steps=64, hidden=256, batch=32)
    (b,) = jax.export.symbolic_shape("b")
    assert calibrate.regime(b) == "large"  # a symbolic batch counts as large


def test_the_short_probe_is_the_smallest_short_call():
    """The plan's rule says which calls are short; the probe is the least work among those of
    one layer and direction of `calibrate.SHORT_PROBE_HIDDEN` units, and, as every short call
    of as many units or fewer (and no more inputs), runs on one thread a direction."""
    shortest = calibrate.probe("short")
    assert shortest == (_auto.KERNEL_MIN_STEPS, calibrate.SHORT_PROBE_HIDDEN, 1)
    assert _auto.call_size(shortest.steps, shortest.batch, shortest.hidden) == "short"
    # Fewer units: a short call too, run on one thread as the probe is (tuning.MIN_SPLIT_WORK).
    assert _auto.call_size(shortest.steps, 1, shortest.hidden - 1) == "short"
    most = _auto.KERNEL_MIN_WORK_UNITS * shortest.hidden  # T·N·H² is less
    assert most <= tuning.MIN_SPLIT_WORK  # (with at most as many inputs as units)
    # One step fewer is a single step, of any width, whose forward the probe's decides too.
    assert _auto.call_size(shortest.steps - 1, 1, shortest.hidden) == "step"
    assert _auto.call_size(shortest.steps - 1, 1, 1) == "step"


@pytest.mark.parametrize(
    ("fwd", "fwd_bwd", "choice"),
    [
        (1.0, 1.0, "kernel"),
        (0.96, 0.96, "kernel"),  # the scan 4% faster: within the tolerance
        (0.94, 0.94, "scan"),  # the scan 6% faster
        (2.0, 0.4, "scan"),  # geometric mean 0.89
        (0.5, 2.2, "kernel"),  # geometric mean 1.05
    ],
)
def test_verdict_is_the_geometric_mean_of_the_modes(fwd, fwd_bwd, choice):
    """``fwd``, ``fwd_bwd``: the scan's time / the kernel's in each mode."""
    times = {
        # the fastest repetitions: 10 and 30 (a load only adds time)
        "kernel": {"fwd": [99.0, 10.0, 12.0], "fwd_bwd": [30.0, 95.0, 31.0]},
        "scan": {"fwd": [10.0 * fwd], "fwd_bwd": [30.0 * fwd_bwd]},
    }
    verdict = calibrate.Verdict.of("float32", "large", times)
    assert verdict.speedup == pytest.approx(math.sqrt(fwd * fwd_bwd))
    assert verdict.choice == choice and verdict.batch == calibrate.probe("large").batch
    assert verdict.kernel_ms == {"fwd": 10.0, "fwd_bwd": 30.0}


def test_measured_once_per_dtype_and_cached_next_to_the_library(monkeypatch, tmp_path):
    fake = fake_calibration.install(monkeypatch, tmp_path, small=1.5, large=0.5)
    small = calibrate.verdict("float32", "small")
    # every regime, the scan's verdict twice
    measured = [("float32", r) for r in ("small", "large", "large", "short")]
    assert fake.calls == measured
    large = calibrate.verdict("float32", "large")
    assert fake.calls == measured
    assert (small.choice, small.speedup, large.choice, large.speedup) == (
        "kernel", 1.5, "scan", 0.5
    )  # fmt: skip
    path = calibrate.cache_path()
    assert path.parent == tmp_path and path.name.startswith("lstm_cpu_0123456789abcdef.calib")
    record = json.loads(path.read_text())
    assert record["verdicts"]["float32"]["large"]["choice"] == "scan"
    assert calibrate.cached()["float32"]["small"]["speedup"] == 1.5
    calibrate.verdict("bfloat16", "large")  # another dtype: measured, kept beside the first
    assert fake.calls[4:] == [("bfloat16", r) for r in ("small", "large", "large", "short")]
    assert sorted(json.loads(path.read_text())["verdicts"]) == ["bfloat16", "float32"]
    # Another library (a new CPU, compiler, jaxlib or source) is measured anew, and so is
    # another CPU with the same library (a portable one), another count of threads, of usable
    # CPUs (the scan's XLA GEMMs use them all), other XLA flags or other kernel settings.
    monkeypatch.setattr(build, "LIBRARY", [tmp_path / "lstm_cpu_fedcba9876543210.so"])
    calibrate.verdict("float32", "small")
    settings = (2, 2, 4, 1 << 19, "")
    here = calibrate._machine.__wrapped__(*settings)
    monkeypatch.setattr(build, "cpu_identity", lambda: "flags: another CPU")
    assert calibrate._machine.__wrapped__(*settings) != here  # (cached per process: one CPU)
    monkeypatch.setattr(calibrate, "_machine", calibrate._machine.__wrapped__)
    calibrate.verdict("float32", "small")
    monkeypatch.setenv("FLAX_LSTM_NUM_THREADS", "7")
    calibrate.verdict("float32", "small")
    monkeypatch.setattr(ffi, "usable_cpus", lambda: 64)  # the same 7 threads on more CPUs
    calibrate.verdict("float32", "small")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    calibrate.verdict("float32", "small")
    monkeypatch.setenv("FLAX_LSTM_SMALL_BATCH", "16")  # the small regime holds other batches
    calibrate.verdict("float32", "small")
    monkeypatch.setenv("FLAX_LSTM_MIN_SPLIT_WORK", "0")  # the short probe on two threads
    calibrate.verdict("float32", "small")
    assert len(fake.calls) == 9 * 4 and len(list(tmp_path.glob("*.calibration-*.json"))) == 8


def test_a_verdict_for_the_scan_is_measured_again(monkeypatch, tmp_path):
    """A load that slowed every repetition of the kernel in the first run (40 ms against its
    10; the scan 20, so 2× faster) and was gone in the second: over both runs' repetitions the
    kernel is 2× faster, and kept."""
    fake = fake_calibration.install(monkeypatch, tmp_path, small=2.0, large=2.0)
    unloaded = fake.__call__

    def loaded_at_first(dtype, regime):
        times = unloaded(dtype, regime)
        if len(fake.calls) == 2:  # the first run of the large regime
            times["kernel"] = {m: [4 * fake_calibration.KERNEL_MS] * 3 for m in calibrate.MODES}
        return times

    monkeypatch.setattr(calibrate, "time_paths", loaded_at_first)
    verdict = calibrate.verdict("float32", "large")
    assert len(fake.calls) == 4 and verdict.choice == "kernel"
    assert verdict.kernel_ms["fwd"] == fake_calibration.KERNEL_MS
    assert verdict.speedup == pytest.approx(2.0)


def test_a_load_during_some_repetitions_does_not_choose_the_scan():
    """Medians would: in three of five repetitions a load made the kernel 3× slower and the
    scan 1.2× (the kernel's two threads meet at every step); its fastest repetitions say the
    kernel is 1.5× faster."""
    kernel, scan = [10.0, 30.0, 30.0, 30.0, 10.0], [15.0, 18.0, 18.0, 18.0, 15.0]
    times = {"kernel": dict.fromkeys(calibrate.MODES, kernel)}
    times["scan"] = dict.fromkeys(calibrate.MODES, scan)
    verdict = calibrate.Verdict.of("float32", "large", times)
    assert verdict.choice == "kernel" and verdict.speedup == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("xla_speedup", "choice", "runs"),
    [(1.0, "kernel", 1), (1.04, "kernel", 1), (1.2, "xla", 2)],
)
def test_weight_grads_measured_where_float32_large_takes_the_kernel(
    monkeypatch, tmp_path, xla_speedup, choice, runs
):
    """Only float32's large regime measures them: XLA's GEMMs where more than `TOLERANCE`
    faster, confirmed by a second run; the other regimes record nothing."""
    fake = fake_calibration.install(monkeypatch, tmp_path, xla_weight_grads=xla_speedup)
    large = calibrate.verdict("float32", "large")
    assert (large.weight_grads, fake.grads_calls) == (choice, ["float32"] * runs)
    assert large.weight_grads_ms == {
        "kernel": fake_calibration.KERNEL_MS,
        "xla": pytest.approx(fake_calibration.KERNEL_MS / xla_speedup),
    }
    assert large.weight_grads_speedup == pytest.approx(xla_speedup)
    for regime in ("small", "short"):
        other = calibrate.verdict("float32", regime)
        assert (other.weight_grads, other.weight_grads_ms, other.weight_grads_speedup) == (
            "kernel",
            {},
            1.0,
        )
    record = json.loads(calibrate.cache_path().read_text())["verdicts"]["float32"]["large"]
    assert calibrate.Verdict.from_json(record) == large
    printed = f"fwd+bwd {xla_speedup:.2f}× as fast with XLA's weight gradient GEMMs"
    assert f"{printed} as with the kernel library's, default {choice}'s" in "\n".join(
        cli._calibration_lines(calibrate.cached())
    )


def test_weight_grads_not_measured_where_the_scan_or_bfloat16(monkeypatch, tmp_path):
    fake = fake_calibration.install(monkeypatch, tmp_path, large=0.5, xla_weight_grads=2.0)
    assert calibrate.verdict("float32", "large").weight_grads_ms == {}
    assert fake.grads_calls == []
    fake = fake_calibration.install(monkeypatch, tmp_path, xla_weight_grads=2.0)
    assert calibrate.verdict("bfloat16", "large").weight_grads_ms == {}
    assert fake.grads_calls == []


def test_xla_weight_grads_faster_in_one_run_only_are_not_chosen(monkeypatch, tmp_path):
    """A load on the kernel library's repetitions in the first run (XLA's 1.2× faster) and not
    in the second: over both runs' repetitions the two are level, and the kernel's kept."""
    fake = fake_calibration.install(monkeypatch, tmp_path, xla_weight_grads=1.0)
    unloaded = fake.weight_grads

    def loaded_at_first(dtype):
        times = unloaded(dtype)
        if len(fake.grads_calls) == 1:
            times["kernel"] = [1.2 * fake_calibration.KERNEL_MS] * 3
        return times

    monkeypatch.setattr(calibrate, "time_weight_grads", loaded_at_first)
    large = calibrate.verdict("float32", "large")
    assert (large.weight_grads, len(fake.grads_calls)) == ("kernel", 2)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps(
            {"method": calibrate.METHOD, "verdicts": {"float32": {"small": {"speedup": 2}}}}
        ),
        json.dumps({"method": calibrate.METHOD, "verdicts": {"float32": "kernel"}}),
        "weight-grads",
    ],
    ids=["syntax", "list", "partial", "wrong-type", "weight-grads"],
)
def test_a_corrupt_cache_is_measured_again(monkeypatch, tmp_path, content):
    fake = fake_calibration.install(monkeypatch, tmp_path)
    path = calibrate.cache_path()
    if content == "weight-grads":  # a well-formed file but for an unknown choice of GEMMs
        calibrate.verdict("float32", "small")
        record = json.loads(path.read_text())
        record["verdicts"]["float32"]["large"]["weight_grads"] = "torch"
        content = json.dumps(record)
        monkeypatch.setattr(calibrate, "_KNOWN", {})
        fake.calls.clear()
    path.write_text(content)
    assert calibrate.verdict("float32", "small").choice == "kernel"
    assert len(fake.calls) == len(calibrate.REGIMES)
    assert json.loads(path.read_text())["verdicts"]["float32"]["small"]["speedup"] == 2.0


def test_a_file_of_the_first_method_is_measured_again(monkeypatch, tmp_path):
    """A well-formed file without ``method`` (the first method, which took medians) and its
    verdict for the scan: measured again, not followed."""
    fake = fake_calibration.install(monkeypatch, tmp_path)
    path = calibrate.cache_path()
    calibrate.verdict("float32", "small")
    record = json.loads(path.read_text())
    del record["method"]
    record["verdicts"]["float32"]["small"]["choice"] = "scan"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(calibrate, "_KNOWN", {})
    fake.calls.clear()
    assert calibrate.verdict("float32", "small").choice == "kernel"
    assert len(fake.calls) == len(calibrate.REGIMES)
    record = json.loads(path.read_text())
    assert record["method"] == calibrate.METHOD
    assert record["verdicts"]["float32"]["small"]["speedup"] == 2.0


def test_an_unwritable_cache_is_measured_once_per_process(monkeypatch, tmp_path):
    fake = fake_calibration.install(monkeypatch, tmp_path / "missing" / "folder")
    assert calibrate.verdict("float32", "small").choice == "kernel"
    assert calibrate.verdict("float32", "large").choice == "kernel"
    assert len(fake.calls) == len(calibrate.REGIMES) and not calibrate.cache_path().exists()
    assert calibrate.cached()["float32"]["large"]["choice"] == "kernel"


def test_a_failed_measurement_warns_and_leaves_the_size_rule(monkeypatch, tmp_path):
    fake = fake_calibration.install(monkeypatch, tmp_path)

    def broken(dtype, regime):
        fake.calls.append((dtype, regime))
        raise RuntimeError("no timer")

    monkeypatch.setattr(calibrate, "time_paths", broken)
    with pytest.warns(UserWarning, match="calibration failed.*no timer"):
        assert calibrate.verdict("float32", "small") is None
    assert calibrate.verdict("float32", "small") is None  # not measured again by this process
    assert len(fake.calls) == 1 and calibrate.cached() == {}


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_switched_off_it_never_measures(monkeypatch, tmp_path, value):
    fake = fake_calibration.install(monkeypatch, tmp_path)
    monkeypatch.setenv(calibrate.ENV, value)
    assert calibrate.disabled() and calibrate.verdict("float32", "small") is None
    assert fake.calls == []


def test_no_library_no_verdict(monkeypatch, tmp_path):
    fake = fake_calibration.install(monkeypatch, tmp_path)
    monkeypatch.setattr(build, "LIBRARY", [])
    assert calibrate.verdict("float32", "small") is None and calibrate.cached() == {}
    assert fake.calls == []


MEASURE_WITH_A_LOG = """
import sys, time
from pathlib import Path
from flax_lstm._kernel import build, calibrate
folder = Path(sys.argv[1])
build.LIBRARY[:] = [folder / "lstm_cpu_0123456789abcdef.so"]
def fake(dtype, regime):
    with open(folder / "calls.log", "a") as log:
        log.write(f"{dtype} {regime}\\n")
    time.sleep(0.5)
    return {p: {m: [10.0] for m in calibrate.MODES} for p in ("kernel", "scan")}
calibrate.time_paths = fake
calibrate.time_weight_grads = lambda dtype: {g: [10.0] for g in ("kernel", "xla")}
print(calibrate.verdict("float32", "small").choice)
"""


def test_concurrent_processes_measure_once(tmp_path):
    outs = python_process.run_together(MEASURE_WITH_A_LOG, str(tmp_path), FLAX_LSTM_CALIBRATE="1")
    assert [out.strip() for out in outs] == ["kernel"] * 3
    logged = (tmp_path / "calls.log").read_text().split()
    assert logged == [w for r in calibrate.REGIMES for w in ("float32", r)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_probes_run_eagerly_under_jit_and_grad(monkeypatch):
    """The plan is resolved while `jax.jit` or `jax.grad` trace the caller: the probes still
    run (and are timed) on concrete arrays, not staged into the caller's computation (where
    they would be timed tracing). Tiny probes keep it short."""
    if not kernel.available():
        pytest.skip("the kernel is not built")
    monkeypatch.setattr(calibrate, "probe", lambda regime: calibrate.Probe(4, 16, 2))
    monkeypatch.setattr(calibrate, "REPS", 1)
    seen, grads = [], []

    def traced(x):
        seen.append(calibrate.time_paths("float32", "small"))
        grads.append(calibrate.time_weight_grads("float32"))
        return x * 2

    # Nothing of the probes is staged into the caller's computation.
    assert [e.primitive.name for e in jax.make_jaxpr(traced)(1.0).eqns] == ["mul"]
    assert "flax_lstm" not in str(jax.make_jaxpr(jax.grad(traced))(1.0))
    assert len(seen) == len(grads) == 2
    for times in seen:
        ms = [v for path in times.values() for mode in path.values() for v in mode]
        assert len(ms) == 2 * len(calibrate.MODES) and all(
            isinstance(v, float) and v > 0 for v in ms
        )
    for times in grads:
        assert sorted(times) == ["kernel", "xla"]
        assert all(len(ms) == 1 and ms[0] > 0 for ms in times.values())


def test_kernel_command_calibrates_and_prints_the_verdicts(monkeypatch, tmp_path, capsys):
    if not kernel.available():
        pytest.skip("the kernel is not built")
    fake = fake_calibration.install(monkeypatch, tmp_path, small=1.25, large=0.5)
    assert cli.main(["kernel"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["calibration"] == {}
    assert "not yet" in captured.err and fake.calls == []
    assert cli.main(["kernel", "--calibrate"]) == 0
    captured = capsys.readouterr()
    state = json.loads(captured.out.splitlines()[-1])
    dtypes = ["float32", *(["bfloat16"] if kernel.available(jnp.bfloat16) else [])]
    assert sorted(state["calibration"]) == sorted(dtypes)
    assert state["calibration"]["float32"]["large"]["choice"] == "scan"
    assert "float32 small (probe B4 T64 H256): the kernel 1.25× the scan" in captured.err
    assert "float32 short (probe B1 T2 H128): the kernel 2.00× the scan" in captured.err
    assert "forward 2.00×, which decides the forward of a single step\n" in captured.err
    assert str(calibrate.cache_path()) in captured.err
    calls = len(fake.calls)
    cli.main(["kernel", "--calibrate"])  # measures again: "now"
    assert len(fake.calls) == 2 * calls


@bf16_kernel
def test_kernel_command_calibrates_bfloat16_beside_float32(monkeypatch, tmp_path, capsys):
    """Where the kernel has bfloat16, the command measures it too, and prints its verdicts."""
    require_bf16_kernel()
    fake = fake_calibration.install(monkeypatch, tmp_path, small=1.25, large=0.5)
    assert cli.main(["kernel", "--calibrate"]) == 0
    captured = capsys.readouterr()
    state = json.loads(captured.out.splitlines()[-1])
    assert sorted(state["calibration"]) == ["bfloat16", "float32"]
    assert state["calibration"]["bfloat16"]["large"]["choice"] == "scan"
    assert state["calibration"]["bfloat16"]["small"]["choice"] == "kernel"
    assert "bfloat16 small (probe B4 T64 H256): the kernel 1.25× the scan" in captured.err
    assert {dtype for dtype, _ in fake.calls} == {"bfloat16", "float32"}


REAL_CALIBRATION_UNDER_JIT = """
import json
import jax, jax.numpy as jnp, flax_lstm as fl
from flax_lstm._kernel import calibrate
cfg = fl.LSTMConfig(3, 64)
p = fl.init_params(jax.random.key(0), cfg)
x = jnp.ones((20, 8, 3))
out = jax.jit(lambda p, x: fl.lstm(p, x, config=cfg)[0])(p, x)
want = fl.lstm(p, x, config=cfg, impl="scan")[0]
print(json.dumps({
    "close": bool(jnp.allclose(out, want, atol=1e-5)),
    "reason": fl.lstm_plan(p, x, config=cfg).reason,
    "file": str(calibrate.cache_path()),
    "verdicts": calibrate.cached(),
}))
"""


def test_a_real_calibration_under_jit_in_a_fresh_process(tmp_path):
    """Unpatched: float32 is measured on this CPU the first time a jitted default call takes
    the kernel. The library is copied into the fresh cache folder (the same key: no build)."""
    if not kernel.available():
        pytest.skip("the kernel is not built")
    library = build.LIBRARY[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in (library, library.with_suffix(".json")):
        shutil.copy(path, cache / path.name)
    proc = python_process.run(
        "-c", REAL_CALIBRATION_UNDER_JIT, FLAX_LSTM_CACHE_DIR=str(cache), FLAX_LSTM_CALIBRATE="1"
    )
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["close"] and Path(got["file"]).parent == cache and Path(got["file"]).exists()
    assert list(got["verdicts"]) == ["float32"]
    for verdict in got["verdicts"]["float32"].values():
        assert verdict["speedup"] > 0 and verdict["choice"] in ("kernel", "scan")
        assert all(v > 0 for v in [*verdict["kernel_ms"].values(), *verdict["scan_ms"].values()])
        assert verdict["weight_grads"] in ("kernel", "xla")
    large = got["verdicts"]["float32"]["large"]
    if large["choice"] == "kernel":  # then the weight gradients were measured too
        assert sorted(large["weight_grads_ms"]) == ["kernel", "xla"]
    assert "measured on this CPU" in got["reason"]

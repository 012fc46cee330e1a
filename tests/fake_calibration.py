"""Fake timings for the kernel's calibration (`flax_lstm._kernel.calibrate`), for the tests
that check what the plan and the cache do with a verdict without measuring anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from flax_lstm._kernel import build, calibrate

KERNEL_MS = 10.0


class FakeTimings:
    """Stands in for `calibrate.time_paths`: the kernel takes `KERNEL_MS` per call, the scan
    ``speedup[regime]`` times that (above 1: the kernel is faster); ``calls`` records the
    ``(dtype, regime)`` of every measurement. Its `weight_grads` stands in for
    `calibrate.time_weight_grads`: the kernel library's weight gradients take `KERNEL_MS`, XLA's
    that over ``xla_speedup`` (above 1: XLA's are faster); ``grads_calls`` records the dtypes."""

    def __init__(self, speedup: dict[str, float], xla_speedup: float = 1.0):
        self.speedup = speedup
        self.xla_speedup = xla_speedup
        self.calls: list[tuple[str, str]] = []
        self.grads_calls: list[str] = []

    def weight_grads(self, dtype: str) -> calibrate.GradsTimings:
        self.grads_calls.append(dtype)
        return {"kernel": [KERNEL_MS] * 3, "xla": [KERNEL_MS / self.xla_speedup] * 3}

    def __call__(self, dtype: str, regime: str) -> calibrate.Timings:
        self.calls.append((dtype, regime))
        scan = KERNEL_MS * self.speedup[regime]
        return {
            "kernel": {m: [KERNEL_MS] * 3 for m in calibrate.MODES},
            "scan": {m: [scan] * 3 for m in calibrate.MODES},
        }


def install(
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    small: float = 2.0,
    large: float = 2.0,
    short: float = 2.0,
    xla_weight_grads: float = 1.0,
) -> FakeTimings:
    """Turn calibration on, with its file in ``folder`` (a library there, as far as the
    calibration knows) and fake timings: the kernel ``small``/``large``/``short`` times the
    scan in each regime, XLA's weight gradients ``xla_weight_grads`` times the kernel
    library's."""
    monkeypatch.setenv(calibrate.ENV, "1")
    monkeypatch.setattr(build, "LIBRARY", [folder / "lstm_cpu_0123456789abcdef.so"])
    monkeypatch.setattr(calibrate, "_KNOWN", {})
    monkeypatch.setattr(calibrate, "_FAILED", set())
    fake = FakeTimings({"small": small, "large": large, "short": short}, xla_weight_grads)
    monkeypatch.setattr(calibrate, "time_paths", fake)
    monkeypatch.setattr(calibrate, "time_weight_grads", fake.weight_grads)
    return fake

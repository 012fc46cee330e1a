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
    ``(dtype, regime)`` of every measurement."""

    def __init__(self, speedup: dict[str, float]):
        self.speedup = speedup
        self.calls: list[tuple[str, str]] = []

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
) -> FakeTimings:
    """Turn calibration on, with its file in ``folder`` (a library there, as far as the
    calibration knows) and fake timings: the kernel ``small``/``large``/``short`` times the
    scan in each regime."""
    monkeypatch.setenv(calibrate.ENV, "1")
    monkeypatch.setattr(build, "LIBRARY", [folder / "lstm_cpu_0123456789abcdef.so"])
    monkeypatch.setattr(calibrate, "_KNOWN", {})
    monkeypatch.setattr(calibrate, "_FAILED", set())
    fake = FakeTimings({"small": small, "large": large, "short": short})
    monkeypatch.setattr(calibrate, "time_paths", fake)
    return fake

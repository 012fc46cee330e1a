"""The kernel build that many processes share (issue 14): one build under a file lock, no
temporaries left by killed builds, ``FLAX_LSTM_ARCH``/``FLAX_LSTM_CXXFLAGS`` for portable
libraries, and ``flax-lstm kernel`` to prebuild and report.

A stand-in compiler (a shell script that logs its calls and writes an empty "library") keeps
these tests to seconds; the real build is tested in test_kernel.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import python_process

from flax_lstm import cli, kernel
from flax_lstm._kernel import build as kernel_build
from flax_lstm._kernel import tuning

FAKE_CXX = """#!/bin/sh
case "$*" in
  *--version*) echo "fakecxx 1.0"; exit 0 ;;
  *-dM*) echo "#define __AVX2__ 1"; echo "#define __FMA__ 1"; exit 0 ;;
esac
echo "$*" >> "$FAKE_CXX_LOG"
sleep 1
while [ "$#" -gt 1 ]; do
  if [ "$1" = "-o" ]; then : > "$2"; fi
  shift
done
"""


@pytest.fixture
def fake_cxx(tmp_path, monkeypatch) -> Path:
    cxx = tmp_path / "fakecxx"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CXX_LOG", str(log))
    monkeypatch.setenv("FLAX_LSTM_CACHE_DIR", str(tmp_path / "cache"))
    return cxx


def _compiles(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_concurrent_processes_build_once(fake_cxx, tmp_path):
    code = "import sys; from flax_lstm._kernel import build; print(build.build(sys.argv[1]))"
    outs = python_process.run_together(code, str(fake_cxx))
    assert len({out.strip() for out in outs}) == 1  # the same library for all
    assert len(_compiles(tmp_path)) == 1
    cache = tmp_path / "cache"
    assert len(list(cache.glob("*.so"))) == 1 and not list(cache.glob(".*.tmp*"))


def test_stale_temporaries_are_removed(fake_cxx, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old, fresh = time.time() - 2 * kernel_build.STALE_S, time.time()
    stale = [cache / "tmpk1l2.so", cache / ".lstm_cpu_0123456789abcdef.99.tmp.so"]
    live = cache / ".lstm_cpu_fedcba9876543210.98.tmp.so"  # another key, being built now
    for path, when in ((stale[0], old), (stale[1], old), (live, fresh)):
        path.write_bytes(b"")
        os.utime(path, (when, when))
    out = kernel_build.build(str(fake_cxx))
    key = out.stem.removeprefix("lstm_cpu_")
    ours = cache / f".lstm_cpu_{key}.1.tmp.so"  # this key's: stale whatever its age
    ours.write_bytes(b"")
    out.unlink()
    kernel_build.build(str(fake_cxx))
    assert not any(p.exists() for p in [*stale, ours]) and live.exists()


def test_portable_arch_and_extra_flags(fake_cxx, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_LSTM_ARCH", "x86-64-v3")
    monkeypatch.setenv("FLAX_LSTM_CXXFLAGS", "-O2 -DFLAX_LSTM_TEST=1")
    out = kernel_build.build(str(fake_cxx))
    (call,) = _compiles(tmp_path)
    assert "-march=x86-64-v3" in call and "-march=native" not in call
    assert call.index("-O3") < call.index("-O2")  # appended: the override wins
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["flags"][-3:] == ["-march=x86-64-v3", "-O2", "-DFLAX_LSTM_TEST=1"]
    assert record["isa"] == ["AVX2", "FMA"] and record["compiler"] == "fakecxx 1.0"
    # A portable build is shared by machines with other CPUs; a native one is not.
    monkeypatch.setattr(kernel_build, "cpu_identity", lambda: "another CPU")
    assert kernel_build.build(str(fake_cxx)) == out
    monkeypatch.setenv("FLAX_LSTM_ARCH", "native")
    native = kernel_build.build(str(fake_cxx))
    monkeypatch.setattr(kernel_build, "cpu_identity", lambda: "a third CPU")
    assert kernel_build.build(str(fake_cxx)) != native
    monkeypatch.setenv("FLAX_LSTM_ARCH", "none")
    kernel_build.build(str(fake_cxx))
    assert "-march" not in _compiles(tmp_path)[-1]


def test_every_kernel_file_is_in_the_key(fake_cxx, tmp_path, monkeypatch):
    """The kernel is lstm_cpu.cc and the headers it includes: an edit to any of them builds a
    new library, and the translation unit includes every header beside it."""
    source = kernel_build.SOURCE
    headers = [p.name for p in kernel_build.sources()[1:]]
    assert kernel_build.sources()[0] == source and "config.h" in headers
    included = re.findall(r'^#include "(\w+\.h)"', source.read_text(), flags=re.MULTILINE)
    assert sorted(included) == headers
    copy = tmp_path / "kernel"
    copy.mkdir()
    for path in kernel_build.sources():
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(kernel_build, "SOURCE", copy / source.name)
    first = kernel_build.library_path(str(fake_cxx))
    with open(copy / "gemm.h", "a") as f:
        f.write("// an edit\n")
    assert kernel_build.library_path(str(fake_cxx)) != first


def test_kernel_command_reports_the_library(capsys):
    status = cli.main(["kernel"])
    out, err = capsys.readouterr()
    state = json.loads(out.strip().splitlines()[-1])
    assert state.keys() >= {"available", "error", "library", "isa", "bfloat16", "threads"}
    assert state["small_batch"] == tuning.small_batch()
    assert state["min_split_work"] == tuning.min_split_work()
    if not kernel.available():
        assert status == 1 and state["error"]
        return
    assert status == 0 and state["error"] is None
    assert Path(state["library"]).exists() and state["threads"] >= 1
    assert isinstance(state["bfloat16"], bool)
    assert f"batches of at most {tuning.small_batch()} sequences" in err
    assert f"layers of less work than {tuning.min_split_work()} " in err
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert state["cpus"] == cpus and f"threads: {state['threads']} (of {cpus} usable CPUs)" in err


def test_kernel_command_says_why_not(monkeypatch, capsys):
    monkeypatch.setenv("FLAX_LSTM_CPU_KERNEL", "0")
    assert cli.main(["kernel"]) == 1
    captured = capsys.readouterr()
    state = json.loads(captured.out.strip().splitlines()[-1])
    assert state["available"] is False and "FLAX_LSTM_CPU_KERNEL" in state["error"]
    assert "not available" in captured.err


def test_failed_build_reports_the_compiler_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_LSTM_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernel_build, "SOURCE", bad)
    with pytest.raises(RuntimeError, match="failed"):
        kernel_build.build(kernel_build.compiler())
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind

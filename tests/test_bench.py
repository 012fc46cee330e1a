"""Smoke test of the benchmark command: a tiny custom shape, valid JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flax_lstm import bench
from flax_lstm.bench import libraries, runner, shapes


def test_bench_command_writes_json(tmp_path, capsys, monkeypatch):
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--shape",
            "2,6,8,2,bi,in=4",
            "--reps",
            "2",
            "--warmup",
            "1",
            "--libs",
            "flax_lstm,torch,flax_rnn,jax_cudnn",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    (entry,) = result["results"]
    assert entry["label"] == "B2 T6 H8 L2 I4 bi"
    assert set(entry["ms"]) >= {"flax_lstm", "torch", "flax_rnn"}
    for lib in entry["ms"].values():
        assert lib["fwd"] > 0 and lib["fwd_bwd"] > 0
    assert entry["speedup_vs"]["torch"]["fwd_bwd"] > 0
    assert entry["ms_min"]["flax_lstm"]["fwd"] <= entry["ms"]["flax_lstm"]["fwd"]
    assert "jax_cudnn" in entry["notes"] or "jax_cudnn" in entry["ms"]
    assert result["versions"]["jax"] and result["machine"]["cpu_count"]
    assert result["reference_gemm"]["gflops"] > 0
    # conftest imported torch first: its OpenMP threads keep libgomp's default, and JSON says so
    spin = result["torch_openmp_spin"]
    assert spin == "libgomp default (torch was imported before the benchmark)"
    table = capsys.readouterr().out
    assert "| B2 T6 H8 L2 I4 bi | fwd_bwd |" in table
    assert "large-GEMM reference (jax float32" in table


def test_bench_both_dtypes_compares_bfloat16_with_float32(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--shape", "2,6,8", "--dtypes", "float32,bfloat16", "--reps", "1", "--warmup", "1"]
    rc = bench.main([*args, "--libs", "flax_lstm,torch", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    f32, bf16 = result["results"]
    assert (f32["label"], bf16["label"]) == ("B2 T6 H8 L1", "B2 T6 H8 L1 bfloat16")
    assert "vs_float32" not in f32
    want = f32["ms"]["torch"]["fwd_bwd"] / bf16["ms"]["flax_lstm"]["fwd_bwd"]
    assert bf16["vs_float32"]["torch"]["fwd_bwd"] == pytest.approx(want)
    assert result["reference_gemm_by_dtype"]["bfloat16"]["gflops"] > 0
    printed = capsys.readouterr().out
    assert "B2 T6 H8 L1 bfloat16: flax_lstm bfloat16 against torch float32: fwd " in printed
    assert "large-GEMM reference (jax bfloat16" in printed
    with pytest.raises(SystemExit):
        bench.main(["--shape", "2,4,8", "--dtypes", "float16"])


def test_each_library_takes_each_place_in_turn():
    orders = [runner.rotated(["a", "b", "c"], rep) for rep in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert orders[3:] == orders[:3]
    assert runner.rotated(["a"], 5) == ["a"] and runner.rotated([], 2) == []


def test_shape_parsing():
    s = shapes.parse_shape("16,1024,768,bf16")
    assert (s.batch, s.seq_len, s.hidden, s.layers, s.dtype) == (16, 1024, 768, 1, "bfloat16")


def test_unknown_mode_or_lib_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--shape", "2,4,8", "--modes", "fwdbwd"])
    assert "--modes: unknown ['fwdbwd']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="modes must be a non-empty subset"):
        bench.run([shapes.parse_shape("2,4,8")], modes=("fwdbwd",))
    with pytest.raises(ValueError, match="libs must be a non-empty subset"):
        bench.run([shapes.parse_shape("2,4,8")], libs=("tensorflow",))


def test_torch_spinning_is_limited_before_torch_loads(monkeypatch):
    """In a fresh process the bench sets GOMP_SPINCOUNT before torch (and libgomp) load; a
    caller's own setting is kept."""
    code = (
        "import os, sys; from flax_lstm.bench import libraries; "
        "print(libraries.limit_torch_spinning(('torch',))); print(os.environ['GOMP_SPINCOUNT']); "
        "print('torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == [
        "GOMP_SPINCOUNT=3000 (set by the benchmark)",
        "3000",
        "False",
    ]
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert (
        libraries.limit_torch_spinning(("torch",)) == "OMP_WAIT_POLICY=ACTIVE (set by the caller)"
    )
    assert libraries.limit_torch_spinning(("flax_lstm",)) == "not applicable"

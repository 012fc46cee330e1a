"""Smoke test of the benchmark command: a tiny custom shape, valid JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flax_lstm import bench
from flax_lstm.bench import libraries, runner, shapes


def run_bench(tmp_path, *args: str) -> dict:
    """``flax-lstm bench ARGS --json FILE``: it must succeed; the JSON it wrote."""
    out = tmp_path / "bench.json"
    assert bench.main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_command_writes_json(tmp_path, capsys, monkeypatch):
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    result = run_bench(
        tmp_path,
        *("--shape", "2,6,8,2,bi,in=4", "--reps", "2", "--warmup", "1"),
        *("--libs", "flax_lstm,torch,flax_rnn,jax_cudnn"),
    )
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
    args = ["--shape", "2,6,8", "--dtypes", "float32,bfloat16", "--reps", "1", "--warmup", "1"]
    result = run_bench(tmp_path, *args, "--libs", "flax_lstm,torch")
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


def test_bench_ragged_lengths(tmp_path, capsys):
    """--lengths: flax_lstm with seq_lengths beside itself padded, torch padded and torch packed,
    in the table and the JSON; the lengths and the share of valid steps are recorded."""
    result = run_bench(
        tmp_path,
        *("--shape", "3,8,8,1,in=4", "--shape", "2,6,4,2,bi", "--lengths", "uniform:2:6"),
        *("--libs", "flax_lstm,torch,flax_lstm_padded,torch_packed"),
        *("--reps", "1", "--warmup", "1"),
    )
    one, bi = result["results"]
    assert (one["label"], bi["label"]) == ("B3 T8 H8 L1 I4 len U[2,6]", "B2 T6 H4 L2 bi len U[2,6]")
    for entry, batch, seq_len in ((one, 3, 8), (bi, 2, 6)):
        assert entry["shape"]["lengths"] == "uniform:2:6"
        assert set(entry["ms"]) == {"flax_lstm", "torch", "flax_lstm_padded", "torch_packed"}
        assert all(t > 0 for lib in entry["ms"].values() for t in lib.values())
        assert set(entry["speedup_vs"]) == {"torch", "flax_lstm_padded", "torch_packed"}
        lengths = entry["seq_lengths"]
        assert len(lengths) == batch and all(2 <= n <= 6 for n in lengths)
        assert entry["valid_fraction"] == pytest.approx(sum(lengths) / (batch * seq_len))
    table = capsys.readouterr().out
    assert "| flax_lstm padded ms | torch packed ms | vs flax_lstm padded | vs torch packed |" in (
        table
    )
    rows = [line for line in table.splitlines() if line.startswith("| B3 T8 H8 L1 I4 len U[2,6] |")]
    assert len(rows) == 2 and all(row.count("|") == 17 for row in rows)
    # the same lengths at every run; shapes without lengths leave the ragged-only libraries out
    assert shapes.Shape(3, 8, 8, lengths="uniform:2:6").seq_lengths().tolist() == one["seq_lengths"]
    plain = bench.run(
        [shapes.Shape(2, 4, 8)], libs=("flax_lstm", "flax_lstm_padded"), reps=1, warmup=1,
        reference_gemm=False,
    )  # fmt: skip
    (entry,) = plain["results"]
    assert set(entry["ms"]) == {"flax_lstm"} and not entry["notes"]
    assert "seq_lengths" not in entry and "vs flax_lstm padded" not in bench.format_table([entry])


@pytest.mark.parametrize(
    "value", ["uniform:0:4", "uniform:5:3", "normal:2:4", "uniform", "uniform:2:x", "2:4"]
)
def test_bench_bad_lengths_is_a_clear_error(value, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--shape", "2,8,8", "--lengths", value])
    err = capsys.readouterr().err
    assert "argument --lengths: must look like uniform:MIN[:MAX] with integers" in err
    assert f"got {value!r}" in err


def test_bench_lengths_longer_than_the_shape_is_a_clear_error(capsys):
    for value in ("uniform:2:9", "uniform:9"):
        with pytest.raises(SystemExit):
            bench.main(["--shape", "2,8,8", "--lengths", value])
        err = capsys.readouterr().err
        assert f"--lengths {value}: lengths up to 9 do not fit the sequence length of B2 T8" in err
    with pytest.raises(ValueError, match="do not fit the sequence length"):
        shapes.Shape(2, 8, 8, lengths="uniform:2:9")


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

"""The benchmark command on tiny shapes: valid JSON out, with the machine's CPU (model, family,
ISA flags, caches) and the yardstick (the best GEMM of XLA and torch); the shape sets; and the
docs' tables generated from old and new JSON files."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_checks import needs_kernel

from flax_lstm import bench, kernel
from flax_lstm.bench import cpu, libraries, machine, report, shapes, yardstick

ROOT = Path(__file__).resolve().parents[1]
TINY_GEMM = ("--gemm-size", "128")  # the yardstick's GEMM, small: these tests time nothing


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python tools/NAME ARGS…`` run from ``cwd``, its output as text (10 minutes at most)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *args],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )  # fmt: skip


def run_tool_json(tmp_path: Path, name: str, *args: str) -> tuple[str, dict]:
    """`run_tool` with ``--json FILE`` from ``tmp_path``: it must succeed; its printed output
    and the JSON it wrote."""
    out = tmp_path / "tool.json"
    proc = run_tool(name, *args, "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


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
        *TINY_GEMM,
    )
    (entry,) = result["results"]
    assert entry["label"] == "B2 T6 H8 L2 I4 bi"
    assert set(entry["ms"]) >= {"flax_lstm", "torch", "flax_rnn"}
    for lib in entry["ms"].values():
        assert lib["fwd"] > 0 and lib["fwd_bwd"] > 0
    assert entry["speedup_vs"]["torch"]["fwd_bwd"] > 0
    assert entry["ms_min"]["flax_lstm"]["fwd"] <= entry["ms"]["flax_lstm"]["fwd"]
    assert "jax_cudnn" in entry["notes"] or "jax_cudnn" in entry["ms"]
    # the path flax_lstm took and why (`fl.lstm_plan`): six steps of 8 units are the scan's
    plan = entry["flax_lstm_plan"]
    assert plan["recurrence"] == "scan" and plan["reason"] and plan["weight_grads"] == "kernel"
    # and the kernel's state the default followed: its instruction sets, threads, verdicts
    state = result["flax_lstm_kernel"]
    assert state["available"] == kernel.available() and state["threads"] >= 1
    assert state["small_batch"] >= 0 and state["min_split_work"] >= 0
    assert isinstance(state["calibration"], dict)
    assert result["versions"]["jax"] and result["machine"]["cpu_count"]
    ref = result["reference_gemm"]
    assert ref["n"] == 128 and ref["gflops"] == max(ref["gflops_by_library"].values())
    # conftest imported torch first: its OpenMP threads keep libgomp's default, and JSON says so
    spin = result["torch_openmp_spin"]
    assert spin == "libgomp default (torch was imported before the benchmark)"
    printed = capsys.readouterr()
    table = printed.out
    assert f"B2 T6 H8 L2 I4 bi: flax_lstm ran the scan path: {plan['reason']}" in (
        printed.out + printed.err
    )
    assert "| B2 T6 H8 L2 I4 bi | fwd_bwd |" in table
    assert "yardstick, the best float32 128x128 GEMM" in table
    # flax_lstm's and torch's shares of it: the same FLOPs over each one's median time
    factor = {"fwd": 1, "fwd_bwd": 3}
    shares = [
        shapes.Shape(**e["shape"]).flops() * factor[m] / (ms * 1e6) / ref["gflops"]
        for e in result["results"]
        for m, ms in e["ms"]["torch"].items()
    ]
    assert f"torch {min(shares):.0%}-{max(shares):.0%} of it" in table


@needs_kernel
def test_bench_times_the_path_the_default_did_not_take(tmp_path, capsys):
    """``vs_other_path``: against the scan where the default took the kernel (B2 T16 H64, large
    enough for it; measuring is off here), and against the kernel, timed for that alone, where
    the default took the scan (B2 T6 H8, too small for the kernel's fixed cost)."""
    result = run_bench(
        tmp_path,
        *("--shape", "2,16,64", "--shape", "2,6,8", "--reps", "2", "--warmup", "1"),
        *("--libs", "flax_lstm,flax_lstm_scan,flax_lstm_kernel"),
        *TINY_GEMM,
    )
    on_kernel, on_scan = result["results"]
    assert on_kernel["flax_lstm_plan"]["grad_recurrence"] == "kernel"
    assert on_kernel["notes"]["flax_lstm_kernel"] == (
        "skipped: flax_lstm's default runs the kernel here"
    )
    for mode in ("fwd", "fwd_bwd"):
        other = on_kernel["vs_other_path"][mode]
        assert other == {"path": "scan", "speedup": on_kernel["speedup_vs"]["flax_lstm_scan"][mode]}
        other = on_scan["vs_other_path"][mode]
        want = on_scan["speedup_vs"]["flax_lstm_kernel"][mode]
        assert other == {"path": "kernel", "speedup": want} and want > 0
    ratios = ", ".join(f"{m} {on_scan['vs_other_path'][m]['speedup']:.2f}x" for m in bench.MODES)
    summary = f"B2 T6 H8 L1: flax_lstm's default (the scan) against the kernel: {ratios}"
    assert summary in capsys.readouterr().out
    # where the default's plan could not be made, the kernel path is left out, saying so
    reason = libraries.skip_reason("flax_lstm_kernel", shapes.Shape(2, 6, 8), plan=None)
    assert reason == "skipped: flax_lstm's default has no plan here"


def test_bench_both_dtypes_compares_bfloat16_with_float32(tmp_path, capsys):
    args = ["--shape", "2,6,8", "--dtypes", "float32,bfloat16", "--reps", "1", "--warmup", "1"]
    args += TINY_GEMM
    result = run_bench(tmp_path, *args, "--libs", "flax_lstm,torch")
    f32, bf16 = result["results"]
    assert (f32["label"], bf16["label"]) == ("B2 T6 H8 L1", "B2 T6 H8 L1 bfloat16")
    assert "vs_float32" not in f32
    want = f32["ms"]["torch"]["fwd_bwd"] / bf16["ms"]["flax_lstm"]["fwd_bwd"]
    assert bf16["vs_float32"]["torch"]["fwd_bwd"] == pytest.approx(want)
    assert result["reference_gemm_by_dtype"]["bfloat16"]["gflops"] > 0
    printed = capsys.readouterr().out
    assert "B2 T6 H8 L1 bfloat16: flax_lstm bfloat16 against torch float32: fwd " in printed
    assert "yardstick, the best bfloat16 128x128 GEMM" in printed
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
        *TINY_GEMM,
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


def test_torch_runs_where_jax_computes(monkeypatch):
    """A CUDA build of torch on a GPU machine, benchmarked with JAX on the CPU
    (``JAX_PLATFORMS=cpu``), stays on the CPU: on the GPU it would time the GPU against
    flax_lstm's CPU kernel."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: pytest.fail("synchronized CUDA"))
    shape = shapes.parse_shape("2,4,8")
    x = np.zeros((shape.seq_len, shape.batch, shape.in_size), np.float32)
    fns = libraries.BUILDERS["torch"](shape, x)
    fns["fwd"]()
    fns["fwd_bwd"]()


def test_json_records_the_cpus_allowed(monkeypatch):
    """Under ``taskset`` the JSON says how many CPUs the benchmark could use."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    info = machine.machine_info()
    assert info["cpus_allowed"] == 2 and info["cpu_count"] == os.cpu_count()


def test_small_set_runs(tmp_path, capsys):
    """--set small: batches of 1 to 16 at hidden sizes 128 to 512, one layer, I = H, among them
    issue 23's B1 T128 H512, B8 T128 H256 and B16 T128 H512; each shape runs."""
    labels = [s.label() for s in bench.SMALL_SET]
    assert {"B1 T128 H512 L1", "B8 T128 H256 L1", "B16 T128 H512 L1"} <= set(labels)
    assert {s.batch for s in bench.SMALL_SET} == {1, 4, 8, 16}
    assert {s.hidden for s in bench.SMALL_SET} == {128, 256, 512}
    assert all(s.layers == 1 and s.in_size == s.hidden for s in bench.SMALL_SET)
    assert bench.SETS == {"cpu": bench.CPU_SET, "small": bench.SMALL_SET, "gpu": bench.GPU_SET}
    result = run_bench(
        tmp_path,
        *("--set", "small", "--libs", "flax_lstm", "--modes", "fwd", "--reps", "1"),
        *("--warmup", "0", *TINY_GEMM),
    )
    assert [e["label"] for e in result["results"]] == labels
    assert all(e["ms"]["flax_lstm"]["fwd"] > 0 for e in result["results"])
    help_text = bench.cli._parser().format_help()
    assert "small: B1 T128 H128 L1" in " ".join(help_text.split())


def test_json_records_the_cpu_and_the_best_gemm(tmp_path, capsys):
    """The JSON names the CPU (model, family, the ISA flags of /proc/cpuinfo, caches); the
    printed table's header line says the same; the yardstick is the faster of XLA's and torch's
    GEMM, both rates recorded."""
    result = run_bench(
        tmp_path, "--shape", "2,4,8", "--libs", "flax_lstm", "--reps", "1", *TINY_GEMM
    )
    m = result["machine"]
    assert {"cpu_model", "cpu_family", "cpu_flags", "cpu_caches", "cpu_vendor"} <= set(m)
    try:
        proc_flags = set(
            Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n")[0].split()
        )
    except (OSError, IndexError):
        proc_flags = set()  # not Linux: the fields stay empty
    assert m["cpu_flags"] == [f for f in cpu.ISA_FLAGS if f in proc_flags]
    if sys.platform == "linux" and m["cpu_vendor"] in ("AuthenticAMD", "GenuineIntel"):
        assert m["cpu_model"] and m["cpu_family"] and m["cpu_caches"].get("L1d", 0) > 0
    ref = result["reference_gemm_by_dtype"]["float32"]
    rates = ref["gflops_by_library"]
    assert set(rates) == {"xla", "torch"}  # torch is installed for the tests
    assert ref["best"] == max(rates, key=rates.get) and ref["gflops"] == rates[ref["best"]]
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header == report.machine_line(m) and header.startswith(f"CPU: {m['cpu_model']}")
    assert "flags " in header and "| shape | mode |" in out.splitlines()[1]


def test_cpu_identification_from_cpuinfo_and_sysfs(tmp_path):
    spr = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
        "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
        "processor\t: 1\nvendor_id\t: other\n"
    )
    info = cpu.parse_cpuinfo(spr)
    assert info["cpu_family"] == "Intel Sapphire Rapids"
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert info["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu.family_name("AuthenticAMD", 0x19, 0x11) == "AMD Zen 4"
    assert cpu.family_name("AuthenticAMD", 0x19, 0x01) == "AMD Zen 3"
    assert cpu.family_name("AuthenticAMD", 0x1B, 1) == "AuthenticAMD family 0x1b model 0x1"
    assert cpu.parse_cpuinfo("") == {
        "cpu_model": "", "cpu_vendor": "", "cpu_family_number": None,
        "cpu_model_number": None, "cpu_family": "", "cpu_flags": [],
    }  # fmt: skip
    for name, level, kind, size in (("index0", 1, "Data", "48K"), ("index3", 3, "Unified", "32M")):
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(f"{value}\n")
    assert cpu.cache_sizes(tmp_path) == {"L1d": 48 << 10, "L3": 32 << 20}
    assert cpu.cache_sizes(tmp_path / "absent") == {}


def test_yardstick_arguments_and_older_results():
    ref = yardstick.best_gemm("float32", n=32, reps=1, libraries=("xla",))
    assert ref["best"] == "xla" and set(ref["gflops_by_library"]) == {"xla"}
    with pytest.raises(ValueError, match="libraries must be a non-empty subset"):
        yardstick.best_gemm(libraries=("mkl",))
    old = {"n": 2048.0, "gflops": 198.4}  # a file from before the best GEMM: XLA's only
    assert report.yardstick_text("float32", old) == "float32 2048x2048 GEMM 198 GFLOP/s (xla only)"
    assert (
        report.machine_line({"cpu_model": "AMD EPYC", "cpu_count": 2}) == "CPU: AMD EPYC, 2 cores"
    )
    with pytest.raises(SystemExit):
        bench.main(["--shape", "2,4,8", "--gemm-size", "0"])


@pytest.fixture
def perf_tables(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "_scripts"))
    return importlib.import_module("perf_tables")


def test_perf_tables_render_old_and_new_files(tmp_path, monkeypatch, perf_tables):
    """The docs' tables read the JSON files of every age: the committed ones (without the CPU's
    family, flags or the best-GEMM yardstick) and one written now; CPU runs are grouped by
    family, an old file's family taken from the index, a new one's from the JSON."""
    text = perf_tables.render()
    assert "## CPU: AMD Zen 4" in text and "## One table per CPU family" in text
    assert "AMD Zen 4 (as `benchmarks/README.md` names it; not recorded in the file)" in text
    assert "yardstick (XLA's GEMM only, before it was the best GEMM)" in text

    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    old = "cpu_d8485b1_small_batches.json"
    shutil.copy(ROOT / "benchmarks" / old, bench_dir / old)
    new = bench.run(
        [shapes.Shape(2, 4, 8)], libs=("flax_lstm", "torch"), reps=1, warmup=1, gemm_size=64
    )
    new["machine"]["cpu_family"] = "Intel Sapphire Rapids"  # as if it ran there
    (bench_dir / "cpu_new_small_set.json").write_text(json.dumps(new))
    # a newer run on one of the machine's CPUs: listed, but not the family's table
    one_cpu = json.loads(json.dumps(new))
    one_cpu["machine"].update(cpus_allowed=1, cpu_count=2)
    one_cpu["date"] = "9999-01-01 00:00:00 UTC"
    (bench_dir / "cpu_new_small_set_1cpu.json").write_text(json.dumps(one_cpu))
    (bench_dir / "README.md").write_text(
        "| file | command | machine, date |\n|---|---|---|\n"
        f"| `{old}` | `--shape 1,256,256 --reps 10` | a 2-core AMD EPYC (Zen 4), 2026-11-27 |\n"
        "| `cpu_new_small_set.json` | `flax-lstm bench --set small --reps 1` | today |\n"
        "| `cpu_new_small_set_1cpu.json` | `taskset -c 0 flax-lstm bench --set small` | same |\n"
    )
    monkeypatch.setattr(perf_tables, "BENCH", bench_dir)
    text = perf_tables.render()
    assert "## CPU: AMD Zen 4" in text and "## CPU: Intel Sapphire Rapids" in text
    assert "### Intel Sapphire Rapids: `flax-lstm bench --set small --reps 1`" in text
    assert "### Intel Sapphire Rapids: `taskset -c 0 flax-lstm bench --set small`" not in text
    assert "### cpu_new_small_set_1cpu.json" in text
    # and one with another small-batch size or split work than the kernel's defaults
    assert perf_tables._default_settings(new)
    for setting, other_value in [("small_batch", 16), ("min_split_work", 0)]:
        other = json.loads(json.dumps(new))
        other["flax_lstm_kernel"][setting] = other_value
        assert not perf_tables._default_settings(other)
    ref = new["reference_gemm_by_dtype"]["float32"]
    assert f"({ref['best']} was faster: xla " in text
    table = perf_tables.full_table(new)
    assert table.splitlines()[0].endswith("| GFLOP/s | of best GEMM | torch of best GEMM |")
    row = new["results"][0]
    share = row["flax_lstm_gflops"]["fwd"] / ref["gflops"]
    # torch's share: the same FLOPs over torch's time
    flops = shapes.Shape(2, 4, 8).flops()
    torch_share = flops / (row["ms"]["torch"]["fwd"] * 1e6) / ref["gflops"]
    assert table.splitlines()[2].endswith(f"| {share:.0%} | {torch_share:.0%} |")
    assert "of best GEMM" not in perf_tables.full_table(perf_tables.load(old))
    # the family tables give torch's share too, the README's headline tables do not
    assert "| torch of best GEMM, fwd+bwd / fwd |" in text.split("## CPU: ")[0]
    assert "torch of best GEMM" not in perf_tables.headline_table("cpu_new_small_set.json")


@needs_kernel
def test_kernel_ab_tool_compares_two_kernel_libraries(tmp_path):
    """tools/kernel_ab.py: HEAD's kernel beside the checkout's, both traced and timed, in one
    process (the tool checks that each variant's trace calls its own library)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the baseline is a git revision)")
    printed, record = run_tool_json(
        tmp_path, "kernel_ab.py", "--baseline", "HEAD", "--shape", "2,16,32", "--reps", "2"
    )
    assert "| B2 T16 H32 L1 | fwd_bwd |" in printed
    rows = record["rows"]
    assert [r["mode"] for r in rows] == ["fwd", "fwd_bwd"]
    assert all(r["ms"]["baseline"] > 0 and r["ms"]["current"] > 0 for r in rows)


@needs_kernel
def test_kernel_stages_tool_times_each_call_of_a_layer(tmp_path):
    """tools/kernel_stages.py: every distinct layer of a shape (the first layer's input size,
    then D·H), each of the kernel's calls timed with the GEMM FLOPs it does, and the whole
    layer through flax_lstm and torch."""
    printed, record = run_tool_json(
        tmp_path, "kernel_stages.py", "--shape", "2,8,16,2,bi,in=4", "--reps", "2",
        "--gemm-size", "64",
    )  # fmt: skip
    assert "| backward |" in printed and "| torch_fwd_bwd |" in printed
    records = record["results"]
    assert [r["label"] for r in records] == ["B2 T8 H16 L1 I4 bi", "B2 T8 H16 L1 I32 bi"]
    for r, i in zip(records, (4, 32), strict=True):
        calls = r["calls"]
        assert set(calls) == {
            "forward", "forward_train", "forward_backward", "backward", "weight_grads",
            "input_grad", "xla_weight_grads", "flax_lstm_fwd_bwd", "torch_fwd_bwd",
        }  # fmt: skip
        # the backward: the forward and backward pair less the forward
        pair, train = calls["forward_backward"]["ms"], calls["forward_train"]["ms"]
        assert calls["backward"]["ms"] == pytest.approx(pair - train)
        rows = 2 * 8 * 2 * 2 * 4 * 16  # 2 · T · D · N · 4H
        work = {"forward": rows * (i + 16), "forward_backward": rows * (i + 32)}
        work |= {"input_grad": rows * i}
        for name, flops in work.items():
            assert calls[name]["gflops"] * calls[name]["ms"] * 1e6 == pytest.approx(flops)
        assert 0 < calls["forward"]["min_ms"] <= calls["forward"]["ms"]
        assert r["yardstick_gflops"] > 0


@needs_kernel
def test_small_calls_tool_times_both_paths_and_names_the_default(tmp_path):
    """tools/small_calls.py: the kernel and the scan on short calls, with the default's path."""
    printed, result = run_tool_json(
        tmp_path, "small_calls.py", "--shape", "1,2,128", "--shape", "2,1,16", "--reps", "2"
    )
    lines = printed.splitlines()
    assert lines[0].startswith("B1 T2 H128 [default scan]: fwd ")  # measuring is off here
    assert lines[1].startswith("B2 T1 H16 [default scan]: fwd ")
    assert "cpu_flags" in result["machine"] and len(result["results"]) == 2
    first = result["results"][0]
    assert all(first[m][f"{p}_ms"] > 0 for m in ("fwd", "fwd_bwd") for p in ("kernel", "scan"))
    bad = run_tool("small_calls.py", "--shape", "1,2", cwd=tmp_path)
    assert bad.returncode == 2 and "expected B,T,H" in bad.stderr


def test_plan_sweep_tool_draws_the_same_shapes_for_a_seed(tmp_path):
    """tools/plan_sweep.py: a seed's random shapes, run with the default, its other path and
    torch; the JSON records the draw, and the printed summary names what fell short."""
    args = ("--n", "2", "--seed", "5", "--reps", "1", "--max-gflop", "0.002")
    printed, result = run_tool_json(tmp_path, "plan_sweep.py", *args)
    assert result["draw"] == {"seed": 5, "n": 2, "max_gflop": 0.002}
    labels = [r["label"] for r in result["results"]]
    assert len(labels) == 2 and all(f"| {label} | fwd |" in printed for label in labels)
    assert "falls short" in printed or "fall short:" in printed
    assert all(r["shape"]["batch"] >= 1 and "flax_lstm_scan" in r["ms"] for r in result["results"])
    _, again = run_tool_json(tmp_path, "plan_sweep.py", *args)
    assert [r["label"] for r in again["results"]] == labels
    bad = run_tool("plan_sweep.py", "--n", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "must be positive" in bad.stderr


def test_scan_directions_tool_times_both_loop_layouts(tmp_path):
    """tools/scan_directions.py: the CPU scan of a bidirectional layer, one loop per direction
    and both in one, on the shapes given (layers, projection and dtype optional)."""
    printed, result = run_tool_json(
        tmp_path, "scan_directions.py", "--shape", "2,1,16", "--shape", "1,3,16,2,8,bfloat16",
        "--reps", "2",
    )  # fmt: skip
    lines = printed.splitlines()
    assert lines[0].startswith("B2 T1 H16 L1 float32 bidirectional: fwd unfused ")
    assert lines[1].startswith("B1 T3 H16 L2 P8 bfloat16 bidirectional: fwd unfused ")
    assert "cpu_flags" in result["machine"] and len(result["results"]) == 2
    first = result["results"][0]
    assert first["shape"] == {
        "batch": 2, "steps": 1, "hidden": 16, "layers": 1, "proj": 0, "dtype": "float32"
    }  # fmt: skip
    assert all(first[m][f"{k}_ms"] > 0 for m in ("fwd", "fwd_bwd") for k in ("unfused", "fused"))
    bad = run_tool("scan_directions.py", "--shape", "1,2", cwd=tmp_path)
    assert bad.returncode == 2 and "expected B,T,H" in bad.stderr


@needs_kernel
def test_kernel_ab_compares_the_weight_gradients_with_xla(tmp_path):
    """``--baseline xla-weight-grads``: the checkout against itself with XLA's GEMMs for the
    weight gradients; the tool checks that only the current variant's trace calls the kernel's
    `weight_grads` (T·N = 128 rows against I + H = 64 columns: the kernel's, by the plan)."""
    _, record = run_tool_json(
        tmp_path, "kernel_ab.py", "--baseline", "xla-weight-grads", "--modes", "fwd_bwd",
        "--shape", "8,16,32", "--reps", "2", "--copies", "1",
    )  # fmt: skip
    assert record["baseline"] == "xla-weight-grads"
    assert [(r["shape"], r["mode"]) for r in record["rows"]] == [("B8 T16 H32 L1", "fwd_bwd")]
    assert all(record["rows"][0]["ms"][who] > 0 for who in ("baseline", "current"))


def test_kernel_ab_rejects_unknown_modes(tmp_path):
    proc = run_tool(
        "kernel_ab.py", "--baseline", "xla-weight-grads", "--modes", "fwd,backward",
        "--shape", "8,16,32", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    expected = "--modes: expected a comma list from ('fwd', 'fwd_bwd'), got 'fwd,backward'"
    assert expected in proc.stderr


def test_kernel_ab_baseline_from_a_source_file(tmp_path, monkeypatch):
    """On a machine without the git history the baseline is a copy of ``lstm_cpu.cc`` and the
    headers beside it, or of a folder that holds them."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    kernel_ab = importlib.import_module("kernel_ab")
    source = tmp_path / "baseline_lstm_cpu.cc"
    source.write_text("// the baseline\n")
    (tmp_path / "gemm.h").write_text("// a header\n")
    expected = {"lstm_cpu.cc": b"// the baseline\n", "gemm.h": b"// a header\n"}
    assert kernel_ab.baseline_sources(str(source)) == expected
    calls = []
    monkeypatch.setattr(kernel_ab.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(kernel_ab.build, "compiler", lambda: "c++")
    monkeypatch.setattr(kernel_ab.kernel, "available", lambda *a: True)
    monkeypatch.setattr(kernel_ab.kernel, "info", lambda: {"flags": ["-O3"]})
    folder = tmp_path / "build"
    folder.mkdir()
    out = kernel_ab.build_baseline(str(source), folder)
    assert (folder / "lstm_cpu.cc").read_text() == "// the baseline\n"
    assert (folder / "gemm.h").read_text() == "// a header\n"
    assert out == folder / "baseline.so" and len(calls) == 1 and "git" not in calls[0]
    assert str(folder / "lstm_cpu.cc") in calls[0]
    assert kernel_ab.baseline_sources(str(folder))["gemm.h"] == b"// a header\n"


def test_kernel_ab_baseline_of_a_revision(monkeypatch):
    """A git revision's kernel is its lstm_cpu.cc and the headers beside it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    kernel_ab = importlib.import_module("kernel_ab")
    files = kernel_ab.baseline_sources("HEAD")
    assert "lstm_cpu.cc" in files and all(name.endswith((".cc", ".h")) for name in files)
    shown = ["git", "-C", str(ROOT), "show", "HEAD:flax_lstm/_kernel/lstm_cpu.cc"]
    assert files["lstm_cpu.cc"] == subprocess.run(shown, capture_output=True, check=True).stdout

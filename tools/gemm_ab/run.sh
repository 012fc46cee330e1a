#!/usr/bin/env bash
# The kernel's packed GEMM alone, this checkout's against a git revision's, one core:
#   tools/gemm_ab/run.sh REV
# Builds tools/gemm_ab/gemm_rows.cc against each version of the kernel (flax_lstm/_kernel:
# lstm_cpu.cc and its headers) with the kernel's own compiler and flags
# (flax_lstm._kernel.build.compile_command, as tools/kernel_ab.py does) and prints a table of
# GFLOP/s by number of rows (the batch of a step). Used for "Short row blocks on AVX2" in docs/performance/design.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
rev="${1:?usage: tools/gemm_ab/run.sh REV}"
# gemm_rows.cc passes gemm_packed a count of columns, which it takes from 8501d75 on (before, a
# count of panels): an older baseline would read past its panels.
if ! git merge-base --is-ancestor 8501d75 "$rev"; then
  echo "tools/gemm_ab/run.sh: $rev predates 8501d75, whose gemm_packed takes columns" >&2
  exit 2
fi
py="${PYTHON:-.venv/bin/python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
mkdir "$out/baseline" "$out/current"
git archive "$rev" flax_lstm/_kernel | tar -x --strip-components=2 -C "$out/baseline"
cp flax_lstm/_kernel/*.cc flax_lstm/_kernel/*.h "$out/current/"
"$py" - "$out" <<'PY'
import subprocess
import sys
from pathlib import Path

from flax_lstm import kernel
from flax_lstm._kernel import build

out, flags = Path(sys.argv[1]), kernel.info()["flags"]
for version in ("baseline", "current"):
    define = f'-DSRC="{out / version / "lstm_cpu.cc"}"'
    cmd = build.compile_command(
        build.compiler(), [*flags, define], Path("tools/gemm_ab/gemm_rows.cc"), out / f"{version}.so"
    )
    subprocess.run(cmd, check=True)
PY
g++ -O2 tools/gemm_ab/driver.cc -o "$out/driver" -ldl
"$out/driver" "$out/baseline.so" "$out/current.so"

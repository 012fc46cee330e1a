#!/usr/bin/env bash
# The kernel's packed GEMM alone, this checkout's against a git revision's, one core:
#   tools/gemm_ab/run.sh REV
# Builds tools/gemm_ab/gemm_rows.cc against each version of flax_lstm/_kernel/lstm_cpu.cc with
# the kernel's own flags and prints a table of GFLOP/s by number of rows (the batch of a step).
# Used for "Short row blocks on AVX2" in docs/performance/design.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
rev="${1:?usage: tools/gemm_ab/run.sh REV}"
py="${PYTHON:-.venv/bin/python}"
inc="$("$py" -c 'import jax; print(jax.ffi.include_dir())')"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
git show "$rev:flax_lstm/_kernel/lstm_cpu.cc" > "$out/baseline.cc"
cp flax_lstm/_kernel/lstm_cpu.cc "$out/current.cc"
for v in baseline current; do
  g++ -O3 -std=c++20 -march=native -shared -fPIC -pthread -isystem "$inc" \
    -DSRC="\"$out/$v.cc\"" tools/gemm_ab/gemm_rows.cc -o "$out/$v.so"
done
g++ -O2 tools/gemm_ab/driver.cc -o "$out/driver" -ldl
"$out/driver" "$out/baseline.so" "$out/current.so"

#!/usr/bin/env bash
# One-shot GPU check for a lent H100/H200 (see README "Performance"): the GPU benchmark set, then
# the GPU parity tests. Writes JSON under ${OUT:-.}. SWEEP=1 adds an unroll / autodiff sweep.
set -u
OUT=${OUT:-.}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__)"
git log -1 --format='commit %h %s' 2>/dev/null
timeout "${BENCH_TIMEOUT:-300}" python3 -m flax_lstm.bench --set gpu --reps 10 --json "$OUT/bench_gpu.json" 2>/dev/null
if [ "${SWEEP:-0}" = 1 ]; then
  for u in 1 4 16; do
    timeout 60 python3 -m flax_lstm.bench --libs flax_lstm --modes fwd_bwd --unroll $u --reps 10 \
      --shape 16,512,256 --shape 64,256,512,2,bi --json "$OUT/bench_gpu_unroll$u.json" 2>/dev/null | grep "^| B"
  done
  timeout 60 python3 -m flax_lstm.bench --libs flax_lstm --modes fwd_bwd --autodiff --reps 10 \
    --shape 16,512,256 --shape 64,256,512,2 --shape 256,128,1024,2 --json "$OUT/bench_gpu_autodiff.json" 2>/dev/null | grep "^| B"
fi
# GPU parity: the torch reference runs on the CPU, flax_lstm on the GPU (highest matmul precision).
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider \
  tests/test_parity.py tests/test_cell.py tests/test_states.py -k "not random_configurations and not python_loop" 2>&1 | tail -4

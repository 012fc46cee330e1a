"""``flax-lstm bench``: flax_lstm against torch.nn.LSTM, Flax nn.RNN and jax.experimental.rnn.

On CPU it also runs flax_lstm's own ``lax.scan`` path (``impl="scan"``, "scan path"),
so that the gain of the compiled CPU kernel is measured in the same run, and, where flax_lstm's
default takes the scan in a mode (`flax_lstm.lstm_plan`), the kernel (``impl="kernel"``,
``flax_lstm_kernel``): each entry's ``vs_other_path`` is, per mode, the path the default did
not take and its time over the default's (below 1: the default took the slower path), and the
summary says it where that path is the kernel.

Every library runs the same shapes in one process, interleaved repetition by repetition after a
warm-up, forward (inference) and forward+backward (gradients w.r.t. the input and every weight);
the table reports medians in milliseconds and the ratio ``peer time / flax_lstm time`` (above 1:
flax_lstm is faster). The order of the libraries changes each repetition, so that each
follows every other one equally often. On CPU, torch's OpenMP threads are told to stop spinning
soon after each call (``GOMP_SPINCOUNT=3000``, unless the caller set it or ``OMP_WAIT_POLICY``, or
imported torch first), so that they do not hold a core through the next library's call; the JSON
says which setting held. A JSON file records the machine (the CPU model and family, its ISA flags
among avx2, avx512f, avx512_bf16, amx_bf16 and amx_tile, and its cache sizes; the printed table's
header line names them too), library versions and dtype, the path flax_lstm's call took on each
shape and why (``flax_lstm_plan``: the recurrence, the one it takes when differentiated, and the
reason of `flax_lstm.lstm_plan`; on CPU the log says where it is not the compiled kernel) and, on
CPU, the kernel's state after the run (the top-level ``flax_lstm_kernel``, not the library of that
name: its library, instruction sets, AMX use, threads and the calibration verdicts the default
followed, `flax_lstm.kernel.info`), the medians (``ms``), the fastest repetition (``ms_min``,
steadier on a shared machine) and the yardstick of the GFLOP/s per dtype: the best large GEMM on
the machine, the faster of XLA's and (when torch is installed) torch's, with both rates and which
one won (``reference_gemm_by_dtype``). ``--dtypes float32,bfloat16`` runs every shape in both; each
bfloat16 shape is then also compared with the float32 times of the same run (``vs_float32``: a
library's float32 time / flax_lstm's bfloat16 time). ``--lengths uniform:MIN:MAX`` makes every
shape a ragged batch, its sequence lengths drawn uniformly from [MIN, MAX]: flax_lstm runs with
``seq_lengths`` beside itself without them (``flax_lstm_padded``), torch's padded call (``torch``)
and torch on a packed batch (``torch_packed``), in four more columns of the table; the JSON entry
has the lengths (``seq_lengths``) and the share of valid steps (``valid_fraction``).

The shape sets (``--set``, `SETS`): ``cpu`` (`CPU_SET`: B1 to B64, one and two layers, one
bidirectional), ``small`` (`SMALL_SET`: batches of 1 to 16 at hidden sizes 128 to 512, one
layer, where per-call costs weigh most) and ``gpu`` (`GPU_SET`).

Modules: `shapes` (`Shape`, the sets, ``--shape``), `libraries` (one builder per library),
`runner` (`run`: building, warming up and timing), `machine` (machine and versions), `cpu`
(the CPU's model, family, flags and caches), `yardstick` (the best large GEMM), `report` (the
table and the comparisons) and `cli` (`main`).

Example (a tiny custom shape):
  >>> from flax_lstm import bench
  >>> result = bench.run([bench.Shape(2, 8, 16, 1)], libs=("flax_lstm",), reps=2, warmup=1)
  >>> sorted(result["results"][0]["ms"]["flax_lstm"])
  ['fwd', 'fwd_bwd']
"""

# LIBS, MODES and format_table stay importable from here, as before the split (notebooks use
# format_table), and so are SETS and SMALL_SET; the public names are __all__'s (a constant
# there needs its line in docs/_ext/flax_lstm_api.py's DATA_DOCS).
from flax_lstm.bench.cli import main
from flax_lstm.bench.libraries import LIBS as LIBS
from flax_lstm.bench.libraries import MODES as MODES
from flax_lstm.bench.report import format_table as format_table
from flax_lstm.bench.runner import run
from flax_lstm.bench.shapes import CPU_SET, GPU_SET, Shape
from flax_lstm.bench.shapes import SETS as SETS
from flax_lstm.bench.shapes import SMALL_SET as SMALL_SET
from flax_lstm.bench.yardstick import best_gemm, reference_gemm_gflops

__all__ = [
    "CPU_SET",
    "GPU_SET",
    "Shape",
    "best_gemm",
    "main",
    "reference_gemm_gflops",
    "run",
]

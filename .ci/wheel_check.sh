#!/usr/bin/env bash
# CI: build the wheel, check what it carries, install it (not editable) into a fresh virtual
# environment and use it from outside the repository: import flax_lstm, run fl.lstm on the CPU
# kernel (built from the wheel's own source into an empty cache) and the flax-lstm command.
# The library alone: no extra is installed, so this also checks that the core needs none.
# Needs a package index for the dependencies (PyPI or a mirror), nothing else.
# Usage: bash .ci/wheel_check.sh [PYTHON]   (default python3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel -q --no-deps "$repo" -w "$work/dist"
wheel="$(ls "$work"/dist/flax_lstm-*.whl)"
echo "wheel: $(basename "$wheel")"

# What the wheel must carry: the kernel's source (compiled on first use), the bundled data,
# the licence and the typing marker.
"$python" - "$wheel" <<'EOF'
import fnmatch, re, sys, zipfile

wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
wanted = [
    "flax_lstm/_kernel/lstm_cpu.cc",
    "flax_lstm/data/japanese_vowels.npz",
    "flax_lstm/data/sunspots.csv",
    "flax_lstm/py.typed",
    "flax_lstm-*.dist-info/licenses/LICENSE",
    "flax_lstm-*.dist-info/entry_points.txt",
]
missing = [w for w in wanted if not fnmatch.filter(names, w)]
assert not missing, f"the wheel lacks {missing}"
# The headers the kernel's translation unit includes, each in turn.
kernel = wheel.read("flax_lstm/_kernel/lstm_cpu.cc").decode()
headers = re.findall(r'^#include "(\w+\.h)"', kernel, flags=re.MULTILINE)
lacking = [h for h in headers if f"flax_lstm/_kernel/{h}" not in names]
assert headers and not lacking, f"the wheel lacks the kernel's headers {lacking}"
stray = [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/", "notebooks/"))]
assert not stray, f"the wheel carries {stray[:5]}"
print(f"wheel contents: {len(names)} files, with {', '.join(w.split('/')[-1] for w in wanted)}"
      f" and the kernel's {len(headers)} headers")
EOF

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "installed: $("$work/venv/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l) distributions" \
  "(pip and flax-lstm included), $(du -sh "$site" | cut -f1) in site-packages"

# From outside the repository, with an empty kernel cache: the installed package, not the
# checkout, is what runs.
cd "$work"
export FLAX_LSTM_CACHE_DIR="$work/cache"
"$work/venv/bin/python" - "$repo" <<'EOF'
import pathlib, sys

import jax, jax.numpy as jnp

import flax_lstm as fl

here = pathlib.Path(fl.__file__).resolve()
assert pathlib.Path(sys.argv[1]) not in here.parents, f"imported the checkout: {here}"
assert "site-packages" in here.parts, here
config = fl.LSTMConfig(input_size=3, hidden_size=64, bidirectional=True)  # kernel-sized
params = fl.init_params(jax.random.key(0), config)
x = jnp.ones((20, 4, 3))
plan = fl.lstm_plan(params, x, config=config)
assert plan.recurrence == "kernel", plan
out, (h_n, c_n) = fl.lstm(params, x, config=config)
scan, _ = fl.lstm(params, x, config=config, impl="scan")
assert out.shape == (20, 4, 128) and h_n.shape == (2, 4, 64), (out.shape, h_n.shape)
err = float(jnp.abs(out - scan).max())
assert err < 1e-5, err
print(f"installed flax_lstm {fl.__version__}: {plan}; kernel vs scan max |diff| {err:.1e}")
EOF
"$work/venv/bin/flax-lstm" kernel >"$work/kernel.json"
"$work/venv/bin/python" -c "import json, sys; s = json.load(open(sys.argv[1])); assert s['available'] and s['cache_dir'] == sys.argv[2], s" "$work/kernel.json" "$FLAX_LSTM_CACHE_DIR"
version="$("$work/venv/bin/flax-lstm" --version)"
[[ "$version" == "flax-lstm $("$work/venv/bin/python" -c 'import flax_lstm; print(flax_lstm.__version__)')" ]]
echo "wheel check: passed ($version)"

#!/usr/bin/env bash
# CI: the oldest versions pyproject.toml promises. Every dependency of the core and of the train
# and export extras (`name>=X`) is pinned to its lower bound (`name==X`) while the test extras
# are installed into a fresh virtual environment, and the tests of the code that calls the APIs
# that change between releases run there: the NNX and Linen modules and Flax's cell protocol,
# parameters and initializers, partitioning and sharding, export, the random draws, the CPU
# kernel's FFI registration, torch parity, the training application (optax, orbax, matplotlib,
# tqdm) and its CLI, the notebooks, and the package's doctests. What failed below the bounds:
# the comments beside them in pyproject.toml.
# Needs a package index for the dependencies (PyPI or a mirror), nothing else.
# Usage: bash .ci/floor_check.sh [PYTHON]   (default python3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" - "$repo/pyproject.toml" > "$work/floors.txt" <<'EOF'
import re, sys, tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
for dep in [*project["dependencies"], *extras["train"], *extras["export"]]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][^,;\s]*)", dep.strip())
    if match is None:
        sys.exit(f"floor_check: a dependency must read name>=version, got {dep!r}")
    print(f"{match[1]}=={match[2]}")
EOF
echo "floors: $(tr '\n' ' ' < "$work/floors.txt")"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -c "$work/floors.txt" -e "$repo[test]"
# The pins took: each dependency installed at exactly its bound.
"$work/venv/bin/python" - "$work/floors.txt" <<'EOF'
import importlib.metadata, sys
from packaging.version import Version  # installed with pytest

for line in open(sys.argv[1]).read().split():
    name, want = line.split("==")
    got = importlib.metadata.version(name)
    if Version(got) != Version(want):
        sys.exit(f"floor_check: {name} {got} installed, its bound is {want}")
    print(f"floor_check: {name} {got}")
EOF
cd "$repo"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider flax_lstm tests/test_nnx.py \
  tests/test_linen.py tests/test_flax_protocol.py tests/test_params.py tests/test_random.py \
  tests/test_sharding.py tests/test_export.py tests/test_kernel_ffi.py tests/test_parity.py \
  tests/train tests/test_cli.py tests/test_notebooks.py
echo "floor_check: the lower bounds pass"

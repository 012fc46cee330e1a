"""The install: the library's requirements are what its core imports, the training app's
libraries are the ``train`` extra and ``flax-lstm train`` names it when they are missing,
``flax-lstm --version``, and the licence.

The built wheel itself (its files, installed into a fresh environment, used from outside the
repository) is checked by ``.ci/wheel_check.sh``, which CI runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import python_process

import flax_lstm
from flax_lstm import cli
from flax_lstm.train import checkpoints
from flax_lstm.train.config import TrainError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The parts of the package that are applications with their own extra, not the library.
APPLICATIONS = ("train", "bench")


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string (PEP 503)."""
    name = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_distributions(files: list[Path], *, module_level_only: bool) -> set[str]:
    """The third-party distributions that ``files`` import (at module level only, or
    anywhere, lazy imports included)."""
    modules: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                modules.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    skip = set(sys.stdlib_module_names) | {"flax_lstm", "__future__"}
    owners = importlib.metadata.packages_distributions()
    return {
        _name(d)
        for module in sorted(modules)
        if module.split(".")[0] not in skip
        for d in _owners(module, owners)
    }


def _owners(module: str, owners: dict[str, list[str]]) -> list[str]:
    """The distributions that provide ``module``: its top-level package's, and where several
    share it (a namespace package, such as ``orbax``), the one with the subpackage."""
    top, *rest = module.split(".")
    found = owners.get(top, [top])
    if len(found) < 2 or not rest:
        return found
    sub = f"{top}/{rest[0]}"
    with_sub = [
        d
        for d in found
        if any(str(f).startswith(f"{sub}/") or str(f) == f"{sub}.py"
               for f in importlib.metadata.files(d) or [])
    ]  # fmt: skip
    return with_sub or found


def _library_files() -> list[Path]:
    package = ROOT / "flax_lstm"
    return [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in APPLICATIONS]


def test_requirements_are_what_the_core_imports():
    """Every distribution the library's modules import at module level is a requirement, and
    every requirement is imported (optional integrations such as torch are imported lazily)."""
    required = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    imported = _imported_distributions(_library_files(), module_level_only=True)
    # jaxlib comes with jax (its version must match jax's, so jax's requirement decides it).
    assert imported - {"jaxlib"} == required


def test_train_extra_is_what_the_training_app_imports():
    extras = PYPROJECT["project"]["optional-dependencies"]
    train = {_name(r) for r in extras["train"]}
    files = list((ROOT / "flax_lstm" / "train").rglob("*.py"))
    imported = _imported_distributions(files, module_level_only=False)
    required = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert imported - required - {"jaxlib"} == train
    assert {_name(m.split(".")[0]) for m in checkpoints.TRAIN_EXTRA.values()} <= train


def test_test_extra_installs_train_and_export():
    test = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert "flax-lstm[train,export]" in test
    assert "flatbuffers" in {
        _name(r) for r in PYPROJECT["project"]["optional-dependencies"]["export"]
    }


@pytest.mark.parametrize("module", ["orbax", "matplotlib", "tqdm"])
def test_missing_train_library_names_the_extra(module, monkeypatch):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(TrainError, match=r"pip install 'flax-lstm\[train\]'"):
        checkpoints.require_train_extra()


def test_train_command_without_orbax_names_the_extra(tmp_path):
    """``flax-lstm train`` where orbax is not installed: one line naming the extra, exit
    status 2, and no run folder written."""
    out = tmp_path / "run"
    code = (
        "import sys\n"
        "sys.modules['orbax'] = None  # as if orbax-checkpoint were not installed\n"
        "from flax_lstm.cli import main\n"
        f"sys.exit(main(['train', '--epochs', '1', '--members', '1', '--out', {str(out)!r}]))\n"
    )
    proc = python_process.run("-c", code, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("flax-lstm: error: training needs orbax-checkpoint"), last
    assert "pip install 'flax-lstm[train]'" in last
    assert not out.exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"flax-lstm {flax_lstm.__version__}"


def test_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]

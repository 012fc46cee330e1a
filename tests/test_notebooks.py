"""Execute every research notebook in ``notebooks/`` top to bottom, so none of them rots.

The notebooks are jupytext percent-format ``.py`` files. Each test converts one with jupytext
and runs it with nbclient in a fresh IPython kernel (on loopback) started from this very
interpreter, so the notebook sees the environment under test. A failing cell (the notebooks
assert the claims they make) fails the test. The notebooks run their small default settings;
``FLAX_LSTM_FULL=1`` is the notebooks' full-size switch and is cleared here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient
from traitlets.config import Config

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
KERNEL_NAME = "flax-lstm-notebook-tests"
CELL_TIMEOUT_S = 600


def test_notebooks_are_found():
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data dir holding a kernelspec for ``sys.executable`` (this environment).

    The stock ``python3`` kernelspec may point at another interpreter (a user-wide install);
    a spec of our own, found first through ``JUPYTER_PATH``, cannot.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "flax_lstm notebook tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, jupyter_path: Path, monkeypatch) -> None:
    figures = tmp_path / "figures"
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("FLAX_LSTM_FIGURES", str(figures))
    monkeypatch.delenv("FLAX_LSTM_FULL", raising=False)

    nb = jupytext.read(path)
    assert any(cell.cell_type == "markdown" for cell in nb.cells), "a notebook tells a story"
    config = Config()
    config.KernelManager.ip = "127.0.0.1"  # the kernel's sockets listen on loopback only
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
        config=config,
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f}s")

    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert sorted(figures.glob("*.png")), "every notebook draws at least one figure"

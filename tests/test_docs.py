"""The docs stay true: README size, examples and headline tables, documented public names,
benchmark index, and the runnable examples of the docs pages.

The Sphinx build itself (``sphinx-build -W -b html docs OUT``) runs in CI after the tests; these
checks need no Sphinx, so the test suite catches the same mistakes earlier.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_CHARS = 12_000


@pytest.fixture(scope="module")
def docs_modules():
    sys.path[:0] = [str(ROOT / "docs" / "_ext"), str(ROOT / "docs" / "_scripts")]
    try:
        yield importlib.import_module("flax_lstm_api"), importlib.import_module("perf_tables")
    finally:
        del sys.path[:2]


def run_python_blocks(path: Path) -> int:
    """Run a markdown file's ```python blocks in order, in one namespace; return how many."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    namespace: dict = {}
    name = path.relative_to(ROOT)
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{name} python block {i}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{name} python block {i} failed:\n{block}") from e
    return len(blocks)


def test_readme_python_blocks_run():
    assert run_python_blocks(README) >= 5


def test_readme_is_a_front_page():
    assert len(README.read_text()) <= README_MAX_CHARS


def test_readme_headline_tables_are_the_benchmark_files(docs_modules):
    _, perf_tables = docs_modules
    readme = README.read_text()
    for name in perf_tables.HEADLINE:
        assert f"benchmarks/{name}" in readme
        table = perf_tables.headline_table(name)
        assert table in readme, f"README's table for {name} differs from the JSON:\n{table}"


def test_every_public_name_is_documented(docs_modules):
    api, _ = docs_modules
    assert api.undocumented() == []
    modules = api.public_modules()
    for name in ("flax_lstm", "flax_lstm.nnx", "flax_lstm.linen", "flax_lstm.streaming",
                 "flax_lstm.train", "flax_lstm.bench"):  # fmt: skip
        assert name in modules


def test_performance_page_renders_every_benchmark_file(docs_modules):
    _, perf_tables = docs_modules
    text = perf_tables.render()  # raises if benchmarks/README.md misses a file
    for path in (ROOT / "benchmarks").glob("*.json"):
        assert f"### {path.name}" in text


def test_every_benchmark_record_is_indexed_where_it_lies(docs_modules):
    """Each JSON under benchmarks/, the tools' folders too, has its row in the index's table for
    its folder, and each row names a file that is there."""
    _, perf_tables = docs_modules
    folder = ROOT / "benchmarks"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.glob("**/*.json")}
    named = perf_tables.indexed_files()
    assert sorted(on_disk - named) == [], "add a row to benchmarks/README.md for each"
    assert sorted(named - on_disk) == [], "benchmarks/README.md names files that are not there"


# Pages whose Python examples are complete programs; each page runs in its own namespace.
# Not here: guides/from_pytorch.md and guides/export.md (fragments that continue the reader's
# own code), guides/implementations.md (fragments around `impl=`).
RUNNABLE_PAGES = [
    "index.md",
    "getting_started.md",
    "guides/streaming.md",
    "guides/mixed_precision.md",
    "guides/training.md",
    "guides/parallel.md",
    "guides/flax_idioms.md",
]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_docs_examples_run(page):
    assert run_python_blocks(ROOT / "docs" / page) > 0, f"docs/{page} has no Python example"

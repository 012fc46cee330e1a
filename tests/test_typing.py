"""Typing: the package is marked typed, and a user's code made of the README's examples
type-checks against it.

``tests/typing/readme_examples.py`` is the README's python blocks, in order, in one function
(they share one namespace, as `test_docs` runs them); CI runs pyright over it and over
``flax_lstm/`` (``.ci/run``, settings in pyproject.toml). Regenerate it after editing the
README: ``python tests/test_typing.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "tests" / "typing" / "readme_examples.py"

HEADER = '''"""The README's python examples, in order, as a user's script for the type checker.

Generated from README.md by ``python tests/test_typing.py``; tests/test_typing.py checks that
it matches. Wrapped in a function so that importing it runs nothing.
"""


def readme_examples() -> None:
'''


def readme_script() -> str:
    """The README's python blocks as one function's body (see the module docstring)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    body = "\n".join(f"# README python block {i}\n{block}" for i, block in enumerate(blocks))
    return HEADER + textwrap.indent(body, "    ", lambda line: line.strip() != "")


def test_package_is_marked_typed():
    assert (ROOT / "flax_lstm" / "py.typed").is_file()


def test_readme_examples_script_matches_the_readme():
    assert EXAMPLES.read_text() == readme_script(), "run: python tests/test_typing.py"


def test_readme_examples_type_check():
    """pyright (pyproject.toml's settings) finds no error in the README's examples."""
    pyright = shutil.which("pyright") or str(Path(sys.executable).parent / "pyright")
    if not Path(pyright).exists():
        pytest.skip("pyright is not installed (the test extra installs it)")
    cmd = [pyright, "--pythonpath", sys.executable, str(EXAMPLES.relative_to(ROOT))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


if __name__ == "__main__":
    EXAMPLES.write_text(readme_script())
    print(f"wrote {EXAMPLES.relative_to(ROOT)}")

"""Python in a fresh process with this checkout importable, for the tests that need one.

A test needs its own process where the state of this one would hide what it checks: variables
read at start-up (forced devices, the kernel's switches), a clean ``sys.modules``, or a model
loaded where it was not made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(*, unset: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, ``overrides`` set
    and the variables in ``unset`` removed."""
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), **overrides}
    for name in unset:
        out.pop(name, None)
    return out


def run(
    *args: str,
    timeout: float = 300,
    check: bool = True,
    unset: tuple[str, ...] = (),
    **overrides: str,
) -> subprocess.CompletedProcess:
    """``python *args`` in a fresh process (environment: `env`); with ``check``, assert that it
    exited 0, showing the end of its standard error otherwise."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env(unset=unset, **overrides),
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc

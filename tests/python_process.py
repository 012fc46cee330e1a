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


def run_together(code: str, *args: str, processes: int = 3, **overrides: str) -> list[str]:
    """``python -c code *args`` in ``processes`` processes started together (environment:
    `env`, with ``overrides``); assert that each exited 0 and return their standard outputs."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(**overrides),
        )
        for _ in range(processes)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]

"""The ``flax-lstm`` dispatcher forwards ``bench``'s arguments untouched, and the commands it
dispatches to do not import it back.

``train`` and ``evaluate`` are tested in tests/train/test_train_cli.py.
"""

from __future__ import annotations

import sys
import types

import python_process

from flax_lstm import cli


def test_bench_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("flax_lstm.bench")
    fake.main = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, "flax_lstm.bench", fake)
    import flax_lstm

    monkeypatch.setattr(flax_lstm, "bench", fake, raising=False)
    assert cli.main(["bench", "--shape", "16,512", "--help"]) == 0
    assert seen == [["--shape", "16,512", "--help"]]


def test_train_commands_do_not_import_the_dispatcher():
    """No cycle: `flax_lstm.cli` imports `flax_lstm.train.cli`, never the other way round."""
    script = "import sys, flax_lstm.train.cli; print('flax_lstm.cli' in sys.modules)"
    proc = python_process.run("-c", script)
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout

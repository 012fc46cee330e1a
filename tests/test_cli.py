"""The ``flax-lstm`` dispatcher forwards ``bench``'s arguments untouched.

``train`` and ``evaluate`` are tested in tests/train/test_train_cli.py.
"""

from __future__ import annotations

import sys
import types

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

"""``python -m flax_lstm.bench ...``: the same as ``flax-lstm bench ...``."""

from flax_lstm.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""The compiled CPU kernel, private: its source (``lstm_cpu.cc`` and the headers it includes, one
concern each), its build (`build`), its XLA FFI bindings (`ffi`) and the partitioning of their calls
(`partition`). The user's view is `flax_lstm.kernel`; where the kernel runs is `flax_lstm.plan`'s to
decide."""

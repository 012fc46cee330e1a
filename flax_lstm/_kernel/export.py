"""The CPU kernel in `jax.export` artifacts: the note that names the export options on every
kernel call, and the registration of an already-built kernel when flax_lstm is imported.

The note. `jax.export.export` refuses custom calls whose targets have no compatibility
guarantee, the kernel's among them, with an error of its own that prints each refused call.
Nothing in jax.export lets a library take part in that check: a lowering rule can tell that it
is lowering for export, but not which checks the caller disabled, so it could not refuse only
the calls that were not allowed. Each kernel call therefore carries an XLA frontend attribute
(metadata that the FFI handler never sees and the compiled code ignores) that says what to do:
it is printed in jax's error, and kept in the artifact.

The registration. A process that deserializes an artifact calling the kernel needs its FFI
handlers registered (else XLA fails with ``NOT_FOUND: No FFI handler registered``). Building the
kernel takes seconds, too long for an import; registering a library that is already built takes
a compiler version query and a ``dlopen``. `register_if_built` does that much at import, and
nothing more: where the library is not built yet, the first call that plans the kernel (or
`flax_lstm.kernel.available`, or ``flax-lstm kernel``) builds and registers it, as before.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import jax

from flax_lstm._kernel import build

# The frontend attribute on every kernel call, printed in jax.export's refusal.
NOTE_KEY = "flax_lstm"
NOTE = (
    "the CPU kernel of flax_lstm has no compatibility guarantee: export it with "
    "jax.export.export(f, disabled_checks=flax_lstm.kernel.export_checks()) (the artifact "
    "runs where the same flax_lstm version builds the kernel), or call flax_lstm.lstm with "
    "impl='scan' for portable StableHLO"
)


def _with_note() -> Any:
    try:
        from jax.experimental.xla_metadata import set_xla_metadata
    except ImportError:  # a jax without XLA metadata: no note
        return contextlib.nullcontext()
    return set_xla_metadata(**{NOTE_KEY: NOTE})


def ffi_call(target: str, result_shapes: Any, **kwargs: Any) -> Any:
    """`jax.ffi.ffi_call` of a kernel target, its calls noted with the export options."""
    call = jax.ffi.ffi_call(target, result_shapes, **kwargs)

    def noted(*args: Any, **attributes: Any) -> Any:
        with _with_note():
            return call(*args, **attributes)

    return noted


def register_if_built() -> bool:
    """Register the kernel's FFI targets if this machine's library is already built; whether
    it did. Never builds, never raises (an import must not fail over a cache folder)."""
    if build.disabled() or not sys.platform.startswith(("linux", "darwin")):
        return False
    try:
        cxx = build.compiler()
        if cxx is None or not build.library_path(cxx).exists():
            return False
        return not isinstance(build.load(), str)
    except Exception:  # anything odd here leaves it to the first kernel call
        return False

"""Building the CPU kernel (`flax_lstm.kernel`): compile ``lstm_cpu.cc`` once per machine into a
cache folder, load it, and register its XLA FFI targets.

The compiler, flags, cache key, file lock and environment variables are described in
`flax_lstm.kernel`'s docstring; `load` is the one entry: the compute dtypes registered, or why
the kernel is not available (`error` says it for one dtype).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jaxlib

# The kernel's one translation unit; it includes the headers beside it (its opening comment
# says what each holds).
SOURCE = Path(__file__).parent / "lstm_cpu.cc"
STD = "-std=c++20"  # the C++ standard it is written in
_FLAGS = ("-O3", STD, "-shared", "-fPIC", "-pthread")
# Tuned for this machine's instruction set; the last, portable, variant is for compilers that
# know neither flag (some clang versions on arm64 reject -march=native).
_ARCH_FLAGS = (("-march=native",), ("-mcpu=native",), ())
_FORWARD, _BACKWARD = "flax_lstm_cpu_forward", "flax_lstm_cpu_backward"
# The FFI targets of each compute dtype, and the library's symbols for them. The bfloat16 ones
# are compiled only for CPUs with AVX512_BF16 instructions.
TARGETS = {
    "float32": ((_FORWARD, "FlaxLstmForward"), (_BACKWARD, "FlaxLstmBackward")),
    "bfloat16": (
        (_FORWARD + "_bf16", "FlaxLstmForwardBf16"),
        (_BACKWARD + "_bf16", "FlaxLstmBackwardBf16"),
    ),
}
# A transposed copy (see `flax_lstm._kernel.ffi.transposed_copy`), per dtype: target and symbol,
# always compiled.
TRANSPOSE = {
    "float32": ("flax_lstm_cpu_transpose", "FlaxLstmTranspose"),
    "bfloat16": ("flax_lstm_cpu_transpose_bf16", "FlaxLstmTransposeBf16"),
}
# The weight and the input gradients of a ragged batch over its valid steps (float32 only; see
# `flax_lstm._kernel.ffi.weight_grads` and `input_grad`): target and symbol, always compiled.
WEIGHT_GRADS = ("flax_lstm_cpu_weight_grads", "FlaxLstmWeightGrads")
INPUT_GRAD = ("flax_lstm_cpu_input_grad", "FlaxLstmInputGrad")
# What the library's FlaxLstmAmx() says the bfloat16 step GEMMs run on, where not on AMX tiles
# (1) or their software emulation (2, a test build with -DFLAX_LSTM_AMX_EMULATE=1).
AMX_SYMBOL = "FlaxLstmAmx"
AMX_REASONS = {
    0: "the CPU has no AMX-BF16",
    -1: "disabled by FLAX_LSTM_AMX",
    -2: "Linux refused the permission for AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM)",
    -3: "this build has no AMX path (it needs the bfloat16 kernel, x86-64 Linux and a compiler "
    "with the AMX intrinsics)",
}
NO_BF16 = "bfloat16 needs a CPU with AVX512_BF16 instructions (the kernel was built without them)"
DISABLED = "disabled by FLAX_LSTM_CPU_KERNEL"


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def cpu_identity() -> str:
    try:  # the instruction set that -march=native compiled for
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    if "FLAX_LSTM_CACHE_DIR" in os.environ:
        return Path(os.environ["FLAX_LSTM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flax_lstm"


# A temporary file older than this is left by a killed build (a build takes seconds).
STALE_S = 3600.0
# The instruction-set macros `info` reports, as the compiler defines them for the flags used.
_ISA_MACROS = (
    "__SSE4_2__", "__AVX__", "__AVX2__", "__FMA__", "__AVX512F__", "__AVX512BW__",
    "__AVX512VL__", "__AVX512BF16__", "__ARM_NEON", "__ARM_FEATURE_SVE", "__ARM_FEATURE_BF16",
)  # fmt: skip


def _arch_flags() -> tuple[tuple[str, ...], ...]:
    """The candidate target flags, tried in order: ``FLAX_LSTM_ARCH``'s, else the machine's."""
    arch = os.environ.get("FLAX_LSTM_ARCH", "native").strip()
    if arch == "native":
        return _ARCH_FLAGS
    if arch in ("", "none"):
        return ((),)
    return ((f"-march={arch}",),)


@functools.cache
def _compiler_version(cxx: str) -> str:
    """``cxx --version``'s output, asked once per process (the key and the build record)."""
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout


def sources(main: Path | None = None) -> list[Path]:
    """The kernel's files: the translation unit ``main`` (default `SOURCE`) and the headers
    beside it."""
    main = SOURCE if main is None else main
    return [main, *sorted(main.parent.glob("*.h"))]


def _build_key(cxx: str, arch: tuple, extra: tuple) -> str:
    native = any("native" in flag for flags in arch for flag in flags)
    parts = [
        *(path.name.encode() + b"\0" + path.read_bytes() for path in sources()),
        " ".join(_FLAGS + sum(arch, ()) + extra).encode(),
        _compiler_version(cxx).encode(),
        jaxlib.version.__version__.encode(),
        cpu_identity().encode() if native else b"",
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on ``path`` (a file lock: other processes wait for it)."""
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the atomic rename still holds
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale(folder: Path, key: str) -> None:
    """Remove temporary files of killed builds: this key's (its lock is held, so no build of
    it is running) and any older than an hour (``tmp*.so`` from earlier versions too)."""
    now = time.time()
    for path in [*folder.glob(".lstm_cpu_*.tmp*"), *folder.glob("tmp*.so")]:
        with contextlib.suppress(OSError):
            if key in path.name or now - path.stat().st_mtime > STALE_S:
                path.unlink()


def _isa(cxx: str, flags: list[str]) -> list[str]:
    """The instruction-set macros ``cxx`` defines with ``flags`` (empty if it cannot say)."""
    cmd = [cxx, *flags, "-dM", "-E", "-x", "c++", os.devnull]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    defined = {line.split()[1] for line in proc.stdout.splitlines() if line.count(" ") >= 1}
    return [m.strip("_") for m in _ISA_MACROS if m in defined]


def _recipe(cxx: str) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...], str]:
    """``(arch, extra, key)``: the candidate target flags, the extra flags and the cache key of
    a build with ``cxx`` under the current environment variables."""
    arch = _arch_flags()
    extra = tuple(shlex.split(os.environ.get("FLAX_LSTM_CXXFLAGS", "")))
    return arch, extra, _build_key(cxx, arch, extra)


def _library(key: str) -> Path:
    return cache_dir() / f"lstm_cpu_{key}.so"


def library_path(cxx: str) -> Path:
    """The library `build` makes (or finds) with ``cxx`` and the current environment
    variables, whether or not it exists."""
    return _library(_recipe(cxx)[2])


def compile_command(cxx: str, flags: list[str], source: Path, out: Path) -> list[str]:
    """The command that compiles ``source`` into the library ``out`` with ``flags`` (`build`'s,
    and tools/kernel_ab.py's for another revision of the kernel)."""
    return [cxx, *flags, "-isystem", jax.ffi.include_dir(), str(source), "-o", str(out)]


def build(cxx: str) -> Path:
    """Compile the kernel (or find it built) and return the shared library's path.

    Next to the library, ``<name>.json`` records how it was built (`info`)."""
    arch, extra, key = _recipe(cxx)
    folder = cache_dir()
    out = _library(key)
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    # One build per key at a time; the others wait and then find it built. The library is
    # written under a temporary name and renamed: nothing ever loads a half-written one.
    with _lock(folder / f".lstm_cpu_{key}.lock"):
        if out.exists():
            return out
        _remove_stale(folder, key)
        tmp = folder / f".lstm_cpu_{key}.{os.getpid()}.tmp.so"
        try:
            for flags in arch:
                flags = [*_FLAGS, *flags, *extra]
                cmd = compile_command(cxx, flags, SOURCE, tmp)
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
            record = {
                "compiler": (_compiler_version(cxx).splitlines() or [cxx])[0],
                "flags": flags,
                "isa": _isa(cxx, flags),
            }
            meta = out.with_suffix(".json")
            meta_tmp = folder / f".lstm_cpu_{key}.{os.getpid()}.tmp.json"
            meta_tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(meta_tmp, meta)
            os.replace(tmp, out)
        finally:
            for path in (tmp, folder / f".lstm_cpu_{key}.{os.getpid()}.tmp.json"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    return out


LIBRARY: list[Path] = []  # the loaded library's path, once `_build_and_register` has run
AMX: list[int] = []  # the loaded library's FlaxLstmAmx(), once `_build_and_register` has run


def disabled() -> bool:
    value = os.environ.get("FLAX_LSTM_CPU_KERNEL", "1").strip().lower()
    return value in ("0", "false", "no", "off")


def load() -> str | frozenset[str]:
    """The compute dtypes the kernel registered (names), or why it is not available."""
    return DISABLED if disabled() else _build_and_register()


def error(dtype_name: str) -> str | None:
    """Why the kernel is not available for compute dtype ``dtype_name`` (building it if need
    be), or None if it is."""
    loaded = load()
    if isinstance(loaded, str):
        return loaded
    if dtype_name in loaded:
        return None
    return NO_BF16 if dtype_name == "bfloat16" else f"no kernel for dtype {dtype_name}"


@functools.cache
def _build_and_register() -> str | frozenset[str]:
    """Build and register the kernel once per process: the compute dtypes it registered
    (names), or why it could not."""
    if not sys.platform.startswith(("linux", "darwin")):
        return f"not supported on {sys.platform}"
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found (set CXX, or install g++)"
    try:
        path = build(cxx)
        lib = ctypes.cdll.LoadLibrary(str(path))
    except (OSError, RuntimeError) as e:
        return f"could not build the CPU kernel: {e}"
    LIBRARY[:] = [path]
    # The library checks the CPU and FLAX_LSTM_AMX once, at this first call.
    AMX[:] = [getattr(lib, AMX_SYMBOL)() if hasattr(lib, AMX_SYMBOL) else -3]
    # float32, the transposed copies and the weight gradients are always compiled; bfloat16
    # only for AVX512_BF16.
    helpers = (*TRANSPOSE.values(), WEIGHT_GRADS, INPUT_GRAD)
    if not all(hasattr(lib, symbol) for _, symbol in (*TARGETS["float32"], *helpers)):
        return (
            "could not build the CPU kernel: the library lacks float32, transpose or weight "
            "gradient symbols"
        )
    dtypes = [d for d, targets in TARGETS.items() if all(hasattr(lib, s) for _, s in targets)]
    for name, symbol in (*(t for d in dtypes for t in TARGETS[d]), *helpers):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    return frozenset(dtypes)


def amx() -> tuple[bool | str, str | None]:
    """What the bfloat16 kernel's step GEMMs run on, building the kernel if need be:
    ``(True, None)`` AMX tiles, ``("emulated", None)`` their software emulation (a test build),
    or ``(False, why not)``."""
    reason = error("bfloat16")
    if reason is not None:
        return False, reason
    code = AMX[0] if AMX else -3
    if code == 1:
        return True, None
    if code == 2:
        return "emulated", None
    return False, AMX_REASONS.get(code, f"FlaxLstmAmx() returned {code}")

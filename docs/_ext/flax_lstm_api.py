"""The API reference, generated from ``__all__``; the build fails on an undocumented name.

At ``builder-inited`` this writes one page per public module into ``docs/api/`` (generated,
not committed): the module's docstring, then every name of its ``__all__`` with
``autofunction`` / ``autoclass`` / a ``py:data`` entry, and a link for each submodule in it.
A name added to an ``__all__`` is picked up on the next build.

The build fails (`sphinx.errors.ExtensionError`) when

- a public function, class or module has no docstring of its own (a dataclass or NamedTuple
  without one, whose ``__doc__`` is only its generated signature, counts as none);
- a public constant has no description in `DATA_DOCS` (a value carries no docstring);
- after reading, a public name is missing from the Python objects that the API pages define.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from sphinx.errors import ExtensionError
except ImportError:  # tests/test_docs.py runs the check where Sphinx is not installed

    class ExtensionError(Exception):  # type: ignore[no-redef]
        """Stands in for Sphinx's error outside a Sphinx build."""


if TYPE_CHECKING:
    from sphinx.application import Sphinx

# The public modules: the package, and each module named in an __all__ below it (found
# recursively), plus these, which are public but imported on their own.
ROOT = "flax_lstm"
EXTRA_MODULES = ("flax_lstm.train", "flax_lstm.bench", "flax_lstm.data", "flax_lstm.cli")

# Constants cannot hold a docstring; their one-line descriptions live here. A new public
# constant without an entry fails the build.
DATA_DOCS = {
    "flax_lstm.__version__": "The version of the installed package.",
    "flax_lstm.Params": (
        "Type of the parameters: a list with one dict per layer (``w_ih``, ``w_hh``, "
        "``b_ih``, ``b_hh``, ``w_hr``), each array with a leading direction axis; see "
        ":func:`flax_lstm.init_params`."
    ),
    "flax_lstm.bench.CPU_SET": "The shapes of ``flax-lstm bench --set cpu``.",
    "flax_lstm.bench.GPU_SET": "The shapes of ``flax-lstm bench --set gpu``.",
    "flax_lstm.train.POOLINGS": (
        "The choices of :attr:`TrainConfig.pooling`: how the LSTM's outputs become the "
        "classifier's features (masked mean, last valid step, or both concatenated)."
    ),
}

TITLES = {
    "flax_lstm": "flax_lstm: the functional core",
    "flax_lstm.nnx": "flax_lstm.nnx: Flax NNX modules",
    "flax_lstm.linen": "flax_lstm.linen: Flax Linen modules",
    "flax_lstm.streaming": "flax_lstm.streaming: chunked sequences",
    "flax_lstm.kernel": "flax_lstm.kernel: the compiled CPU kernel",
    "flax_lstm.train": "flax_lstm.train: the training job",
    "flax_lstm.bench": "flax_lstm.bench: the benchmark",
    "flax_lstm.data": "flax_lstm.data: data sets and readers",
    "flax_lstm.cli": "flax_lstm.cli: the flax-lstm command",
}


def _kind(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if isinstance(obj, type):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return "function"
    if callable(obj) and hasattr(obj, "__wrapped__"):  # functools.wraps, jax.jit, ...
        return "function"
    return "data"


def _own_doc(obj: Any, name: str) -> str:
    """The object's own docstring, or '' (a generated dataclass/NamedTuple one counts as '')."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        generated = dataclasses.is_dataclass(obj) or hasattr(obj, "_fields")
        if generated:
            return ""
    return doc


def public_modules() -> list[str]:
    """Every public module: the package, submodules named in an ``__all__``, EXTRA_MODULES."""
    found: list[str] = []
    todo = [ROOT, *EXTRA_MODULES]
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found.append(name)
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", ()):
            obj = getattr(module, member)
            if isinstance(obj, types.ModuleType) and obj.__name__.startswith(ROOT + "."):
                todo.append(obj.__name__)
    return found


def public_names(module_name: str) -> list[tuple[str, str, Any]]:
    """``(name, kind, object)`` for each name of the module's ``__all__``, in that order."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ExtensionError(f"{module_name} has no __all__: its public names are not declared")
    out = []
    for name in names:
        if not hasattr(module, name):
            raise ExtensionError(f"{module_name}.__all__ names {name!r}, which does not exist")
        obj = getattr(module, name)
        out.append((name, _kind(obj), obj))
    return out


def undocumented() -> list[str]:
    """Public names without documentation (empty when every one has some)."""
    missing = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(f"{module_name} (module docstring)")
        for name, kind, obj in public_names(module_name):
            full = f"{module_name}.{name}"
            if kind == "data":
                if full not in DATA_DOCS:
                    missing.append(f"{full} (a constant: add a line to DATA_DOCS in {__file__})")
            elif kind != "module" and not _own_doc(obj, name):
                missing.append(f"{full} ({kind} without a docstring)")
    return missing


def _class_signature(cls: type) -> str:
    """The constructor's signature as written, for classes whose metaclass hides it.

    NNX modules' metaclass defines ``__call__(*args, **kwargs)``, which autodoc would show;
    Linen modules add ``parent`` and ``name``, and defaults such as ``jnp.float32`` print as
    ``<class 'jax.numpy.float32'>``. Annotations are left to the parameter descriptions.
    """
    linen = any(c.__module__.startswith("flax.linen") for c in cls.__mro__[1:])
    if not linen and type(cls).__call__ is type.__call__:
        return ""  # autodoc finds the signature itself
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return ""
    params = [
        p.replace(annotation=inspect.Parameter.empty)
        for p in list(sig.parameters.values())[1:]
        if not (linen and p.name in ("parent", "name"))
    ]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


def _page(module_name: str, pages: dict[str, str]) -> str:
    title = TITLES.get(module_name, module_name)
    lines = [
        ".. This page is generated by docs/_ext/flax_lstm_api.py from __all__; do not edit.",
        "",
        title,
        "=" * len(title),
        "",
        f".. automodule:: {module_name}",
        "   :no-members:",
        "",
    ]
    submodules = []
    for name, kind, obj in public_names(module_name):
        full = f"{module_name}.{name}"
        if kind == "module":
            submodules.append(obj.__name__)
        elif kind == "class":
            lines += [
                f".. autoclass:: {full}{_class_signature(obj)}",
                "   :members:",
                "   :show-inheritance:",
                "",
            ]
        elif kind == "function":
            lines += [f".. autofunction:: {full}", ""]
        else:
            lines += [
                f".. py:data:: {name}",
                f"   :module: {module_name}",
                f"   :type: {type(obj).__name__}",
                "",
                f"   {DATA_DOCS[full]}",
                "",
            ]
    if submodules:
        lines += ["Submodules", "----------", ""]
        lines += [f"- :doc:`{pages[m]}`" for m in submodules]
        lines.append("")
    return "\n".join(lines)


def write_pages(out_dir: Path) -> dict[str, str]:
    """Write ``index.rst`` and one page per public module into ``out_dir``; {module: docname}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = public_modules()
    pages = {m: m for m in modules}
    wanted = {f"{m}.rst" for m in modules} | {"index.rst"}
    for old in out_dir.glob("*.rst"):
        if old.name not in wanted:
            old.unlink()
    for module_name in modules:
        _write_if_changed(out_dir / f"{module_name}.rst", _page(module_name, pages))
    index = [
        ".. This page is generated by docs/_ext/flax_lstm_api.py from __all__; do not edit.",
        "",
        "API reference",
        "=============",
        "",
        "Every name in the ``__all__`` of each public module, with its docstring. The build",
        "fails when a public name has no documentation.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *(f"   {pages[m]}" for m in modules),
        "",
    ]
    _write_if_changed(out_dir / "index.rst", "\n".join(index))
    return pages


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged page keeps its mtime, so Sphinx does not re-read it on every build.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _on_builder_inited(app: Sphinx) -> None:
    missing = undocumented()
    if missing:
        raise ExtensionError("public names without documentation:\n  " + "\n  ".join(missing))
    write_pages(Path(app.srcdir) / "api")


def _on_check_consistency(app: Sphinx, env: Any) -> None:
    domain = env.get_domain("py")
    objects = set(domain.objects)
    modules = set(domain.modules)
    absent = []
    for module_name in public_modules():
        if module_name not in modules:
            absent.append(module_name)
        for name, kind, obj in public_names(module_name):
            full = f"{module_name}.{name}"
            if kind == "module":
                if obj.__name__ not in modules:
                    absent.append(full)
            elif full not in objects:
                absent.append(full)
    if absent:
        raise ExtensionError("public names missing from the API pages: " + ", ".join(absent))


_NAMES_ONLY = re.compile(r"^\s*(\w+\s*,\s*)+$")  # "a, b, c," continued on the next line
_ENTRY = re.compile(r"^\w+(\s*,\s*\w+)*\s*(\([^)]*\))?\s*:(\s|$)")


def _fix_google_sections(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines):
    """Two forms of the project's Google-style docstrings that napoleon misreads, made readable.

    - an entry that names several arguments over two lines (``a, b,`` / ``  c: text``): the
      names are joined onto one line;
    - an ``Attributes:`` section written as prose rather than ``name: text`` entries: it
      becomes a rubric and a paragraph.

    Runs before napoleon (priority 400); the docstrings themselves are unchanged.
    """
    i = 0
    while i < len(lines) - 1:
        if _NAMES_ONLY.match(lines[i]):
            lines[i : i + 2] = [lines[i].rstrip() + " " + lines[i + 1].strip()]
            continue
        i += 1
    for i, line in enumerate(lines):
        if line.strip() != "Attributes:":
            continue
        body = [j for j in range(i + 1, len(lines)) if lines[j].strip()]
        if not body:
            continue
        first = lines[body[0]]
        indent = len(first) - len(first.lstrip())
        if indent > len(line) - len(line.lstrip()) and not _ENTRY.match(first.strip()):
            end = i + 1
            while end < len(lines) and (
                not lines[end].strip() or lines[end].startswith(" " * indent)
            ):
                end += 1
            text = [ln[indent:] if ln.strip() else "" for ln in lines[i + 1 : end]]
            lines[i:end] = [".. rubric:: Attributes", "", *text]
            break


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _fix_google_sections, priority=400)
    app.connect("builder-inited", _on_builder_inited)
    app.connect("env-check-consistency", _on_check_consistency)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

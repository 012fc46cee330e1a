"""`jax.export` of a model that uses flax_lstm on CPU (issues 14, 24), loaded in a fresh process.

Two ways: ``impl="scan"`` exports plain StableHLO (jax's compatibility guarantees); the CPU
kernel exports with its targets' safety checks disabled by name
(`flax_lstm.kernel.export_checks`), and the process that loads the artifact only imports
flax_lstm, which registers the kernel's handlers (`flax_lstm._kernel.export`). The NNX and
Linen examples of docs/guides/export.md run here as written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_process

import flax_lstm as fl

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "export.md"

# Importing flax_lstm registers the kernel's handlers: the loader calls nothing else of it.
LOADER = """
import sys
import jax, numpy as np
import flax_lstm
exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
args = np.load(sys.argv[1] + ".args.npz")
out, grad = exp.call(*[args[f"a{i}"] for i in range(len(args.files))])
np.savez(sys.argv[1] + ".out.npz", out=np.asarray(out), grad=np.asarray(grad))
"""


def _model(impl):
    config = fl.LSTMConfig(input_size=3, hidden_size=16, bidirectional=True, batch_first=True)
    params = fl.init_params(jax.random.key(0), config)

    def apply(w_ih, x, lengths):  # the first layer's w_ih as an argument, the rest closed over
        p = [{**params[0], "w_ih": w_ih}, *params[1:]]
        out, _ = fl.lstm(p, x, config=config, seq_lengths=lengths, impl=impl)
        return out

    def f(w_ih, x, lengths):
        out = apply(w_ih, x, lengths)
        return out, jax.grad(lambda w: (apply(w, x, lengths) ** 2).sum())(w_ih)

    x = jax.random.normal(jax.random.key(1), (4, 9, 3))
    return jax.jit(f), (params[0]["w_ih"], x, jnp.array([9, 7, 3, 1]))


@pytest.mark.parametrize("impl", ["scan", "kernel"])
def test_export_serialize_and_run_in_a_fresh_process(impl, tmp_path):
    if impl == "kernel" and not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    f, args = _model(impl)
    checks = fl.kernel.export_checks() if impl == "kernel" else ()
    exported = jax.export.export(f, disabled_checks=checks)(*args)
    text = exported.mlir_module()
    assert ("flax_lstm_cpu_forward" in text) == (impl == "kernel")
    assert "CustomSPMDPartitioning" not in text
    path = tmp_path / "model.jax"
    path.write_bytes(exported.serialize())
    np.savez(str(path) + ".args.npz", **{f"a{i}": np.asarray(a) for i, a in enumerate(args)})
    python_process.run("-c", LOADER, str(path))
    loaded = np.load(str(path) + ".out.npz")
    out, grad = f(*args)
    np.testing.assert_array_equal(loaded["out"], np.asarray(out))
    np.testing.assert_array_equal(loaded["grad"], np.asarray(grad))


def test_kernel_export_is_refused_without_the_checks():
    if not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    f, args = _model("kernel")
    with pytest.raises(ValueError, match="flax_lstm_cpu_forward"):
        jax.export.export(f)(*args).serialize()


def test_default_export_error_names_the_options():
    """The default call on CPU runs the kernel; jax.export's refusal carries the note that
    says what to do (`flax_lstm._kernel.export.NOTE`)."""
    if not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    # Large enough for the default to take the kernel (flax_lstm.plan.KERNEL_MIN_STEP_UNITS).
    config = fl.LSTMConfig(input_size=3, hidden_size=64)
    params = fl.init_params(jax.random.key(0), config)
    f = jax.jit(lambda p, x: fl.lstm(p, x, config=config)[0])
    with pytest.raises(ValueError, match="no compatibility guarantees") as info:
        jax.export.export(f)(params, jnp.ones((20, 2, 3)))
    message = str(info.value)
    assert "disabled_checks=flax_lstm.kernel.export_checks()" in message
    assert "impl='scan'" in message


def _guide_blocks() -> list[str]:
    """The python blocks of the export guide's ``jax.export`` section: the NNX export, the
    Linen export and the loading process."""
    section = GUIDE.read_text().split("## `jax.export`", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3, len(blocks)
    return blocks


def _load_in_a_fresh_process(folder: Path, loader: str) -> np.ndarray:
    code = f"import os, sys\nos.chdir(sys.argv[1])\n{loader}\n"
    code += "np.save('output.npy', np.asarray(output))\n"
    python_process.run("-c", code, str(folder))
    return np.load(folder / "output.npy")


def test_guide_exports_nnx_and_linen_models_for_a_fresh_process(tmp_path, monkeypatch):
    if not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    export_nnx, export_linen, loader = _guide_blocks()
    nnx_dir, linen_dir = tmp_path / "nnx", tmp_path / "linen"
    nnx_dir.mkdir()
    linen_dir.mkdir()
    monkeypatch.chdir(nnx_dir)
    namespace: dict = {}
    exec(compile(export_nnx, "export.md NNX block", "exec"), namespace)
    exec(compile(export_linen, "export.md Linen block", "exec"), namespace)
    assert "flax_lstm_cpu_forward" in namespace["exported"].mlir_module()  # the default path
    x = namespace["x"]
    want = np.asarray(namespace["model"](x)[0])
    got = _load_in_a_fresh_process(nnx_dir, loader)
    np.testing.assert_array_equal(got, want)

    (linen_dir / "model.jax").write_bytes(namespace["exported_linen"].serialize())
    np.savez(linen_dir / "weights.npz", **namespace["linen_weights"])
    want = np.asarray(namespace["module"].apply(namespace["variables"], x)[0])
    got = _load_in_a_fresh_process(linen_dir, loader)
    np.testing.assert_array_equal(got, want)


def test_import_registers_a_built_kernel_and_never_builds(tmp_path):
    """``import flax_lstm`` registers the kernel where it is built, and builds nothing where
    it is not (a build takes seconds)."""
    check = "import flax_lstm\nfrom flax_lstm._kernel import build\nprint(bool(build.LIBRARY))\n"
    empty = tmp_path / "empty-cache"
    proc = python_process.run("-c", check, FLAX_LSTM_CACHE_DIR=str(empty))
    assert proc.stdout.split()[-1] == "False"
    assert not empty.exists() or not any(empty.iterdir())
    if not fl.kernel.available():
        pytest.skip("CPU kernel not built")
    cache = os.environ.get("FLAX_LSTM_CACHE_DIR")
    proc = python_process.run("-c", check, **({"FLAX_LSTM_CACHE_DIR": cache} if cache else {}))
    assert proc.stdout.split()[-1] == "True"

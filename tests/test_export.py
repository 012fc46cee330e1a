"""`jax.export` of a model that uses flax_lstm on CPU (issue 14), loaded in a fresh process.

Two ways: ``impl="scan"`` exports plain StableHLO (jax's compatibility guarantees); the CPU
kernel exports with its targets' safety checks disabled by name
(`flax_lstm.kernel.export_checks`), and the process that loads the artifact registers them
with `flax_lstm.kernel.available` first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_process

import flax_lstm as fl

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")

LOADER = """
import sys
import jax, numpy as np
import flax_lstm
if sys.argv[2] == "kernel":
    assert flax_lstm.kernel.available()  # registers the kernel's FFI targets
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
    python_process.run("-c", LOADER, str(path), impl)
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

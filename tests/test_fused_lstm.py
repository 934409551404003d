"""The fused CPU LSTM kernel (compiler/kernels/) builds where a C++ compiler exists, computes
the same function as Flax's `nn.RNN(nn.OptimizedLSTMCell)` (values and gradients), trains to
the same losses as the XLA formulation, exports with parity, and falls back cleanly when it
cannot be built or is switched off."""

from __future__ import annotations

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import EXAMPLES

import nnspec.compiler.api as api
from nnspec.compiler.kernels import build
from nnspec.compiler.kernels import lstm as fused


def test_kernel_builds_into_a_fresh_cache(tmp_path, monkeypatch):
    """With g++ present (CI installs it) the kernel must really build, not silently fall back."""
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on PATH: the kernel cannot be built here")
    monkeypatch.setenv("NNSPEC_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("NNSPEC_CXX", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    library = build.build("lstm")
    assert library.parent == tmp_path and library.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no temporary left behind
    mtime = library.stat().st_mtime_ns
    assert build.build("lstm") == library and library.stat().st_mtime_ns == mtime  # cached
    assert fused.available(), fused._STATE.get("error")


def _rnn(cls, units, **kw):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return cls(nn.OptimizedLSTMCell(units, parent=None), return_carry=True,
                       name="rnn", **kw)(x)
    return Net()


CASES = [  # batch, steps, features, units, reverse (a bidirectional layer's backward half)
    (67, 5, 3, 16, False),  # two row blocks of unequal size
    (5, 1, 4, 8, True),  # T = 1, one block
]


@pytest.mark.parametrize("batch,steps,features,units,reverse", CASES)
def test_values_and_gradients_match_flax(batch, steps, features, units, reverse):
    if not fused.available():
        pytest.skip(f"kernel unavailable: {fused.reason()}")
    kw = {"reverse": True, "keep_order": True} if reverse else {}
    plain, fast = _rnn(nn.RNN, units, **kw), _rnn(fused.fast_rnn(), units, **kw)
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.standard_normal((batch, steps, features)), jnp.float32)
    params = plain.init(jax.random.key(steps), x)["params"]
    weights = jnp.asarray(rng.standard_normal((batch, steps, units)), jnp.float32)

    def loss(net):
        def f(p, x):
            (c, h), ys = net.apply({"params": p}, x)
            return jnp.sum(ys * weights) + jnp.sum(jnp.sin(c)) + jnp.sum(h * h)
        return f

    fused._STATE.pop("status", None)
    got, g_fast = jax.jit(jax.value_and_grad(loss(fast), argnums=(0, 1)))(params, x)
    assert fused.status() == "fused CPU kernel"
    want, g_plain = jax.jit(jax.value_and_grad(loss(plain), argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
        scale = float(jnp.max(jnp.abs(b)))
        assert float(jnp.max(jnp.abs(a - b))) <= 2e-6 * scale + 1e-6, (a.shape, scale)


def test_opt_out_and_unsupported_options_take_the_xla_path(monkeypatch):
    x = jnp.zeros((4, 3, 2), jnp.float32)
    monkeypatch.setenv("NNSPEC_FUSED_RNN", "0")
    assert fused._why_not(x, nn.OptimizedLSTMCell(5, parent=None)) == "NNSPEC_FUSED_RNN=0"
    monkeypatch.delenv("NNSPEC_FUSED_RNN")
    assert "activations" in fused._why_not(x, nn.OptimizedLSTMCell(5, activation_fn=jnp.sin,
                                                                   parent=None))
    assert "float32" in fused._why_not(x.astype(jnp.bfloat16),
                                       nn.OptimizedLSTMCell(5, parent=None))
    assert "empty" in fused._why_not(x[:, :0], nn.OptimizedLSTMCell(5, parent=None))


@pytest.fixture
def spec():
    data = yaml.safe_load((EXAMPLES / "lstm.yaml").read_text())
    data["train"]["epochs"] = 2
    data["data"]["limit"] = 600
    return data


def test_training_with_and_without_the_kernel_gives_the_same_losses(spec, tmp_path,
                                                                    monkeypatch):
    """Kernel on (export cross-checked by onnxruntime) against the fallback a missing compiler
    gives: the same loss trace, both trained, both exported with parity."""
    if not fused.available():
        pytest.skip(f"kernel unavailable: {fused.reason()}")
    on = api.train(spec, out=tmp_path / "on")
    assert on.metrics["training"]["lstm"] == "fused CPU kernel"
    assert on.parity["passed"] is True, on.parity

    # No compiler and an empty cache: the build fails, the layer runs its XLA formulation.
    saved = dict(fused._STATE)
    monkeypatch.setenv("NNSPEC_CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NNSPEC_KERNEL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delitem(build._LOADED, "lstm")
    fused._STATE.clear()
    try:
        off = api.train(spec, out=tmp_path / "off")
        path = off.metrics["training"]["lstm"]
    finally:
        fused._STATE.clear()
        fused._STATE.update(saved)
    assert path.startswith("XLA (kernel unavailable: no C++ compiler"), path
    assert "no-such-compiler" in path
    assert off.parity["passed"] is True, off.parity
    losses = [[row["loss"] for row in run.history] for run in (on, off)]
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-5)

"""Normalisation and regularisation layers beyond the registry-driven parity test.

The generic test runs each layer at its initial variables, where batch norm's running mean and
variance are 0 and 1 and every scale is 1 and bias 0: a mean/variance or scale/bias mix-up would
pass it. Here the variables are random, the running statistics are checked against the momentum
formula, and the train-only layers are checked in training (where they act) and in the export
(where they must vanish).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from conftest import run_cli

from nnspec.compiler.export.layer_check import example_graph
from nnspec.compiler.export.onnx_graph import to_onnx
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.layers.base import Example, discover
from nnspec.compiler.train.module import GraphModule
from nnspec.runtime.runners import RUNNERS
from nnspec.spec.errors import SpecError

REGISTRY = discover()
ATOL = 1e-5


def _graph(layer: str, params: dict, shape: tuple):
    graph = example_graph(REGISTRY[layer], Example(params, (shape,)))
    return graph, GraphModule(graph)


def _random_variables(variables, rng: np.random.Generator):
    """Every variable replaced by random values of its shape; variances stay positive."""
    def draw(name, value):
        shape = np.shape(value)
        if name == "var":
            return rng.uniform(0.2, 3.0, shape).astype(np.float32)
        if name == "mean":
            return rng.normal(0.0, 2.0, shape).astype(np.float32)
        if name == "scale":
            return rng.normal(1.0, 0.5, shape).astype(np.float32)
        return rng.normal(0.0, 1.0, shape).astype(np.float32)

    return {coll: {node: {k: draw(k, v) for k, v in leaves.items()}
                   for node, leaves in nodes.items()}
            for coll, nodes in variables.items()}


def _parity(layer, params, shape, x, variables=None, seed=0):
    """Max abs difference to Flax (inference mode) per runtime and opset, with random (or the
    given) variables."""
    graph, module = _graph(layer, params, shape)
    init = module.init(jax.random.key(seed), {"x0": jnp.asarray(x)})
    variables = variables or _random_variables(jax.device_get(init),
                                               np.random.default_rng(seed))
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(module.apply(variables, {"x0": x})["output"], np.float64)
    diffs = {}
    for opset in (17, 21):
        data = to_onnx(graph, variables, opset).SerializeToString()
        for name, run in RUNNERS.items():
            got = run(data, {"x0": x})["output"]
            assert got.shape == expected.shape, (name, opset)
            diffs[name, opset] = float(np.max(np.abs(got - expected)))
    return diffs


NORM_CASES = [
    ("batch_norm", {}, (6,)),
    ("batch_norm", {"epsilon": 1e-3}, (5, 4)),
    ("batch_norm", {"center": False}, (3, 4, 2)),
    ("batch_norm", {"scale": False}, (None, 3)),
    ("layer_norm", {}, (8,)),
    ("layer_norm", {"center": False}, (2, 3, 5)),
    ("group_norm", {"groups": 3}, (4, 4, 6)),
    ("group_norm", {"groups": 2}, (None, 8)),
    ("group_norm", {"groups": 4, "scale": False}, (8,)),
]


@pytest.mark.parametrize(("layer", "params", "shape"), NORM_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NORM_CASES)])
def test_random_statistics_and_affine_match_every_runtime(layer, params, shape):
    rng = np.random.default_rng(1)
    # Off-centre inputs: a variance computed as E[x²]-E[x]² would show here.
    x = (rng.normal(size=(3, *(5 if d is None else d for d in shape))) * 2 + 3).astype(
        np.float32)
    diffs = _parity(layer, params, shape, x)
    assert max(diffs.values()) <= ATOL, diffs


def test_batch_norm_far_from_zero_keeps_its_precision():
    # A large running mean against a small spread: folding the mean into the bias
    # (x * a + (bias - mean * a)) would lose ~6e-5 here; subtracting first, as Flax does, not.
    graph, module = _graph("batch_norm", {}, (4,))
    rng = np.random.default_rng(2)
    variables = {"params": {"layer": {"scale": rng.normal(1, 0.3, 4).astype(np.float32),
                                      "bias": rng.normal(0, 1, 4).astype(np.float32)}},
                 "batch_stats": {"layer": {"mean": np.full(4, 100.0, np.float32),
                                           "var": np.full(4, 0.01, np.float32)}}}
    x = rng.normal(100.0, 0.1, (16, 4)).astype(np.float32)
    diffs = _parity("batch_norm", {}, (4,), x, variables)
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.parametrize(("momentum", "shape"), [(0.99, (4,)), (0.8, (5, 3))])
def test_batch_norm_running_statistics_follow_the_momentum(momentum, shape):
    graph, module = _graph("batch_norm", {"momentum": momentum, "epsilon": 1e-3}, shape)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(8, *shape)) * 3 + 2).astype(np.float32)
    variables = _random_variables(jax.device_get(module.init(jax.random.key(0), {"x0": x})), rng)
    out, updated = module.apply(variables, {"x0": x}, train=True, mutable=["batch_stats"])
    axes = tuple(range(x.ndim - 1))  # every axis but the channels
    batch_mean = x.astype(np.float64).mean(axes)
    batch_var = x.astype(np.float64).var(axes)  # biased, as Flax and Keras keep it
    old = variables["batch_stats"]["layer"]
    new = jax.device_get(updated["batch_stats"]["layer"])
    np.testing.assert_allclose(new["mean"], momentum * old["mean"] + (1 - momentum) * batch_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], momentum * old["var"] + (1 - momentum) * batch_var,
                               rtol=1e-5, atol=1e-6)
    # Training normalises by the batch's own statistics, not the running ones.
    p = variables["params"]["layer"]
    want = (x - batch_mean) / np.sqrt(batch_var + 1e-3) * p["scale"] + p["bias"]
    np.testing.assert_allclose(np.asarray(out["output"]), want, rtol=1e-4, atol=1e-5)


TRAIN_ONLY_SPEC = """\
version: 1
name: train_only
inputs:
  x: {shape: [5, 4]}
layers:
  - {type: gaussian_noise, name: noise, stddev: 0.5}
  - {type: spatial_dropout, name: channel_drop, rate: 0.5}
"""


@pytest.mark.parametrize("with_dense", [False, True])
def test_train_only_layers_vanish_from_the_export(tmp_path, with_dense):
    text = TRAIN_ONLY_SPEC
    if with_dense:
        text = text.replace("  - {type: spatial", "  - {type: dense, name: fc, units: 3}\n"
                            "  - {type: spatial")
    (tmp_path / "spec.yaml").write_text(text)
    _, graph = check_spec(tmp_path / "spec.yaml")
    module = GraphModule(graph)
    x = np.random.default_rng(4).normal(size=(3, 5, 4)).astype(np.float32)
    variables = jax.device_get(module.init(jax.random.key(0), {"x": x}))
    model = to_onnx(graph, variables, 21)
    names = [n.name for n in model.graph.node] + [t.name for t in model.graph.initializer]
    assert not [n for n in names if n.startswith(("noise", "channel_drop"))], names
    ops = [n.op_type for n in model.graph.node]
    # The dense layer writes the output itself; with no layer left, an Identity names it.
    assert ops == (["MatMul", "Add"] if with_dense else ["Identity"])
    inference = np.asarray(module.apply(variables, {"x": x}, train=False)["output"])
    want = x @ variables["params"]["fc"]["kernel"] + variables["params"]["fc"]["bias"] \
        if with_dense else x
    np.testing.assert_allclose(inference, want, rtol=1e-6, atol=1e-6)
    if not with_dense:
        assert np.array_equal(inference, x)
    for name, run in RUNNERS.items():
        got = run(model.SerializeToString(), {"x": x})["output"]
        np.testing.assert_allclose(got, inference, rtol=0, atol=ATOL, err_msg=name)


def _train_apply(layer, params, shape, x, seed):
    _, module = _graph(layer, params, shape)
    variables = module.init(jax.random.key(0), {"x0": x})
    out = module.apply(variables, {"x0": x}, train=True, rngs={"dropout": jax.random.key(seed)})
    return np.asarray(out["output"])


def test_gaussian_noise_acts_in_training_only_and_is_seeded():
    x = np.random.default_rng(5).normal(size=(64, 32, 16)).astype(np.float32)
    a = _train_apply("gaussian_noise", {"stddev": 0.3}, (32, 16), x, seed=1)
    b = _train_apply("gaussian_noise", {"stddev": 0.3}, (32, 16), x, seed=1)
    c = _train_apply("gaussian_noise", {"stddev": 0.3}, (32, 16), x, seed=2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    noise = (a - x).astype(np.float64)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.3) < 0.01
    _, module = _graph("gaussian_noise", {"stddev": 0.3}, (32, 16))
    out = module.apply({}, {"x0": x}, train=False)["output"]
    assert np.array_equal(np.asarray(out), x)


@pytest.mark.parametrize("shape", [(6, 8), (3, 4, 8)], ids=["sequence", "image"])
def test_spatial_dropout_zeroes_whole_channels(shape):
    rate = 0.5
    x = (np.random.default_rng(6).uniform(0.5, 1.5, size=(32, *shape))).astype(np.float32)
    y = _train_apply("spatial_dropout", {"rate": rate}, shape, x, seed=7)
    assert np.array_equal(y, _train_apply("spatial_dropout", {"rate": rate}, shape, x, seed=7))
    assert not np.array_equal(y, _train_apply("spatial_dropout", {"rate": rate}, shape, x, 8))
    spatial = tuple(range(1, x.ndim - 1))
    dropped = (y == 0).all(axis=spatial)  # (batch, channels)
    kept = np.isclose(y, x / (1 - rate), rtol=1e-6).all(axis=spatial)
    assert (dropped ^ kept).all(), "a channel was partly dropped or wrongly scaled"
    assert 0.35 < dropped.mean() < 0.65
    # The mask differs between samples: it is per sample and channel, not per channel.
    assert not (dropped == dropped[:1]).all()


@pytest.mark.parametrize(("layer", "params", "shape", "message"), [
    ("group_norm", {"groups": 4}, [6, 6], "`groups` must divide the number of channels (6)"),
    ("group_norm", {"groups": 8}, [8], "normalises single values"),
    ("layer_norm", {}, [5, 1], "has a single feature"),
    ("spatial_dropout", {"rate": 0.5}, [8], "expects a sequence or image input"),
    ("batch_norm", {}, [4, None], "needs a known channel (last) dimension"),
    ("batch_norm", {"epsilon": 0}, [4], "epsilon: Input should be greater than 0"),
])
def test_bad_parameters_are_located_errors(tmp_path, layer, params, shape, message):
    inner = ", ".join(f"{k}: {v}" for k, v in params.items())
    dims = ", ".join("null" if d is None else str(d) for d in shape)
    (tmp_path / "spec.yaml").write_text(
        f"version: 1\nname: bad\ninputs:\n  x: {{shape: [{dims}]}}\nlayers:\n"
        f"  - {{type: {layer}{', ' if inner else ''}{inner}}}\n")
    with pytest.raises(SpecError) as err:
        check_spec(tmp_path / "spec.yaml")
    assert message in str(err.value)
    assert "spec.yaml:6:" in str(err.value)


BN_DIGITS = """\
version: 1
name: bn_digits
inputs:
  pixels: {shape: [8, 8]}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, units: 32}
  - {type: batch_norm, name: bn, momentum: 0.9}
  - {type: relu}
  - {type: dense, units: 10}
  - {type: softmax}
data: {source: digits, limit: 600}
train:
  epochs: 3
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.003}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 3
"""


def test_batch_norm_model_trains_and_exports_with_parity(tmp_path):
    spec = tmp_path / "bn.yaml"
    spec.write_text(BN_DIGITS)
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 0, result.stderr
    parity = json.loads((tmp_path / "run" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-5, parity
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # The running statistics trained away from their initial 0 and 1 and were exported.
    assert np.abs(weights["bn/mean"]).max() > 1e-2
    assert np.abs(weights["bn/var"] - 1).max() > 1e-2
    assert {"bn/scale", "bn/bias"} <= set(weights)

"""Convolution and pooling beyond the per-layer examples of test_layers.py: the exported graphs'
padding policy, whole conv nets from YAML against every runtime, the located errors, the cheap
max-pool gradient, and the example CNN trained end to end."""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EXAMPLES, run_cli

from nnspec.compiler.export.layer_check import example_graph, sample_inputs
from nnspec.compiler.export.onnx_graph import check_shapes, to_onnx
from nnspec.compiler.export.parity import cross_check, flax_predict
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.layers.base import discover
from nnspec.compiler.train.module import GraphModule
from nnspec.runtime.runners import RUNNERS, available
from nnspec.spec.errors import SpecError

SPATIAL = ("conv1d", "conv2d", "conv2d_transpose", "max_pool1d", "max_pool2d", "avg_pool1d",
           "avg_pool2d", "global_average_pool", "global_max_pool")
WINDOWED = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}

IMAGE_NET = """\
version: 1
name: image_net
inputs:
  image: {shape: [9, 7, 2]}
layers:
  - {type: conv2d, name: c1, filters: 6, kernel_size: 3, strides: 2, padding: same,
     activation: relu}
  - {type: max_pool2d, name: p1, pool_size: 2, padding: same}
  - {type: conv2d, name: dw, filters: 12, kernel_size: [2, 3], groups: 6, padding: same,
     dilation: 2}
  - {type: conv2d_transpose, name: up, filters: 4, kernel_size: 3, strides: 2, padding: same}
  - {type: avg_pool2d, name: p2, pool_size: 3, strides: 2, padding: same}
  - {type: flatten}
  - {type: dense, name: fc, units: 5}
"""

SEQUENCE_NET = """\
version: 1
name: sequence_net
inputs:
  steps: {shape: [null, 3]}
layers:
  - {type: conv1d, name: c1, filters: 8, kernel_size: 3, dilation: 2, padding: causal,
     activation: tanh}
  - {type: max_pool1d, name: p1, pool_size: 3, strides: 1, padding: same}
  - {type: conv1d, name: c2, filters: 4, kernel_size: 2, padding: [[1, 0]]}
  - {type: global_max_pool, name: gmax}
  - {type: dense, name: fc, units: 2}
"""


def _variables(graph, scale=0.0):
    """Variables of the model's shapes, normal times `scale`, built with numpy: compiling the
    initializers costs seconds and their values do not matter here."""
    shapes = jax.eval_shape(GraphModule(graph).init, jax.random.key(0), sample_inputs(graph, 1))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(s.dtype), shapes)


def test_exported_windows_have_explicit_pads_and_no_auto_pad():
    registry = discover()
    seen = set()
    for name in SPATIAL:
        for example in registry[name].examples:
            graph = example_graph(registry[name], example)
            model = to_onnx(graph, _variables(graph), 21)
            for node in model.graph.node:
                attrs = {a.name for a in node.attribute}
                assert "auto_pad" not in attrs, (name, example.note, node.op_type)
                if node.op_type in WINDOWED:
                    seen.add(node.op_type)
                    assert "pads" in attrs, (name, example.note, node.op_type)
                if node.op_type == "AveragePool":
                    assert "count_include_pad" in attrs
                if node.op_type in ("MaxPool", "AveragePool"):
                    assert node.attribute[[a.name for a in node.attribute].index(
                        "ceil_mode")].i == 0
    assert seen == WINDOWED


@pytest.mark.parametrize(("text", "lengths"), [(IMAGE_NET, (None,)), (SEQUENCE_NET, (6, 11))],
                         ids=["image", "sequence"])
def test_conv_nets_from_yaml_match_flax_on_every_runtime(tmp_path, text, lengths):
    spec = tmp_path / "net.yaml"
    spec.write_text(text)
    _, graph = check_spec(spec)
    variables = _variables(graph, scale=0.3)
    model = to_onnx(graph, variables, 21)
    check_shapes(model, graph)
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    for length in lengths:  # a free length: the same file runs at any length
        inputs = sample_inputs(graph, batch=2, seed=length or 0, free=length or 5)
        report = cross_check(graph, variables, path, inputs, atol=1e-5, rtol=1e-5)
        assert report["passed"] and report["max_abs_diff"] <= 1e-5, report
        expected = flax_predict(graph, variables, inputs)["output"]
        for runtime in available():
            got = RUNNERS[runtime](path, inputs)["output"]
            assert got.shape == expected.shape, runtime
            assert np.max(np.abs(got - expected)) <= 1e-5, runtime


def test_flatten_after_conv_keeps_channels_last_order(tmp_path):
    # Flatten reads the channels-first pool output: the back-transpose it would need folds
    # into the dense kernel (rows stored channels-first, marked), and the values still match.
    import onnxruntime as ort

    from nnspec.compiler.export.simplify import ROWS_MARK

    spec = tmp_path / "net.yaml"
    spec.write_text(IMAGE_NET)
    _, graph = check_spec(spec)
    variables = _variables(graph, scale=0.3)
    model = to_onnx(graph, variables, 21)
    ops = [n.op_type for n in model.graph.node]
    assert ops[ops.index("Flatten") - 1] == "AveragePool"
    kernel = next(t for t in model.graph.initializer if t.name == "fc/kernel")
    assert kernel.doc_string == ROWS_MARK + "3,2,4"
    x = sample_inputs(graph, 3)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = GraphModule(graph).apply(variables, x).values()
    np.testing.assert_allclose(session.run(None, x)[0], np.asarray(want), rtol=1e-5, atol=1e-5)


class _TwoTransposes(nn.Module):
    full: Any
    crop: Any

    @nn.compact
    def __call__(self, x):
        return self.full.flax(x, name="full", train=False), self.crop.flax(x, name="crop",
                                                                            train=False)


def test_conv2d_transpose_explicit_padding_crops_the_full_output():
    cls = discover()["conv2d_transpose"]
    full = cls.model_validate({"filters": 3, "kernel_size": 3, "strides": 2})
    crop = cls.model_validate({"filters": 3, "kernel_size": 3, "strides": 2,
                               "padding": [[1, 2], [0, 1]]})
    assert full.infer((4, 3, 2)) == (9, 7, 3)
    assert crop.infer((4, 3, 2)) == (6, 6, 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    same = {"kernel": rng.normal(size=(3, 3, 2, 3)).astype(np.float32),
            "bias": rng.normal(size=(3,)).astype(np.float32)}
    a, b = _TwoTransposes(full, crop).apply({"params": {"full": same, "crop": same}}, x)
    np.testing.assert_allclose(b, a[:, 1:-2, 0:-1], atol=1e-6)


def test_max_pool_2x2_gradient_avoids_select_and_scatter():
    cls = discover()["max_pool2d"]
    layer = cls.model_validate({"pool_size": 2})
    assert layer.infer((7, 6, 3)) == (3, 3, 3)
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
    assert np.array_equal(layer.flax(x, name="p", train=True),
                          nn.max_pool(x, (2, 2), (2, 2), "VALID"))
    grad = jax.grad(lambda v: jnp.sum(layer.flax(v, name="p", train=True) ** 2))
    assert "select_and_scatter" not in str(jax.make_jaxpr(grad)(x))
    expected = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (2, 2), (2, 2), "VALID") ** 2))(x)
    np.testing.assert_array_equal(grad(x), expected)


BAD = [
    ("[8, 8, 1]", "{type: conv2d, filters: 4, kernel_size: 9}",
     "the kernel spans 9 along height, more than the input's 8"),
    ("[8, 8, 1]", "{type: conv2d, filters: 4, kernel_size: 3, dilation: 4}",
     "the dilated kernel spans 9 along height"),
    ("[8, 8, 6]", "{type: conv2d, filters: 4, kernel_size: 3, groups: 4}",
     "`groups` must divide the input channels (6). Received: groups=4"),
    ("[8, 8, 1]", "{type: conv1d, filters: 4, kernel_size: 3}",
     "expects a 1-D input (steps, channels), got (8, 8, 1) from 'x'; use conv2d"),
    ("[8, 3]", "{type: max_pool2d}", "expects a 2-D input (height, width, channels)"),
    ("[8, 8, 1]", "{type: conv2d, filters: 4, kernel_size: [3, 3, 3]}",
     "`kernel_size` must be a positive int or a list of 2 of them. Received: "
     "kernel_size=[3, 3, 3]"),
    ("[8, 8, 1]", "{type: conv2d, filters: 4, kernel_size: 3, padding: causal}",
     "`padding` 'causal' is only for 1-D layers"),
    ("[null, 3]", "{type: conv1d, filters: 4, kernel_size: 3, padding: same, strides: 2}",
     "`padding` 'same' with stride 2 needs a known steps length"),
    ("[8, 8, 1]", "{type: avg_pool2d, pool_size: 3, strides: 0}",
     "`strides` must be a positive int"),
    ("[8]", "{type: global_average_pool}", "expects a (steps, channels) or (height, width"),
]


@pytest.mark.parametrize(("shape", "layer", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_impossible_configurations_are_located_errors(tmp_path, shape, layer, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"version: 1\nname: bad\ninputs:\n  x: {{shape: {shape}}}\nlayers:\n"
                    f"  - {layer}\n")
    with pytest.raises(SpecError) as err:
        check_spec(spec)
    (problem,) = err.value.problems
    assert problem.location.line == 6, problem
    assert message in problem.message, problem.message


def test_cnn_example_trains_and_exports(tmp_path):
    out = tmp_path / "cnn"
    result = run_cli("train", str(EXAMPLES / "cnn.yaml"), "--out", str(out), "-q",
                     "--set", "train.epochs=12")
    assert result.returncode == 0, result.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-5
    assert parity["argmax_agreement"] == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics  # 0.96 seen

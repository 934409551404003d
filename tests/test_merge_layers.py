"""What the per-layer examples cannot show about the shape, merge, embedding and attention
layers: whole graphs with two inputs and with branches, causality, the Gather export, a dynamic
batch through reshape, the located errors, and the transformer example trained end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from conftest import EXAMPLES, run_cli

from nnspec.compiler.export.layer_check import sample_inputs
from nnspec.compiler.export.onnx_graph import check_shapes, to_onnx
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.train.module import GraphModule
from nnspec.runtime.runners import RUNNERS, available
from nnspec.spec.errors import SpecError

RUNTIMES = tuple(available())

TWO_INPUTS = """\
version: 1
name: two_inputs
inputs:
  tokens: {shape: [null], dtype: int64}
  memory: {shape: [null, 5]}
  side: {shape: [3]}
layers:
  - {type: embedding, name: embed, input_dim: 20, output_dim: 6, inputs: tokens}
  - {type: multi_head_attention, name: cross, num_heads: 2, key_dim: 4, value_dim: 3,
     inputs: [embed, memory]}
  - {type: permute, name: channels_first, dims: [2, 1]}
  - {type: dense, name: gate, units: 6, activation: sigmoid, inputs: side}
  - {type: dense, name: proj, units: 6, inputs: side}
  - {type: multiply, name: gated, inputs: [gate, proj]}
  - {type: concat, name: joined, axis: 1, inputs: [gated, gated, proj]}
outputs:
  sequence: {from: channels_first}
  vector: {from: joined}
"""
"""Three inputs (ids, a float sequence, a vector) and two outputs. The two free lengths meet
only in cross-attention, where they may differ: each model input gets its own ONNX symbol, and
tract refuses to load a graph that adds or concatenates across two different symbols."""

RESIDUAL = """\
version: 1
name: residual
inputs:
  x: {shape: [null, 4]}
layers:
  - {type: dense, name: inner, units: 4, activation: tanh}
  - {type: multi_head_attention, name: attention, num_heads: 2, key_dim: 2, causal: true}
  - {type: add, name: skip, inputs: [x, inner, attention]}
  - {type: multiply, name: square, inputs: [skip, skip]}
  - {type: concat, name: wide, inputs: [square, x]}
  - {type: concat, name: long, axis: 1, inputs: [wide, wide]}
  - {type: reshape, name: pairs, target_shape: [-1, 2, 4]}
outputs:
  out: {from: pairs}
"""
"""One free-length input feeding branches that merge again, on both axes."""


def _spec(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return check_spec(path)[1]


def _init(graph, inputs, seed=0):
    """The model's jitted apply and its initial variables. Jitted: one compilation is much
    faster than dispatching each op of a whole graph; the apply is kept so it compiles once."""
    module = GraphModule(graph)
    variables = jax.jit(module.init)(jax.random.key(seed),
                                     {k: jnp.asarray(v) for k, v in inputs.items()})
    return jax.jit(module.apply), jax.device_get(variables)


def _flax(apply, variables, inputs):
    with jax.default_matmul_precision("highest"):
        return {k: np.asarray(v) for k, v in apply(variables, inputs).items()}


def _assert_runtimes_match(graph, apply, variables, inputs, runtimes=RUNTIMES, atol=1e-5):
    model = to_onnx(graph, variables, 21)
    check_shapes(model, graph)
    expected = _flax(apply, variables, inputs)
    data = model.SerializeToString()
    for runtime in runtimes:
        got = RUNNERS[runtime](data, inputs)
        for name, want in expected.items():
            assert got[name].shape == want.shape, (runtime, name)
            np.testing.assert_allclose(got[name], want, atol=atol, rtol=0,
                                       err_msg=f"{runtime}: {name}")
    return model


def test_two_input_model_shapes_and_parity(tmp_path):
    graph = _spec(tmp_path, TWO_INPUTS)
    shapes = {n.name: n.shape for n in graph.nodes}
    assert shapes["embed"] == (None, 6)
    assert shapes["cross"] == (None, 6)  # the query's length and width
    assert shapes["channels_first"] == (6, None)
    assert shapes["joined"] == (18,)
    inputs = sample_inputs(graph, batch=3, high=20)
    inputs["memory"] = np.random.default_rng(1).normal(size=(3, 7, 5)).astype(np.float32)
    apply, variables = _init(graph, inputs)
    _assert_runtimes_match(graph, apply, variables, inputs)


def test_residual_model_shapes_and_parity(tmp_path):
    graph = _spec(tmp_path, RESIDUAL)
    shapes = {n.name: n.shape for n in graph.nodes}
    assert shapes["skip"] == shapes["square"] == (None, 4)
    assert shapes["wide"] == (None, 8)
    assert shapes["long"] == (None, 8)
    assert shapes["pairs"] == (None, 2, 4)
    inputs = sample_inputs(graph, batch=3, free=6)
    apply, variables = _init(graph, inputs)
    out = _flax(apply, variables, inputs)["out"]
    assert out.shape == (3, 12, 2, 4)  # 2 x 6 steps of 8, as 2 x 4
    _assert_runtimes_match(graph, apply, variables, inputs)


CAUSAL = """\
version: 1
name: causal
inputs:
  x: {shape: [null, 4]}
layers:
  - {type: multi_head_attention, name: attention, num_heads: 2, key_dim: 3,
     causal: CAUSAL}
"""


@pytest.mark.parametrize("causal", [True, False])
def test_causal_attention_does_not_look_ahead(tmp_path, causal):
    graph = _spec(tmp_path, CAUSAL.replace("CAUSAL", str(causal).lower()))
    x = np.random.default_rng(0).normal(size=(2, 7, 4)).astype(np.float32)
    later = x.copy()
    later[:, 4:] += 3.0  # change steps 4, 5 and 6
    apply, variables = _init(graph, {"x": x})
    session = RUNNERS["onnxruntime"]
    model = to_onnx(graph, variables, 21).SerializeToString()
    for run in (lambda v: _flax(apply, variables, {"x": v})["output"],
                lambda v: session(model, {"x": v})["output"]):
        a, b = run(x), run(later)
        assert not np.allclose(a[:, 4:], b[:, 4:])
        # A masked key gets weight exactly 0, so earlier steps do not move at all.
        assert np.array_equal(a[:, :4], b[:, :4]) == causal


def test_attention_is_flax_multi_head_dot_product_attention(tmp_path):
    # The layer builds its own module (for a separate value_dim) but must be Flax's attention:
    # same parameter tree, same outputs with the same parameters.
    import flax.linen as nn

    graph = _spec(tmp_path, CAUSAL.replace("CAUSAL", "true"))
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    apply, variables = _init(graph, {"x": x})
    params = variables["params"]["attention"]
    assert {k: {p: v.shape for p, v in d.items()} for k, d in params.items()} == {
        "query": {"kernel": (4, 2, 3), "bias": (2, 3)},
        "key": {"kernel": (4, 2, 3), "bias": (2, 3)},
        "value": {"kernel": (4, 2, 3), "bias": (2, 3)},
        "out": {"kernel": (2, 3, 4), "bias": (4,)},
    }
    reference = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=6)
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    want = reference.apply({"params": params}, x, mask=mask)
    got = apply(variables, {"x": x})["output"]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


EMBEDDING = """\
version: 1
name: ids
inputs:
  ids: {shape: [null], dtype: int64}
layers:
  - {type: embedding, name: table, input_dim: 11, output_dim: 3}
"""


def test_embedding_exports_to_gather(tmp_path):
    graph = _spec(tmp_path, EMBEDDING)
    ids = np.array([[0, 10, 3, 3], [7, 1, 0, 2]], np.int64)
    apply, variables = _init(graph, {"ids": ids})
    model = _assert_runtimes_match(graph, apply, variables, {"ids": ids}, atol=0)
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 1 and gathers[0].input[0] == "table/embedding"
    assert onnx.helper.get_attribute_value(gathers[0].attribute[0]) == 0  # axis
    table = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(table["table/embedding"], variables["params"]["table"][
        "embedding"])


def test_out_of_range_ids_are_the_runtime_boundarys_to_reject(tmp_path):
    # Pinned so that a change on either side is noticed: Flax yields NaN rows for ids outside
    # the vocabulary, onnxruntime refuses to run. Neither is a result, so callers must reject.
    graph = _spec(tmp_path, EMBEDDING)
    ids = np.array([[0, 11]], np.int64)
    apply, variables = _init(graph, {"ids": ids})
    assert np.isnan(_flax(apply, variables, {"ids": ids})["output"][0, 1]).all()
    model = to_onnx(graph, variables, 21).SerializeToString()
    with pytest.raises(Exception, match="out of"):
        RUNNERS["onnxruntime"](model, {"ids": ids})


def test_reshape_keeps_the_batch_dynamic(tmp_path):
    graph = _spec(tmp_path, """\
version: 1
name: reshape
inputs:
  x: {shape: [4, 6]}
layers:
  - {type: reshape, name: r1, target_shape: [-1, 3]}
  - {type: permute, dims: [2, 1]}
  - {type: reshape, name: r2, target_shape: [24]}
""")
    assert [n.shape for n in graph.nodes] == [(8, 3), (3, 8), (24,)]
    x = np.random.default_rng(0).normal(size=(37, 4, 6)).astype(np.float32)
    apply, variables = _init(graph, {"x": x[:1]})
    model = to_onnx(graph, variables, 21)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 37):
        feeds = {"x": x[:batch]}
        want = _flax(apply, variables, feeds)["output"]
        for runtime in RUNTIMES:
            got = RUNNERS[runtime](model.SerializeToString(), feeds)["output"]
            np.testing.assert_array_equal(got, want, err_msg=f"{runtime} at batch {batch}")


ERRORS = [
    ("[3, 4]", "{type: reshape, target_shape: [5, 2]}",
     "`target_shape` must have the same number of elements as the input: 12 vs 10. "
     "Received: target_shape=[5, 2]"),
    ("[3, 4]", "{type: reshape, target_shape: [-1, 5]}", "12 is not a multiple of 5"),
    ("[null, 4]", "{type: reshape, target_shape: [4, 2]}", "put a -1 where the free length"),
    ("[null, 3]", "{type: reshape, target_shape: [-1, 2]}",
     "for every free length: 3 is not a multiple of 2"),
    ("[3, 4]", "{type: reshape, target_shape: [-1, -1]}", "at most one -1"),
    ("[3, 4]", "{type: permute, dims: [1, 3]}", "a permutation of the per-sample axes 1..2"),
    ("[3, 4]", "{type: concat, axis: 0, inputs: [x, x]}", "axis 0 is the batch"),
    ("[3, 4]", "{type: concat, axis: 3, inputs: [x, x]}", "Received: axis=3"),
    ("[3, 4]", "{type: concat, inputs: [x, x2]}",
     "matching shapes except for the concatenation axis. Received shapes (3, 4), (4, 4)"),
    ("[3, 4]", "{type: add, inputs: [x, x2]}", "(no broadcasting). Received shapes (3, 4), "
     "(4, 4) from 'x', 'x2'"),
    ("[3, 4]", "{type: multiply, inputs: [x]}", "needs at least 2 inputs"),
    ("[3, 4]", "{type: multi_head_attention, num_heads: 2, key_dim: 2, inputs: [x, x, x2]}",
     "takes 1 input (self-attention) or 2"),
    ("[3]", "{type: multi_head_attention, num_heads: 2, key_dim: 2}",
     "needs sequences (time, features) as query"),
]


@pytest.mark.parametrize(("shape", "layer", "message"), ERRORS)
def test_located_shape_errors(tmp_path, shape, layer, message):
    if "inputs:" not in layer:
        layer = layer[:-1] + ", inputs: x}"
    other = "  x2: {shape: [4, 4]}\n" if "x2" in layer else ""
    text = (f"version: 1\nname: bad\ninputs:\n  x: {{shape: {shape}}}\n{other}layers:\n"
            f"  - {layer}\n")
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, text)
    assert message in str(err.value)
    assert f"spec.yaml:{6 + bool(other)}:" in str(err.value)


def test_transformer_example_trains_with_parity(tmp_path):
    result = run_cli("train", str(EXAMPLES / "transformer.yaml"), "--out", str(tmp_path), "-q",
                     "--set", "train.epochs=5")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-5
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"Softmax", "LayerNormalization", "Gelu", "Add"} <= ops
    assert "Dropout" not in ops

"""The export's peephole simplifications (compiler/export/simplify.py): each rewrite runs the
same function in onnxruntime as the graph before it, and the shipped examples export no more
nodes than torch.onnx writes for the same networks (issue 15)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnspec.compiler.export.onnx_graph import to_onnx
from nnspec.compiler.export.simplify import cancel_transposes, simplify, unfuse_gemm
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.train.module import GraphModule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _model(nodes, x_shape, out_shape, initializers=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _simplified(model):
    out = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = simplify(list(out.graph.node), {"y"}, 21)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


def _transpose(src, dst, perm):
    return helper.make_node("Transpose", [src], [dst], name=dst, perm=perm)


def test_inverse_transposes_cancel_directly_and_around_elementwise_chains():
    nodes = [_transpose("x", "a", TO_NCHW), helper.make_node("Relu", ["a"], ["b"], name="b"),
             helper.make_node("Tanh", ["b"], ["c"], name="c"), _transpose("c", "d", TO_NHWC),
             _transpose("d", "e", TO_NCHW), _transpose("e", "f", TO_NHWC),
             helper.make_node("Sigmoid", ["f"], ["y"], name="y")]
    model = _model(nodes, [2, 4, 5, 3], [2, 4, 5, 3])
    simple = _simplified(model)
    assert [n.op_type for n in simple.graph.node] == ["Relu", "Tanh", "Sigmoid"]
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(simple, x), _run(model, x))


@pytest.mark.parametrize("case", ["not_inverse", "read_twice", "binary_between"])
def test_transposes_that_are_not_provably_redundant_stay(case):
    second = [0, 1, 3, 2] if case == "not_inverse" else TO_NHWC
    nodes = [_transpose("x", "a", TO_NCHW), helper.make_node("Relu", ["a"], ["b"], name="b"),
             _transpose("b", "c", second)]
    if case == "read_twice":  # `a` is also read by another node: it must be kept
        nodes.append(helper.make_node("Neg", ["a"], ["n"], name="n"))
        nodes.append(helper.make_node("ReduceSum", ["n"], ["s"], name="s", keepdims=0))
        nodes.append(helper.make_node("Add", ["c", "s"], ["y"], name="y"))
        out = [2, 4, 5, 3]
    elif case == "binary_between":  # Add reads two tensors: not an element-wise chain link
        nodes[1] = helper.make_node("Add", ["a", "a"], ["b"], name="b")
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="y"))
        out = [2, 4, 5, 3]
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="y"))
        out = [2, 3, 5, 4]
    model = _model(nodes, [2, 4, 5, 3], out)
    kept = Counter(n.op_type for n in cancel_transposes(list(model.graph.node), {"y"}))
    assert kept["Transpose"] == 2


def test_an_unread_optional_output_is_not_computed():
    """An LSTM whose full sequence `Y` nobody reads exports only `Y_h`."""
    rng = np.random.default_rng(1)
    w, r = (numpy_helper.from_array(rng.normal(size=s).astype(np.float32) * 0.3, n)
            for s, n in (((1, 16, 3), "W"), ((1, 16, 4), "R")))
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["seq", "last"], name="lstm",
                            hidden_size=4)
    nodes = [lstm, helper.make_node("Squeeze", ["last"], ["y"], name="y")]
    model = _model(nodes, [6, 2, 3], [2, 4], [w, r])
    simple = _simplified(model)
    assert list(simple.graph.node[0].output) == ["", "last"]
    x = rng.normal(size=(6, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(simple, x), _run(model, x))


def test_unfused_gemm_computes_the_same_function():
    rng = np.random.default_rng(2)
    k, b = (numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
            for s, n in (((5, 3), "k"), ((3,), "b")))
    model = _model([helper.make_node("Gemm", ["x", "k", "b"], ["y"], name="fc")], [4, 5], [4, 3],
                   [k, b])
    unfused = unfuse_gemm(model)
    onnx.checker.check_model(unfused, full_check=True)
    assert [n.op_type for n in unfused.graph.node] == ["MatMul", "Add"]
    x = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(unfused, x), _run(model, x), rtol=1e-6, atol=1e-6)


def _export(name):
    _, graph = check_spec(EXAMPLES / name)
    x = {k: np.zeros((2, *(d or 5 for d in spec.shape)), spec.dtype)
         for k, spec in graph.inputs.items()}
    variables = jax.device_get(GraphModule(graph).init(jax.random.key(0), x))
    return Counter(n.op_type for n in to_onnx(graph, variables, 21).graph.node)


def test_the_examples_export_as_few_nodes_as_torch_onnx_writes():
    """torch.onnx writes the CNN with one Transpose (its input permute) and a Gemm per 2-D
    dense layer; the per-layer channels-first wrappers of our lowering must all cancel except
    the one into the first convolution (the one before flatten folds into the dense kernel)."""
    cnn, mlp = _export("cnn.yaml"), _export("mnist_mlp.yaml")
    assert cnn["Transpose"] == 1, cnn
    assert "Identity" not in cnn and "MatMul" not in cnn, cnn
    assert "Identity" not in mlp and "MatMul" not in mlp and mlp["Gemm"] >= 2, mlp


def test_transpose_before_flatten_folds_into_the_dense_kernel(tmp_path):
    """The CNN's channels-last Transpose before Flatten goes: the dense kernel's rows are
    stored channels-first instead, the model computes what the Flax module computes, and
    `init_from: model.onnx` reads the kernel back in its trained order, bit for bit."""
    from nnspec.compiler.export.simplify import ROWS_MARK
    from nnspec.compiler.train.transfer import _read_source

    _, graph = check_spec(EXAMPLES / "cnn.yaml")
    (name, spec), = graph.inputs.items()
    x = np.random.default_rng(0).integers(0, 16, (3, *spec.shape)).astype(spec.dtype)
    variables = jax.device_get(GraphModule(graph).init(jax.random.key(1), {name: x}))
    model = to_onnx(graph, variables, 21)
    marked = [t for t in model.graph.initializer if t.doc_string.startswith(ROWS_MARK)]
    assert len(marked) == 1, [t.name for t in model.graph.initializer]
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    assert flatten.input[0].endswith("MaxPool") or "Transpose" not in flatten.input[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x})
    want = jax.device_get(GraphModule(graph).apply(variables, {name: x}))
    for out, value in zip(session.get_outputs(), got):
        np.testing.assert_allclose(value, want[out.name], rtol=1e-5, atol=1e-6)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    dense = marked[0].name.partition("/")[0]
    assert not np.array_equal(numpy_helper.to_array(marked[0]),
                              variables["params"][dense]["kernel"])  # stored permuted
    back = _read_source(str(path))
    for param in ("kernel", "bias"):
        np.testing.assert_array_equal(back[("params", dense, param)],
                                      variables["params"][dense][param])

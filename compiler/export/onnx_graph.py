"""IR to ONNX: a generic walker calling each node's ONNX rule with the trained variables.

The exported graph is the inference graph by construction: train-only layers are skipped, and
every layer lowers its inference behaviour.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from nnspec.compiler.export.builder import ExportError, OnnxBuilder
from nnspec.compiler.export.simplify import simplify
from nnspec.compiler.graph.ir import Graph

IR_VERSION = 10  # what onnxruntime 1.20+ reads; onnx stamps its own (newer) IR otherwise
BATCH = "batch"
_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int32": TensorProto.INT32,
           "int64": TensorProto.INT64, "uint8": TensorProto.UINT8}


def _dims(name: str, shape: tuple) -> list:
    return [BATCH] + [f"{name}_dim{i + 1}" if d is None else d for i, d in enumerate(shape)]


def to_onnx(graph: Graph, variables: Mapping[str, Any], opset: int,
            metadata: Mapping[str, str] | None = None, doc: str = "",
            argmax: Collection[str] = ()) -> onnx.ModelProto:
    """Lower a graph and its trained variables to a checked ONNX model. Outputs named in
    `argmax` are also exported as `NAME_class`, the index of their largest value (int64)."""
    g = OnnxBuilder(opset, _to_numpy(variables))
    tensors = {name: name for name in graph.inputs}
    for name in graph.inputs:
        g.fresh(name)
    for node in graph.nodes:
        if node.layer.train_only:
            tensors[node.name] = tensors[node.inputs[0]]
            continue
        if opset < node.layer.min_opset:
            raise ExportError(f"layer {node.name!r} ({node.type}) needs opset >= "
                              f"{node.layer.min_opset}; export.opset is {opset}")
        with g.scoped(node.name):
            g.input_shapes = tuple(graph.shape_of(i) for i in node.inputs)
            tensors[node.name] = node.layer.onnx(g, *[tensors[i] for i in node.inputs])
    shapes = {tensors[n.name]: graph.node(n.name).shape for n in graph.nodes}
    nodes = simplify(g.nodes, {tensors[src] for src in graph.outputs.values()}, opset,
                     g.initializers, shapes)
    named: dict[str, str] = {}  # tensor -> the output name it took
    produced = {t for node in nodes for t in node.output}
    outputs = []
    for out, src in graph.outputs.items():
        tensor = named.get(tensors[src], tensors[src])
        if tensors[src] in produced and tensors[src] not in named:
            # The producing node writes the output itself: no Identity node in between.
            _rename(nodes, tensors[src], out)
            named[tensors[src]] = tensor = out
        elif tensor != out:
            nodes.append(helper.make_node("Identity", [tensor], [out], name=out))
        shape = graph.node(src).shape
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, _dims(out, shape)))
        if out in argmax:
            nodes.append(helper.make_node("ArgMax", [out], [f"{out}_class"],
                                          name=f"{out}_class", axis=-1, keepdims=0))
            outputs.append(helper.make_tensor_value_info(f"{out}_class", TensorProto.INT64,
                                                         _dims(out, shape[:-1])))
    inputs = [helper.make_tensor_value_info(name, _DTYPES[spec.dtype], _dims(name, spec.shape))
              for name, spec in graph.inputs.items()]
    proto = helper.make_graph(nodes, graph.name, inputs, outputs, g.initializers)
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="nnspec", producer_version=_version(), doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    return model


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """ONNX's own strict shape inference: every tensor's inferred shape (symbols as strings)."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_param or d.dim_value if d.HasField("dim_value") or
                                d.dim_param else None for d in dims)
    return shapes


def _rename(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


def output_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """The graph outputs' shapes as ONNX infers them (not as the model declares them)."""
    free = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in free.graph.output:
        vi.type.tensor_type.ClearField("shape")
    shapes = inferred_shapes(free)
    return {vi.name: shapes.get(vi.name, ()) for vi in free.graph.output}


def check_shapes(model: onnx.ModelProto, graph: Graph) -> None:
    """Assert that ONNX shape inference agrees with ours on every output."""
    shapes = output_shapes(model)
    for out, src in graph.outputs.items():
        ours, theirs = graph.node(src).shape, shapes.get(out)
        if theirs is not None and tuple(theirs[1:]) != tuple(
                d if d is not None else theirs[1:][i] for i, d in enumerate(ours)):
            raise ExportError(f"output {out!r}: ONNX infers shape {theirs[1:]}, "
                              f"nnspec inferred {ours}")


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def _version() -> str:
    from nnspec import __version__

    return __version__

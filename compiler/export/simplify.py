"""Peephole simplifications of the lowered ONNX graph: the same function in fewer nodes.

Layers lower one at a time, so channels-last convolutions and pools each come wrapped in their
own pair of Transposes (ONNX's Conv and MaxPool are channels-first), and a recurrent layer asks
for outputs it never reads. A runtime's optimizer may clean these up when it loads the model
(onnxruntime does), but a small runtime (tract, onnxruntime-web's minimal builds, a
microcontroller converter) runs what the file says. Each rule here rewrites only what it
proves equal:

- `cancel_transposes`: a Transpose followed by its inverse, directly or through element-wise
  operators that read nothing else (Relu between a Conv and a MaxPool), cancels out.
- `drop_unused_outputs`: an optional output nobody reads (an LSTM's full sequence `Y` when only
  its last state `Y_h` is used) gets the empty name, so the runtime never computes or stores it.
- `fold_flatten_transposes`: the channels-last Transpose before a Flatten whose only readers are
  Gemms with constant weights goes; the weights' rows are permuted to the channels-first order
  instead (one node less: the CNN exports with torch.onnx's single Transpose). The weight's
  `doc_string` records the permutation (ROWS_MARK) and `init_from: model.onnx` undoes it.

Node names and initializers are never renamed, so trained weights still map by name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

# doc_string of a dense kernel whose rows were permuted by fold_flatten_transposes, followed by
# the channels-last per-sample shape it flattened, e.g. "nnspec:rows-channels-first:5,5,64".
ROWS_MARK = "nnspec:rows-channels-first:"

# Operators that act on each element alone: a Transpose commutes with them.
ELEMENTWISE = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round",
    "Selu", "Sigmoid", "Sign", "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})


def consumers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor's reading nodes."""
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            if name:
                readers[name].append(node)
    return readers


def _perm(node: onnx.NodeProto) -> list[int]:
    return next(list(a.ints) for a in node.attribute if a.name == "perm")


def _inverse(first: list[int], second: list[int]) -> bool:
    """Whether Transpose(second) undoes Transpose(first)."""
    return len(first) == len(second) and [first[p] for p in second] == list(range(len(first)))


def _rewire(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def cancel_transposes(nodes: list[onnx.NodeProto], keep: Collection[str]) -> list[onnx.NodeProto]:
    """Remove inverse Transpose pairs, directly adjacent or around a chain of element-wise
    single-input operators whose values nothing else reads. Tensors in `keep` (the graph's
    outputs) are never removed."""
    changed = True
    while changed:
        changed = False
        readers = consumers(nodes)
        producer = {out: node for node in nodes for out in node.output}
        for last in nodes:
            if last.op_type != "Transpose" or last.output[0] in keep:
                continue
            chain, src = [], last.input[0]
            while (src in producer and producer[src].op_type in ELEMENTWISE
                   and len(producer[src].input) == 1 and len(readers[src]) == 1
                   and src not in keep):
                chain.append(producer[src])
                src = producer[src].input[0]
            first = producer.get(src)
            if (first is None or first.op_type != "Transpose" or len(readers[src]) != 1
                    or src in keep or not _inverse(_perm(first), _perm(last))):
                continue
            if chain:  # the element-wise chain now reads the untransposed tensor
                chain[-1].input[0] = first.input[0]
                result = last.input[0]
            else:
                result = first.input[0]
            _rewire(nodes, last.output[0], result)
            nodes = [n for n in nodes if n is not first and n is not last]
            changed = True
            break
    return nodes


def drop_unused_outputs(nodes: list[onnx.NodeProto], keep: Collection[str],
                        opset: int) -> list[onnx.NodeProto]:
    """Give unread optional outputs the empty name (trailing ones are dropped), so the runtime
    skips them. A node keeps at least one output."""
    readers = consumers(nodes)
    for node in nodes:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        names = list(node.output)
        for i in range(len(names)):
            formal = schema.outputs[min(i, len(schema.outputs) - 1)]
            optional = formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional
            if optional and names[i] not in readers and names[i] not in keep:
                names[i] = ""
        while names and not names[-1]:
            names.pop()
        if names and names != list(node.output):
            del node.output[:]
            node.output.extend(names)
    return nodes


def fold_flatten_transposes(nodes: list[onnx.NodeProto], keep: Collection[str],
                            initializers: list[onnx.TensorProto],
                            shapes: dict[str, tuple]) -> list[onnx.NodeProto]:
    """Transpose(channels-last) -> Flatten(axis=1) -> Gemm(s) with constant B becomes
    Flatten -> Gemm(s) with B's rows in channels-first order. `shapes`: per-sample shapes of
    the layers' output tensors (the Transpose's output is a channels-last layer output)."""
    weights = {t.name: t for t in initializers}
    readers = consumers(nodes)
    producer = {out: node for node in nodes for out in node.output}
    for flat in list(nodes):
        if flat.op_type != "Flatten" or _attrs(flat).get("axis", 1) != 1:
            continue
        src = flat.input[0]
        tr = producer.get(src)
        shape = shapes.get(src)
        if (tr is None or tr.op_type != "Transpose" or len(readers[src]) != 1 or src in keep
                or shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape)
                or _perm(tr) != [0, *range(2, len(shape) + 1), 1]):
            continue
        gemms = readers[flat.output[0]]
        if (flat.output[0] in keep or not gemms or any(
                g.op_type != "Gemm" or list(g.input).index(flat.output[0]) != 0
                or g.input[1] == flat.output[0] or _attrs(g).get("transA", 0)
                or _attrs(g).get("transB", 0) or g.input[1] not in weights
                or len(readers[g.input[1]]) != 1 for g in gemms)):
            continue
        for g in gemms:
            w = weights[g.input[1]]
            rows = numpy_helper.to_array(w)
            channels_first = np.moveaxis(rows.reshape(*shape, -1), -2, 0).reshape(rows.shape)
            new = numpy_helper.from_array(channels_first, w.name)
            new.doc_string = ROWS_MARK + ",".join(map(str, shape))
            w.CopyFrom(new)
        flat.input[0] = tr.input[0]
        nodes = [n for n in nodes if n is not tr]
        readers = consumers(nodes)
    return nodes


def channels_last_rows(array: np.ndarray, doc_string: str) -> np.ndarray:
    """A dense kernel read from an ONNX file with its rows back in the trained (channels-last
    flatten) order, undoing fold_flatten_transposes when its mark is on the initializer."""
    if not doc_string.startswith(ROWS_MARK):
        return array
    shape = tuple(int(d) for d in doc_string[len(ROWS_MARK):].split(","))
    first = (shape[-1], *shape[:-1])
    return np.moveaxis(array.reshape(*first, -1), 0, -2).reshape(array.shape)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def simplify(nodes: list[onnx.NodeProto], keep: Collection[str], opset: int,
             initializers: list[onnx.TensorProto] | None = None,
             shapes: dict[str, tuple] | None = None) -> list[onnx.NodeProto]:
    """Every rule above, on a graph whose outputs are `keep` (the flatten rule only when the
    initializers and the layer outputs' shapes are given)."""
    nodes = cancel_transposes(nodes, keep)
    if initializers is not None and shapes is not None:
        nodes = fold_flatten_transposes(nodes, keep, initializers, shapes)
    return drop_unused_outputs(nodes, keep, opset)


def unfuse_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with each plain Gemm (no transposes, alpha = beta = 1) written as
    MatMul then Add: onnxruntime's dynamic quantizer covers MatMul but not Gemm."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = all(attrs.get(k, d) == d for k, d in
                    (("transA", 0), ("transB", 0), ("alpha", 1.0), ("beta", 1.0)))
        if node.op_type != "Gemm" or not plain:
            nodes.append(node)
            continue
        out = node.output[0]
        if len(node.input) > 2 and node.input[2]:
            product = f"{out}/product"
            nodes.append(helper.make_node("MatMul", list(node.input[:2]), [product],
                                          name=node.name))
            nodes.append(helper.make_node("Add", [product, node.input[2]], [out],
                                          name=f"{node.name}/bias"))
        else:
            nodes.append(helper.make_node("MatMul", list(node.input[:2]), [out],
                                          name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model

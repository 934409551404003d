"""A small ONNX graph builder that layers emit through.

It checks every operator and attribute against the ONNX schema of the target opset as it builds,
so a typo or an operator too new for the opset fails at export with a message naming the layer.
Initializers are named `node/param` and read from the trained variables under the same names:
that naming contract is the whole mapping from Flax weights to ONNX.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# doc_string of an initializer whose layout is not the trained array's: steps that turn it back,
# applied in order, e.g. "nnspec:to-flax:transpose=2,3,1,0" or "...:flip=0,1;transpose=2,3,0,1".
TO_FLAX = "nnspec:to-flax:"
# doc_string of an initializer packed from several trained arrays (a recurrent W, R or B).
PACKED = "nnspec:packed"


def flax_layout(array: np.ndarray, doc_string: str) -> np.ndarray:
    """An initializer read from an ONNX file back in the trained layout, by the steps its
    `TO_FLAX` mark records (unchanged without one)."""
    if not doc_string.startswith(TO_FLAX):
        return array
    for step in doc_string[len(TO_FLAX):].split(";"):
        op, _, args = step.partition("=")
        axes = tuple(int(a) for a in args.split(","))
        if op == "transpose":
            array = array.transpose(axes)
        elif op == "flip":
            array = np.flip(array, axes)
        elif op == "reshape":
            array = array.reshape(axes)
        else:
            raise ValueError(f"unknown layout step {step!r} in {doc_string!r}")
    return np.ascontiguousarray(array)


class ExportError(RuntimeError):
    """The model cannot be exported as asked (for example, an opset too old for a layer)."""


class OnnxBuilder:
    """Collects nodes and initializers for one ONNX graph."""

    def __init__(self, opset: int, variables: Mapping[str, Any]):
        self.opset = opset
        self.variables = variables
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.scope = ""
        self.input_shapes: tuple = ()
        """Per-sample shapes of the current layer's inputs, as shape inference found them."""
        self._used: set[str] = set()

    @contextlib.contextmanager
    def scoped(self, scope: str) -> Iterator[None]:
        """Name the nodes and parameters emitted inside after graph node `scope`."""
        outer, self.scope = self.scope, scope
        try:
            yield
        finally:
            self.scope = outer

    def fresh(self, base: str) -> str:
        """A tensor or node name not used before, derived from `base`."""
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def _schema(self, op_type: str) -> onnx.defs.OpSchema:
        try:
            return onnx.defs.get_schema(op_type, self.opset)
        except onnx.defs.SchemaError:
            try:
                since = onnx.defs.get_schema(op_type).since_version
            except onnx.defs.SchemaError:
                raise ExportError(f"layer {self.scope!r}: unknown ONNX operator "
                                  f"{op_type!r}") from None
            raise ExportError(f"layer {self.scope!r} needs ONNX operator {op_type}, which "
                              f"opset {self.opset} lacks; use export.opset >= {since}") from None

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Emit one operator; returns its output name (a tuple when `outputs` > 1)."""
        schema = self._schema(op_type)
        unknown = set(attrs) - set(schema.attributes)
        if unknown:
            raise ExportError(f"layer {self.scope!r}: ONNX {op_type}-{schema.since_version} "
                              f"has no attribute(s) {sorted(unknown)}; valid: "
                              f"{sorted(schema.attributes)}")
        names = [self.fresh(f"{self.scope}/{op_type}" + (f":{i}" if i else ""))
                 for i in range(outputs)]
        # Node and tensor names live in separate ONNX namespaces; a node takes its output's name.
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def param(self, pname: str, value: np.ndarray | None = None,
              collection: str = "params", to_flax: str = "") -> str:
        """An initializer `scope/pname`, from the trained variables unless `value` is given.

        A `value` in another layout than the trained array's says how to get that back in
        `to_flax` (see `flax_layout`), so `init_from: model.onnx` can read it; `PACKED` marks
        an initializer built from several trained arrays, which it cannot."""
        if value is None:
            try:
                value = self.variables[collection][self.scope][pname]
            except KeyError:
                raise ExportError(f"layer {self.scope!r}: no trained {collection} "
                                  f"{pname!r}") from None
        name = self._initializer(f"{self.scope}/{pname}", np.asarray(value, np.float32))
        if to_flax:
            self.initializers[-1].doc_string = (to_flax if to_flax == PACKED
                                                else TO_FLAX + to_flax)
        return name

    def const(self, value: Any, dtype: Any = np.float32, name: str = "const") -> str:
        """A constant initializer (shapes, axes, scales)."""
        return self._initializer(f"{self.scope}/{name}", np.asarray(value, dtype))

    def _initializer(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        # ascontiguousarray turns a 0-d array into shape (1,); keep true scalars scalar.
        array = np.ascontiguousarray(array).reshape(array.shape)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

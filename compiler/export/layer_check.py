"""Run a layer's parity examples: the same input through Flax and through the exported ONNX
graph in onnxruntime, with the shapes of both checked against the layer's own inference.

The registry-driven tests call this for every example of every layer; a new layer file gets
its tests with no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnspec.compiler.graph.ir import Graph, build_graph
from nnspec.compiler.layers.base import Example, Layer, Shape
from nnspec.compiler.train.module import GraphModule
from nnspec.spec.validate import LoadedSpec, validate_document
from nnspec.spec.yamlio import Document, SourceMap


def example_graph(layer: type[Layer], example: Example) -> Graph:
    """A graph of one layer fed by one input per example input shape."""
    names = [f"x{i}" for i in range(len(example.inputs))]
    data = {
        "version": 1, "name": f"{layer.type_name}_example",
        "inputs": {n: {"shape": list(s), "dtype": example.dtype}
                   for n, s in zip(names, example.inputs)},
        "layers": [{"type": layer.type_name, "name": "layer", "inputs": names,
                    **example.params}],
    }
    doc = Document(data, SourceMap(f"<{layer.type_name} example>"))
    return build_graph(LoadedSpec(validate_document(doc), doc))


def sample_inputs(graph: Graph, batch: int, seed: int = 0, free: int = 5, high: int = 16
                  ) -> dict[str, np.ndarray]:
    """Random inputs for a graph: normal floats, integers in [0, high)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in graph.inputs.items():
        shape = (batch, *(free if d is None else d for d in spec.shape))
        if spec.dtype.startswith(("int", "uint")):
            out[name] = rng.integers(0, high, size=shape).astype(spec.dtype)
        else:
            out[name] = rng.normal(size=shape).astype(spec.dtype)
    return out


@dataclass
class ExampleReport:
    """What one example showed: shapes by each route, and each runtime's outputs."""

    inferred: Shape
    flax_shape: tuple[int, ...]
    onnx_shape: tuple[Any, ...]
    expected: np.ndarray
    outputs: dict[str, np.ndarray]
    variables: Any

    def max_abs_diff(self, runtime: str = "onnxruntime") -> float:
        got = self.outputs[runtime]
        if not got.size:
            return 0.0
        return float(np.max(np.abs(self.expected.astype(np.float64) - got)))


def run_example(layer: type[Layer], example: Example, batch: int = 3, free: int = 5,
                opset: int = 21, runtimes: tuple[str, ...] = ("onnxruntime",), seed: int = 0
                ) -> ExampleReport:
    """Initialise the layer and run it in Flax and, exported, in each named runtime on one
    random batch (`free` is the length given to free dimensions such as time)."""
    from nnspec.compiler.export.onnx_graph import output_shapes, to_onnx
    from nnspec.runtime.runners import RUNNERS

    graph = example_graph(layer, example)
    module = GraphModule(graph)
    inputs = sample_inputs(graph, batch, seed=seed, free=free,
                           high=example.extra.get("int_high", 16))
    variables = jax.jit(module.init)(jax.random.key(seed),
                                     {k: jnp.asarray(v) for k, v in inputs.items()})
    spec_out = jax.eval_shape(lambda v, x: module.apply(v, x), variables, inputs)["output"]
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(jax.jit(module.apply)(variables, inputs)["output"])
    model = to_onnx(graph, jax.device_get(variables), opset)
    onnx_shape = output_shapes(model)["output"]
    data = model.SerializeToString()
    outputs = {name: np.asarray(RUNNERS[name](data, inputs)["output"]) for name in runtimes}
    return ExampleReport(
        inferred=graph.output_node("output").shape, flax_shape=tuple(spec_out.shape),
        onnx_shape=tuple(onnx_shape), expected=expected, outputs=outputs, variables=variables)

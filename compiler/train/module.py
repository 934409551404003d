"""IR to Flax: one generic module that walks the graph and calls each node's Flax rule."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from nnspec.compiler.graph.ir import Graph


class GraphModule(nn.Module):
    """The whole model as a Flax module. Each layer's submodule is named after its graph node,
    so the trained parameters are `params[node][param]`, the names the ONNX export reads."""

    graph: Graph

    @nn.compact
    def __call__(self, inputs: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return self.forward(inputs, train)[0]

    def forward(self, inputs: dict[str, Any], train: bool) -> tuple[dict, dict]:
        """Outputs by name, and for outputs produced by a softmax or a sigmoid the logits that
        feed it (so a cross-entropy loss can be computed stably from them)."""
        values = dict(inputs)
        for node in self.graph.nodes:
            args = [values[i] for i in node.inputs]
            values[node.name] = node.layer.flax(*args, name=node.name, train=train)
        outputs = {out: values[src] for out, src in self.graph.outputs.items()}
        logits = {}
        for out, src in self.graph.outputs.items():
            node = self.graph.node(src)
            last_axis = node.type == "softmax" and node.layer.axis in (-1, len(node.shape))
            if last_axis or node.type == "sigmoid":
                logits[out] = values[node.inputs[0]]
        return outputs, logits


class TrainingModule(GraphModule):
    """The same module, returning logits beside the outputs (what the training loss needs)."""

    @nn.compact
    def __call__(self, inputs: dict[str, Any], train: bool = False) -> tuple[dict, dict]:
        return self.forward(inputs, train)

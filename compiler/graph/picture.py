"""`nnspec graph`: the network as a Graphviz picture."""

from __future__ import annotations

from nnspec.compiler.graph.ir import Graph
from nnspec.compiler.layers.base import describe


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    """Graphviz DOT source: inputs, layers (name, type, output shape) and outputs."""
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", '
             'fontname="Helvetica"];']
    for name, spec in graph.inputs.items():
        label = f"{name}\\ninput {describe(tuple(spec.shape))} {spec.dtype}"
        lines.append(f'  {_quote(name)} [label="{label}", fillcolor="#dbeafe"];')
    for node in graph.nodes:
        style = ', style="rounded,dashed"' if node.layer.train_only else ""
        label = f"{node.name}\\n{node.type} {describe(node.shape)}"
        lines.append(f'  {_quote(node.name)} [label="{label}"{style}];')
        lines += [f"  {_quote(src)} -> {_quote(node.name)};" for src in node.inputs]
    for out, src in graph.outputs.items():
        lines.append(f'  {_quote("output:" + out)} [label="{out}\\noutput", '
                     'fillcolor="#dcfce7"];')
        lines.append(f"  {_quote(src)} -> {_quote('output:' + out)};")
    lines.append("}")
    return "\n".join(lines) + "\n"

"""`nnspec summary`: a table like Keras' model summary, from shape inference and an abstract
initialisation (`jax.eval_shape`: nothing is compiled or allocated)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nnspec.compiler.graph.ir import Graph


@dataclass(frozen=True)
class Row:
    """One node of the summary."""

    name: str
    type: str
    inputs: tuple[str, ...]
    shape: tuple
    params: int
    non_trainable: int
    macs: int | None


def _sizes(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_sizes(v) for v in tree.values())
    return int(math.prod(tree.shape))


def _shape(graph: Graph, name: str) -> tuple:
    return tuple(graph.inputs[name].shape) if name in graph.inputs else graph.node(name).shape


FREE_LENGTH = 1024


def summarize(graph: Graph) -> list[Row]:
    """Rows for every node: output shape, parameter counts and estimated multiply-adds."""
    import jax
    import jax.numpy as jnp

    from nnspec.compiler.train.module import GraphModule

    # A free length stands for a long one: windows and strides (pools, convolutions) need room,
    # and the initialisation is abstract (jax.eval_shape), so the length costs nothing. Length
    # 1 made `nnspec summary` fail on a valid pool over a free length (tests/test_archgen.py).
    dummy = {name: jax.ShapeDtypeStruct((1, *(FREE_LENGTH if d is None else d
                                              for d in spec.shape)), jnp.dtype(spec.dtype))
             for name, spec in graph.inputs.items()}
    shapes = jax.eval_shape(GraphModule(graph).init, jax.random.key(0), dummy)
    params = shapes.get("params", {})
    others = {k: v for k, v in shapes.items() if k != "params"}
    rows = []
    for node in graph.nodes:
        own = params.get(node.name, {})
        frozen = sum(_sizes(c.get(node.name, {})) for c in others.values())
        variables = {**{k: v for c in others.values() for k, v in c.get(node.name, {}).items()},
                     **own}
        macs = node.layer.macs(tuple(_shape(graph, i) for i in node.inputs), node.shape,
                               variables)
        rows.append(Row(node.name, node.type, node.inputs, node.shape, _sizes(own), frozen,
                        None if macs is None else int(macs)))
    return rows


def render(graph: Graph, rows: list[Row]) -> Any:
    """A rich table with totals."""
    from rich.table import Table

    from nnspec.compiler.layers.base import describe

    table = Table(title=f"{graph.name}", show_lines=False)
    for column, justify in (("layer", "left"), ("type", "left"), ("input", "left"),
                            ("output shape", "left"), ("params", "right"),
                            ("multiply-adds", "right")):
        table.add_column(column, justify=justify)
    for name, spec in graph.inputs.items():
        table.add_row(name, "input", "", describe(tuple(spec.shape)), "0", "")
    for r in rows:
        table.add_row(r.name, r.type, ", ".join(r.inputs), describe(r.shape),
                      f"{r.params + r.non_trainable:,}", "-" if r.macs is None else f"{r.macs:,}")
    total = sum(r.params + r.non_trainable for r in rows)
    trainable = sum(r.params for r in rows)
    macs = sum(r.macs or 0 for r in rows)
    table.caption = (f"total params {total:,} (trainable {trainable:,}, non-trainable "
                     f"{total - trainable:,}); multiply-adds per sample {macs:,}; "
                     f"float32 size {total * 4 / 1024:,.1f} KiB")
    return table

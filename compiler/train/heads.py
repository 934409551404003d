"""The heads of a training run: each output's loss, loss weight and metrics, and the checks
that its targets fit it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnspec.compiler.graph.ir import Graph
from nnspec.compiler.train.losses import CLASSIFICATION
from nnspec.spec.errors import DataError, Problem, SpecError
from nnspec.spec.schema import LossSpec
from nnspec.spec.validate import LoadedSpec


@dataclass(frozen=True)
class Head:
    """One trained output: its loss, loss weight and metrics."""

    output: str
    loss: LossSpec
    weight: float
    metrics: tuple[str, ...]


def resolve_heads(loaded: LoadedSpec, graph: Graph) -> list[Head]:
    """The loss and metrics of every output: its own, else the `train` section's."""
    spec = loaded.spec
    heads, problems = [], []
    for out in graph.outputs:
        own = (spec.outputs or {}).get(out)
        loss = own.loss if own and own.loss else spec.train.loss
        if loss is None:
            where = ("outputs", out) if own else ("train",)
            problems.append(Problem(loaded.doc.source.locate(where, key=True),
                                    f"output {out!r} has no loss: set train.loss, or "
                                    f"outputs.{out}.loss"))
            continue
        metrics = own.metrics if own and own.metrics is not None else spec.train.metrics
        heads.append(Head(out, loss, own.loss_weight if own else 1.0, tuple(metrics)))
    if problems:
        raise SpecError(problems)
    return heads


def check_targets(graph: Graph, head: Head, y: np.ndarray) -> None:
    shape = graph.output_node(head.output).shape
    name, out = head.loss.name, head.output
    if name in CLASSIFICATION or (name in ("mse", "mae", "huber") and y.ndim == 1
                                  and np.issubdtype(y.dtype, np.integer) and shape[-1] > 1):
        if name == "categorical_crossentropy" and y.shape[1:] == shape:
            return  # one-hot targets
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"output {out!r}: loss {name!r} needs integer class labels, one "
                            f"per sample; the targets have shape {y.shape[1:]} and dtype "
                            f"{y.dtype}")
        if y.shape[1:] != tuple(shape[:-1]):
            raise DataError(f"output {out!r} has shape {tuple(shape)} but the labels have shape "
                            f"{y.shape[1:]} per sample; a classifier's output should be "
                            f"(classes,) (add a flatten or a global pooling layer before it?)")
        if len(y) and (y.min() < 0 or y.max() >= shape[-1]):
            raise DataError(f"class labels range over [{y.min()}, {y.max()}] but output {out!r} "
                            f"has {shape[-1]} classes (shape {shape})")
        weights = head.loss.class_weights
        if weights is not None and len(weights) != shape[-1]:
            raise DataError(f"output {out!r}: class_weights has {len(weights)} entries for "
                            f"{shape[-1]} classes")
    elif int(np.prod(y.shape[1:])) != int(np.prod(shape)):
        raise DataError(f"loss {name!r} compares output {out!r} of shape {shape} with targets "
                        f"of shape {y.shape[1:]}")

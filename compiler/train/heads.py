"""The heads of a training run: each output's loss, loss weight and metrics, the form its
loss takes (from logits, on probabilities, on values), and the checks that its targets fit it.

Nothing here imports JAX: `nnspec validate` and `summary` say which form each loss takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnspec.compiler.graph.ir import Graph
from nnspec.spec.errors import DataError, Problem, SpecError
from nnspec.spec.schema import LossSpec
from nnspec.spec.validate import LoadedSpec

CLASSIFICATION = {"categorical_crossentropy", "sparse_categorical_crossentropy"}
CROSS_ENTROPY = CLASSIFICATION | {"binary_crossentropy"}

SOFTMAX_LOGITS = "softmax_logits"
"""Cross-entropy from the logits that feed the output's softmax (over the last axis)."""
SIGMOID_LOGITS = "sigmoid_logits"
"""Binary cross-entropy from the logits that feed the output's sigmoid."""
LOGITS = "logits"
"""The output has no activation known to give values in [0, 1]: it is the logits."""
PROBABILITIES = "probabilities"
"""The output lies in [0, 1] by construction, but not straight from a softmax/sigmoid:
cross-entropy on the probabilities, clipped to [1e-7, 1 - 1e-7] (Keras' form)."""
VALUES = "values"
"""A regression loss (mse, mae, huber) on the output's values."""

# Layers whose output lies in [0, 1] whatever their input, by the family of their values.
_UNIT = {"softmax": "softmax", "sigmoid": "sigmoid", "hard_sigmoid": "sigmoid"}
# Layers that only move, pick or average values: in [0, 1] when all their inputs are. (Not
# dropout: in training it scales the kept values up by 1 / (1 - rate).)
_KEEPS_RANGE = {"reshape", "flatten", "permute", "concat", "multiply", "max_pool1d",
                "max_pool2d", "avg_pool1d", "avg_pool2d", "global_average_pool",
                "global_max_pool"}
_NAMES = {"categorical_crossentropy": "categorical cross-entropy",
          "sparse_categorical_crossentropy": "sparse categorical cross-entropy",
          "binary_crossentropy": "binary cross-entropy", "mse": "mean squared error",
          "mae": "mean absolute error", "huber": "Huber loss"}


@dataclass(frozen=True)
class Head:
    """One trained output: its loss, loss weight, metrics and the form of its loss."""

    output: str
    loss: LossSpec
    weight: float
    metrics: tuple[str, ...]
    form: str = ""
    """One of SOFTMAX_LOGITS, SIGMOID_LOGITS, LOGITS, PROBABILITIES, VALUES ('' = work it
    out from the graph: `Trainer` does)."""


def _unit_family(graph: Graph, name: str) -> str | None:
    """'softmax' or 'sigmoid' when the values of `name` lie in [0, 1] by construction (from
    which kind of layer), 'mixed' for both, else None (graph inputs included: unknown)."""
    if name in graph.inputs:
        return None
    node = graph.node(name)
    if node.type in _UNIT:
        return _UNIT[node.type]
    if node.type in _KEEPS_RANGE:
        found = {_unit_family(graph, i) for i in node.inputs}
        if None in found:
            return None
        return found.pop() if len(found) == 1 else "mixed"
    return None


def _last_axis_softmax(node: object) -> bool:
    return node.type == "softmax" and node.layer.axis in (-1, len(node.shape))


def loss_form(graph: Graph, output: str, loss: str) -> str:
    """The form the loss `loss` takes on graph output `output` (the one rule training and
    `validate`/`summary` share). Raises ValueError, saying why, for a cross-entropy that
    cannot mean anything on that output.

    Cross-entropy on an output made by a softmax over the last axis (categorical) or by a
    sigmoid (binary) is computed from the logits that feed it; on an output with no activation
    known to give [0, 1], the output is the logits (as PyTorch's CrossEntropyLoss and optax);
    on an output otherwise known to lie in [0, 1] (hard_sigmoid, a softmax over another axis,
    a reshape or pooling of probabilities) on the probabilities, clipped.
    """
    if loss not in CROSS_ENTROPY:
        return VALUES
    node = graph.output_node(output)
    family = _unit_family(graph, node.name)
    units = node.shape[-1] if node.shape else 1
    what = _NAMES[loss]
    if loss in CLASSIFICATION:
        if units == 1:
            raise ValueError(f"{what} over a single unit is always 0: output {output!r} has "
                             f"shape {tuple(node.shape)}. Give it one unit per class, or use "
                             "binary_crossentropy for a yes/no output")
        if _last_axis_softmax(node):
            return SOFTMAX_LOGITS
        if family == "sigmoid":
            maker = node.type if node.type in _UNIT else "sigmoid"
            raise ValueError(f"{what} needs scores over competing classes, but output "
                             f"{output!r} comes from a {maker} whose units are independent yes/no "
                             "probabilities. End with a "
                             "softmax (or no activation: the output is then read as logits), "
                             "or use binary_crossentropy for independent labels")
        return LOGITS if family is None else PROBABILITIES
    if _last_axis_softmax(node):
        raise ValueError(f"{what} needs independent yes/no probabilities, but output "
                         f"{output!r} comes from a softmax over its last axis ({units} "
                         f"unit{'s' if units != 1 else ''}), whose values "
                         + ("are always 1" if units == 1 else "sum to 1")
                         + ". End with a sigmoid (or no activation: the output is then read "
                         "as logits), or use categorical_crossentropy for one class of many")
    if node.type == "sigmoid":
        return SIGMOID_LOGITS
    return LOGITS if family is None else PROBABILITIES


def probabilities(values: np.ndarray, loss: str, form: str) -> np.ndarray:
    """What an output means as probabilities (numpy, for exported models' outputs): softmax
    (sigmoid for binary cross-entropy) of an output that is the logits; others unchanged."""
    if form != LOGITS:
        return values
    v = np.asarray(values, np.float64)
    if loss == "binary_crossentropy":
        return 1.0 / (1.0 + np.exp(-v))
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def describe_form(loss: str, form: str) -> str:
    """What `validate` and `summary` print: e.g. 'sparse categorical cross-entropy from
    logits (the softmax's input)'."""
    what = _NAMES.get(loss, loss)
    return what + {
        SOFTMAX_LOGITS: " from logits (the softmax's input)",
        SIGMOID_LOGITS: " from logits (the sigmoid's input)",
        LOGITS: " from logits (the output itself: no softmax or sigmoid ends it)",
        PROBABILITIES: " on probabilities (the output lies in [0, 1]; clipped to 1e-7)",
        VALUES: " on the output's values",
    }[form]


def _loss_of(loaded: LoadedSpec, out: str) -> tuple[LossSpec | None, tuple]:
    spec = loaded.spec
    own = (spec.outputs or {}).get(out)
    if own and own.loss:
        return own.loss, ("outputs", out, "loss")
    loss = spec.train.loss if spec.train else None
    return loss, ("train", "loss")


def loss_forms(loaded: LoadedSpec, graph: Graph) -> dict[str, tuple[str, str]]:
    """(loss name, form) of every output that has a loss; a located SpecError for any loss
    that cannot apply to its output."""
    forms, problems = {}, []
    for out in graph.outputs:
        loss, where = _loss_of(loaded, out)
        if loss is None:
            continue
        try:
            forms[out] = (loss.name, loss_form(graph, out, loss.name))
        except ValueError as err:
            problems.append(Problem(loaded.doc.source.locate(where), f"outputs.{out}: {err}"))
        problems += _metric_problems(loaded, graph, out, loss.name)
    if problems:
        raise SpecError(problems)
    return forms


BINARY_ONLY = ("auc",)
"""Metrics defined for one binary output only (no multi-class average is defined for them)."""


def _metric_problems(loaded: LoadedSpec, graph: Graph, out: str, loss: str) -> list[Problem]:
    """A binary-only metric on an output of more than two classes fails after training
    otherwise: refuse it at validation, where the metric is named."""
    spec = loaded.spec
    own = (spec.outputs or {}).get(out)
    metrics, where = ((own.metrics, ("outputs", out, "metrics")) if own and own.metrics is not None
                      else (spec.train.metrics if spec.train else [], ("train", "metrics")))
    units = graph.output_node(out).shape[-1]
    binary = units in (1, 2) and not (loss == "binary_crossentropy" and units == 2)
    return [Problem(loaded.doc.source.locate((*where, i)),
                    f"metric {m!r} needs a binary output (one sigmoid unit or two softmax "
                    f"classes); output {out!r} has {units} units"
                    + (" of independent labels" if loss == "binary_crossentropy" else ""))
            for i, m in enumerate(metrics) if m in BINARY_ONLY and not binary]


def resolve_heads(loaded: LoadedSpec, graph: Graph) -> list[Head]:
    """The loss and metrics of every output: its own, else the `train` section's."""
    spec = loaded.spec
    heads, problems = [], []
    forms = loss_forms(loaded, graph)
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
        heads.append(Head(out, loss, own.loss_weight if own else 1.0, tuple(metrics),
                          forms[out][1]))
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
    elif None in shape:  # a free length: the targets' own, with the known sizes equal
        if len(y.shape[1:]) != len(shape) or any(
                d is not None and d != t for d, t in zip(shape, y.shape[1:])):
            raise DataError(f"loss {name!r} compares output {out!r} of shape {shape} (None: a "
                            f"free length) with targets of shape {y.shape[1:]}")
    elif int(np.prod(y.shape[1:])) != int(np.prod(shape)):
        raise DataError(f"loss {name!r} compares output {out!r} of shape {shape} with targets "
                        f"of shape {y.shape[1:]}")

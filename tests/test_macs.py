"""`nnspec summary`'s multiply-adds: every layer of the registry with weights or real compute
reports them, and each count matches a formula written here from the layer's hyperparameters
(not from its weights), on every parity example with known lengths."""

from __future__ import annotations

import math

import pytest
from conftest import run_cli

from nnspec.compiler.export.layer_check import example_graph
from nnspec.compiler.graph.summary import summarize
from nnspec.compiler.layers.base import discover


def _ints(value, n):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def _dense(p, ins, out):
    return math.prod(ins[0][:-1]) * ins[0][-1] * p["units"]


def _conv(p, ins, out):
    spatial = len(ins[0]) - 1
    window = math.prod(_ints(p["kernel_size"], spatial))
    return math.prod(out[:-1]) * window * ins[0][-1] // p.get("groups", 1) * p["filters"]


def _conv_transpose(p, ins, out):
    window = math.prod(_ints(p["kernel_size"], 2))
    return math.prod(ins[0][:-1]) * window * ins[0][-1] * p["filters"]


def _recurrent(gates):
    def count(p, ins, out):
        steps, features, units = ins[0][0], ins[0][1], p["units"]
        per_step = gates * (features * units + units * units)  # input and recurrent matmuls
        return (2 if p.get("bidirectional") else 1) * steps * per_step
    return count


def _attention(p, ins, out):
    (tq, dq), (tk, dkv) = ins[0], ins[-1]
    h, dk = p["num_heads"], p["key_dim"]
    dv = p.get("value_dim") or dk
    q, k, v = tq * dq * h * dk, tk * dkv * h * dk, tk * dkv * h * dv
    scores, mix, proj = h * tq * tk * dk, h * tq * tk * dv, tq * h * dv * dq
    return q + k + v + scores + mix + proj


def _per_value(p, ins, out):
    return math.prod(out)


FORMULAS = {
    "dense": _dense, "conv1d": _conv, "conv2d": _conv, "conv2d_transpose": _conv_transpose,
    "lstm": _recurrent(4), "gru": _recurrent(3), "simple_rnn": _recurrent(1),
    "multi_head_attention": _attention, "embedding": lambda p, ins, out: 0,
    "batch_norm": _per_value, "layer_norm": _per_value, "group_norm": _per_value,
    "normalize": _per_value,
}
CASES = [(name, i) for name, cls in sorted(discover().items())
         for i in range(len(cls.examples))]


def _known(shapes):
    return all(d is not None for s in shapes for d in s)


@pytest.mark.parametrize(("name", "index"), CASES)
def test_macs_match_the_formula(name, index):
    cls = discover()[name]
    example = cls.examples[index]
    graph = example_graph(cls, example)
    row = next(r for r in summarize(graph) if r.name == "layer")
    node = graph.node("layer")
    known = _known(example.inputs) and _known([node.shape])
    has_weights = row.params + row.non_trainable > 0
    if name in FORMULAS:
        # A lookup costs nothing at any length; other counts need every length.
        expected = (FORMULAS[name](example.params, example.inputs, node.shape)
                    if known or name == "embedding" else None)
        assert row.macs == expected, (row.macs, expected)
    else:
        # Not in the table: it must be a layer without weights or matrix products.
        assert not has_weights, f"{name} has weights but no formula in FORMULAS"
        assert row.macs is None


def test_every_layer_with_weights_is_in_the_table():
    """A new layer with weights must report multiply-adds (and get a formula here)."""
    missing = []
    for name, cls in discover().items():
        for example in cls.examples:
            graph = example_graph(cls, example)
            row = next(r for r in summarize(graph) if r.name == "layer")
            if row.params + row.non_trainable and name not in FORMULAS:
                missing.append(name)
            if name in FORMULAS and _known(example.inputs) and row.macs is None:
                missing.append(name)
    assert not missing, sorted(set(missing))


def test_summary_of_the_lstm_example_counts_the_lstm():
    result = run_cli("summary", "examples/lstm.yaml")
    assert result.returncode == 0, result.stderr
    lstm = 8 * 4 * 64 * (8 + 64)  # 8 steps, 4 gates, 64 units over 8 features + the state
    assert f"{lstm:,}" in result.stdout
    assert f"multiply-adds per sample {lstm + 640:,}" in " ".join(result.stdout.split())

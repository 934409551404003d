"""Reusable blocks: expansion, naming, parameters, `$input`, repeat, and located errors."""

from __future__ import annotations

import pytest

from nnspec.compiler.graph.ir import check_spec
from nnspec.spec.errors import SpecError

SPEC = """\
version: 1
name: blocks
inputs:
  x: {shape: [8]}
blocks:
  mlp:
    params: {units: 8, rate: 0.1}
    layers:
      - {type: dense, name: a, units: $units, activation: relu, inputs: [$input]}
      - {type: dropout, rate: $rate}
      - {type: dense, name: b, units: 8}
layers:
  - {type: dense, units: 8}
  - {block: mlp, repeat: 2}
  - {block: mlp, name: last, units: 4}
  - {type: dense, units: 3}
"""


def _graph(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return check_spec(path)[1]


def test_expansion_names_and_wiring(tmp_path):
    graph = _graph(tmp_path, SPEC)
    nodes = {n.name: n for n in graph.nodes}
    assert [n.name for n in graph.nodes if n.type == "dense"] == [
        "dense_1", "mlp_1_1_a", "mlp_1_1_b", "mlp_1_2_a", "mlp_1_2_b", "last_a", "last_b",
        "dense_2"]
    # `$input` is the block's input: the previous layer, or the previous repetition's output.
    assert nodes["mlp_1_1_a"].inputs == ("dense_1",)
    assert nodes["mlp_1_2_a"].inputs == ("mlp_1_1_b",)
    assert nodes["mlp_1_1_b"].inputs == ("mlp_1_1_dropout_2",)
    assert nodes["mlp_1_1_dropout_2"].layer.rate == 0.1
    assert nodes["last_a"].shape == (4,)  # the argument overrides the default
    assert nodes["mlp_1_1_a"].shape == (8,)
    assert nodes["dense_2"].inputs == ("last_b",)


@pytest.mark.parametrize(("change", "where", "message"), [
    (("{block: mlp, name: last, units: 4}", "{block: mpl, name: last, units: 4}"), "mpl",
     "unknown block 'mpl'; did you mean 'mlp'?"),
    (("{block: mlp, name: last, units: 4}", "{block: mlp, name: last, unit: 4}"), "unit:",
     "block 'mlp' has no parameter 'unit'; did you mean 'units'?"),
    (("units: $units, activation", "units: $unit, activation"), "$unit",
     "'$unit' names no parameter of this block; did you mean 'units'?"),
    (("{block: mlp, repeat: 2}", "{block: mlp, repeat: 0}"), "0}",
     "`repeat` must be a positive integer. Received: repeat=0"),
    (("{block: mlp, name: last, units: 4}", "{block: mlp, name: last, units: -4}"), "-4",
     "Input should be greater than 0"),
])
def test_errors_point_at_the_use_or_the_template(tmp_path, change, where, message):
    text = SPEC.replace(*change)
    with pytest.raises(SpecError) as err:
        _graph(tmp_path, text)
    first = err.value.problems[0]
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if where in ln)
    assert (first.location.line, first.location.col) == (
        line, text.splitlines()[line - 1].index(where) + 1), str(err.value)
    assert message in first.message


def test_required_parameter(tmp_path):
    text = SPEC.replace("params: {units: 8, rate: 0.1}", "params: {units: null, rate: 0.1}")
    with pytest.raises(SpecError, match="block 'mlp' needs parameter 'units'"):
        _graph(tmp_path, text)


def test_self_recursive_block_fails_cleanly(tmp_path):
    text = SPEC.replace("      - {type: dropout, rate: $rate}", "      - {block: mlp}")
    with pytest.raises(SpecError, match="blocks nest deeper than"):
        _graph(tmp_path, text)

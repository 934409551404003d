"""The tools around the spec: summary, JSON Schema, graph picture."""

from __future__ import annotations

import json
import math
import shutil

import jax
import jsonschema
import pytest
import yaml
from conftest import EXAMPLES, ROOT

from nnspec.compiler.export.layer_check import sample_inputs
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.graph.picture import to_dot
from nnspec.compiler.graph.schema import spec_schema
from nnspec.compiler.graph.summary import summarize
from nnspec.compiler.train.module import GraphModule
from nnspec.main import main

SPECS = sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_summary_counts_the_parameters_flax_creates(path):
    _, graph = check_spec(path)
    rows = summarize(graph)
    variables = GraphModule(graph).init(jax.random.key(0), sample_inputs(graph, 2))
    real = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
    assert sum(r.params + r.non_trainable for r in rows) == real
    assert [r.name for r in rows] == [n.name for n in graph.nodes]


def test_summary_of_quickstart(capsys):
    assert main(["summary", str(EXAMPLES / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert "total params 17,226" in out  # 64*128+128 + 128*64+64 + 64*10+10
    assert "8,192" in out  # fc1's multiply-adds


@pytest.fixture(scope="module")
def schema():
    return spec_schema()


def test_schema_is_valid_draft7(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "$defs" not in json.dumps(schema)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_examples_validate_against_the_schema_and_carry_the_modeline(schema, path):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema,
                        cls=jsonschema.Draft7Validator)
    assert path.read_text().startswith(
        "# yaml-language-server: $schema=../docs/nnspec.schema.json\n")


def test_schema_rejects_what_validate_rejects(schema):
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    spec["layers"][2]["unit"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema, cls=jsonschema.Draft7Validator)


def test_shipped_schema_is_current(schema):
    shipped = json.loads((ROOT / "docs" / "nnspec.schema.json").read_text())
    assert shipped == schema, "regenerate with: nnspec schema --out docs/nnspec.schema.json"


def test_graph_dot_has_every_node_and_edge():
    _, graph = check_spec(EXAMPLES / "quickstart.yaml")
    dot = to_dot(graph)
    for node in graph.nodes:
        assert f'"{node.name}" [label=' in dot
        for src in node.inputs:
            assert f'"{src}" -> "{node.name}";' in dot
    assert '"probabilities" -> "output:digit";' in dot


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz `dot` is not on PATH (.ci/run installs the Debian package)")
def test_graph_svg(tmp_path):
    assert main(["graph", str(EXAMPLES / "quickstart.yaml"), "--out",
                 str(tmp_path / "g.svg")]) == 0
    assert (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_graph_without_graphviz_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["graph", str(EXAMPLES / "quickstart.yaml"), "--out",
                 str(tmp_path / "g.png")]) == 2
    assert "needs Graphviz" in capsys.readouterr().err


def test_schema_accepts_what_validate_accepts(schema, tmp_path):
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    spec["train"]["optimizer"]["schedule"] = "cosine"
    spec["export"]["quantize"] = "dynamic"
    spec["layers"][2]["trainable"] = False
    spec["blocks"] = {"mlp": {"params": {"units": 8},
                              "layers": [{"type": "dense", "units": "$units"}]}}
    spec["layers"].insert(2, {"block": "mlp", "units": 16})
    jsonschema.validate(spec, schema, cls=jsonschema.Draft7Validator)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    check_spec(path)

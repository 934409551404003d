"""Property-based tests: random valid specs infer the shapes Flax produces; random mutations of
valid specs get a located error or pass, never a crash."""

from __future__ import annotations

import os
import re
import string

import jax
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.layers.base import discover
from nnspec.compiler.train.module import GraphModule
from nnspec.main import main

ACTIVATIONS = sorted(k for k, c in discover().items() if c.elementwise)
# NNSPEC_HYPOTHESIS_EXAMPLES=600 for a longer search.
SETTINGS = settings(max_examples=int(os.environ.get("NNSPEC_HYPOTHESIS_EXAMPLES", 40)),
                    deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def valid_specs(draw):
    """A chain of layers over a random input, each legal for the shape it receives."""
    rank = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 6)) for _ in range(rank)]
    layers, current = [], list(shape)
    for _ in range(draw(st.integers(1, 6))):
        options = ["act", "dropout", "rescale", "flatten"]
        if len(current) <= 2:
            options += ["dense", "dense"]
        kind = draw(st.sampled_from(options))
        if kind == "dense":
            layers.append({"type": "dense", "units": draw(st.integers(1, 9)),
                           "activation": draw(st.sampled_from([None, *ACTIVATIONS]))})
            current = [*current[:-1], layers[-1]["units"]]
        elif kind == "act":
            layers.append({"type": draw(st.sampled_from(ACTIVATIONS))})
        elif kind == "dropout":
            layers.append({"type": "dropout", "rate": draw(st.floats(0, 0.9))})
        elif kind == "rescale":
            layers.append({"type": "rescale", "scale": draw(st.floats(-3, 3)),
                           "offset": draw(st.floats(-1, 1))})
        else:
            layers.append({"type": "flatten"})
            current = [int(jax.numpy.prod(jax.numpy.array(current)))]
    for layer in layers:
        if layer.get("activation") is None:
            layer.pop("activation", None)
    return {"version": 1, "name": "random", "inputs": {"x": {"shape": shape}},
            "layers": layers}


@SETTINGS
@given(spec=valid_specs())
def test_inferred_shapes_equal_flax(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("p") / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    _, graph = check_spec(path)
    module = GraphModule(graph)
    x = {"x": jax.ShapeDtypeStruct((2, *spec["inputs"]["x"]["shape"]), jax.numpy.float32)}
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    out = jax.eval_shape(module.apply, variables, x)["output"]
    assert out.shape == (2, *graph.output_node("output").shape)


BASE = """\
version: 1
name: base
inputs:
  x: {shape: [4, 4], dtype: float32}
layers:
  - {type: flatten}
  - {type: dense, units: 8, activation: relu}
  - {type: dropout, rate: 0.5}
  - {type: dense, units: 3}
  - {type: softmax}
outputs:
  y: {from: softmax_1, labels: [a, b, c]}
data: {source: digits, validation_split: 0.1}
train:
  epochs: 2
  batch_size: 16
  optimizer: {name: adam, learning_rate: 1.0e-3}
  loss: categorical_crossentropy
  metrics: [accuracy]
export: {opset: 21}
"""

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                 st.text(max_size=8), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_texts(draw):
    data = yaml.safe_load(BASE)
    kind = draw(st.sampled_from(["value", "delete", "rename", "add", "text"]))
    if kind == "text":
        text = BASE
        at = draw(st.integers(0, len(text)))
        chunk = draw(st.text(alphabet=string.printable + "\x00\x07é€", max_size=6))
        return text[:at] + chunk + text[at + draw(st.integers(0, 5)):]
    paths = [p for p in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    if kind == "value":
        parent[key] = draw(JUNK)
    elif kind == "delete":
        del parent[key]
    elif kind == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + draw(st.sampled_from("xs_"))] = parent.pop(key)
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(JUNK)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


LOCATED = re.compile(r"^(.+):(\d+):(\d+): \S")


@SETTINGS
@given(text=mutated_texts())
def test_mutations_never_crash(tmp_path_factory, capsys, text):
    path = tmp_path_factory.mktemp("m") / "spec.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err
    if code == 2:
        assert "Traceback" not in captured.err
        assert all(LOCATED.match(line) for line in captured.err.splitlines()), captured.err

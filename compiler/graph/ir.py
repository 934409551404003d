"""The graph IR: a spec's layers resolved to typed nodes, ordered, with every shape inferred.

Everything a spec can get wrong about its model is found here, all at once and each at its YAML
line, before anything is compiled: unknown or misspelt layer types and parameters, bad references,
cycles, duplicate names, and shape mismatches anywhere in the graph. No JAX import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from nnspec.compiler.layers.base import Layer, Shape, describe, discover
from nnspec.spec.errors import Problem, SpecError
from nnspec.spec.schema import InputSpec
from nnspec.spec.validate import (
    LoadedSpec,
    apply_overrides,
    did_you_mean,
    pydantic_problems,
    validate_document,
)
from nnspec.spec.yamlio import Document, Path, load_file

GRAPH_KEYS = ("type", "name", "inputs", "trainable")


@dataclass(frozen=True)
class Node:
    """One layer instance: its parameters, where its inputs come from and its output shape."""

    name: str
    layer: Layer
    inputs: tuple[str, ...]
    shape: Shape
    path: Path
    origin: str | None = None
    """For an activation expanded from a layer's `activation:`, that layer's name."""
    trainable: bool = True
    """False: the layer's weights stay as initialised (or loaded) while training."""

    @property
    def type(self) -> str:
        return self.layer.type_name


@dataclass(frozen=True)
class Graph:
    """A whole model: named inputs, nodes in topological order, named outputs."""

    name: str
    inputs: dict[str, InputSpec]
    nodes: tuple[Node, ...]
    outputs: dict[str, str]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def shape_of(self, name: str) -> Shape:
        if name in self.inputs:
            return tuple(self.inputs[name].shape)
        return self.node(name).shape

    def output_node(self, output: str) -> Node:
        return self.node(self.outputs[output])


@dataclass
class _Entry:
    name: str
    layer: Layer
    refs: list[str] | None
    path: Path
    activation: str | None = None
    internal: bool = False
    trainable: bool = True  # an activation node expanded from a layer's `activation:`


class _Builder:
    def __init__(self, doc: Document, loaded: LoadedSpec | None = None):
        self.loaded = loaded
        self.doc = doc
        self.problems: list[Problem] = []
        self.registry = discover()

    def fail(self, path: Path, message: str, key: bool = False) -> None:
        self.problems.append(Problem(self.doc.source.locate(path, key=key), message))

    def entry(self, i: int, raw: dict[str, Any], counts: dict[str, int]) -> _Entry | None:
        path: Path = ("layers", i)
        kind = raw.get("type")
        if not isinstance(kind, str):
            self.fail(path, f"layers.{i}: each layer needs a `type`, one of: "
                      f"{', '.join(sorted(self.registry))}")
            return None
        cls = self.registry.get(kind)
        if cls is None:
            self.fail((*path, "type"), f"layers.{i}: unknown layer type {kind!r}"
                      f"{did_you_mean(kind, self.registry)}")
            return None
        params = {k: v for k, v in raw.items() if k not in GRAPH_KEYS}
        try:
            layer = cls.model_validate(params)
        except ValidationError as err:
            self.problems += pydantic_problems(err, cls, params, self.doc, prefix=path,
                                               noun="parameter", label=f"layers.{i} ({kind})")
            return None
        counts[kind] = counts.get(kind, 0) + 1
        name = raw.get("name") or f"{kind}_{counts[kind]}"
        refs = raw.get("inputs")
        if isinstance(refs, str):
            refs = [refs]
        if refs is not None and not (isinstance(refs, list) and all(
                isinstance(r, str) for r in refs)):
            self.fail((*path, "inputs"), f"layers.{i}.inputs: expected a layer or input name, "
                      f"or a list of them. Received: inputs={refs!r}")
            return None
        act = layer.activation_name
        if act is not None:
            act_cls = self.registry.get(act)
            if act_cls is None or not act_cls.elementwise:
                choices = [k for k, c in self.registry.items() if c.elementwise]
                valid = ", ".join(sorted(choices))
                self.fail((*path, "activation"), f"layers.{i}.activation: unknown activation "
                          f"{act!r}{did_you_mean(act, choices)}. Valid: {valid}")
                return None
        trainable = raw.get("trainable", True)
        if not isinstance(trainable, bool):
            self.fail((*path, "trainable"), f"layers.{i}.trainable: expected true or false. "
                      f"Received: trainable={trainable!r}")
            return None
        return _Entry(str(name), layer, refs, path, act, trainable=trainable)

    def build(self) -> Graph:
        spec = self.loaded.spec
        counts: dict[str, int] = {}
        entries = [e for i, raw in enumerate(spec.layers) if (e := self.entry(i, raw, counts))]
        if self.problems:
            raise SpecError(self.problems)
        known = dict.fromkeys(spec.inputs, ("inputs",))
        for e in entries:
            if e.name in known:
                self.fail((*e.path, "name"), f"duplicate name {e.name!r}: already used by "
                          f"{'an input' if known[e.name] == ('inputs',) else 'another layer'}")
            known[e.name] = e.path
        if self.problems:
            raise SpecError(self.problems)
        entries = self.expand_activations(entries, known)
        nodes = self.link(entries, known)
        outputs = self.outputs(entries, known)
        if not self.problems:
            self.unused(entries, outputs)
        if self.problems:
            raise SpecError(self.problems)
        graph = Graph(spec.name, dict(spec.inputs), tuple(self.infer(nodes)), outputs)
        if self.problems:
            raise SpecError(self.problems)
        return graph

    def expand_activations(self, entries: list[_Entry], known: dict[str, Path]) -> list[_Entry]:
        """`activation: relu` on a layer becomes a relu node after it; references to the layer
        then mean the activated output (the layer's parameters keep the layer's name)."""
        self.alias: dict[str, str] = {}
        out = []
        for e in entries:
            out.append(e)
            if e.activation:
                name, k = f"{e.name}_{e.activation}", 1
                while name in known:
                    k += 1
                    name = f"{e.name}_{e.activation}_{k}"
                known[name] = e.path
                self.alias[e.name] = name
                out.append(_Entry(name, self.registry[e.activation](), [e.name], e.path,
                                  internal=True))
        return out

    def link(self, entries: list[_Entry], known: dict[str, Path]) -> list[_Entry]:
        """Resolve references (a layer without `inputs` takes the previous one) and order the
        entries topologically, reporting unknown names and cycles."""
        inputs = list(self.loaded.spec.inputs)
        previous: str | None = inputs[0] if len(inputs) == 1 else None
        for e in entries:
            if e.refs is None:
                if previous is None:
                    self.fail(e.path, f"layer {e.name!r} ({e.layer.type_name}) needs `inputs`: "
                              f"the model has several inputs ({', '.join(inputs)})")
                e.refs = [previous] if previous else []
            elif not e.internal:
                e.refs = [self.alias.get(r, r) for r in e.refs]
            for ref in e.refs:
                if ref not in known:
                    self.fail((*e.path, "inputs"), f"layer {e.name!r} takes input {ref!r}, "
                              f"which is no layer or input{did_you_mean(ref, known)}")
            arity = e.layer.arity
            if arity is not None and len(e.refs) != arity:
                self.fail((*e.path, "inputs"), f"layer {e.name!r} ({e.layer.type_name}) takes "
                          f"{arity} input(s), got {len(e.refs)}")
            previous = e.name
        return self.toposort(entries)

    def toposort(self, entries: list[_Entry]) -> list[_Entry]:
        by_name = {e.name: e for e in entries}
        done: set[str] = set()
        order: list[_Entry] = []
        for start in entries:
            stack: list[tuple[_Entry, Iterable[str]]] = []
            if start.name in done:
                continue
            on_path = {start.name}
            stack.append((start, iter(start.refs or [])))
            while stack:
                entry, refs = stack[-1]
                ref = next((r for r in refs if r in by_name and r not in done), None)
                if ref is None:
                    stack.pop()
                    on_path.discard(entry.name)
                    done.add(entry.name)
                    order.append(entry)
                elif ref in on_path:
                    cycle = [s[0].name for s in stack] + [ref]
                    cycle = cycle[cycle.index(ref):]
                    self.fail((*entry.path, "inputs"), "the layers form a cycle: "
                              + " -> ".join(cycle))
                    return order
                else:
                    on_path.add(ref)
                    stack.append((by_name[ref], iter(by_name[ref].refs or [])))
        return order

    def outputs(self, entries: list[_Entry], known: dict[str, Path]) -> dict[str, str]:
        spec = self.loaded.spec
        if not spec.outputs:
            return {"output": entries[-1].name} if entries else {}
        result = {}
        for out, o in spec.outputs.items():
            src = o.from_ or entries[-1].name
            if src not in known or known[src] == ("inputs",):
                self.fail(("outputs", out, "from"), f"output {out!r} is taken from {src!r}, which "
                          f"is no layer{did_you_mean(src, [e.name for e in entries])}")
            result[out] = self.alias.get(src, src)
        return result

    def unused(self, entries: list[_Entry], outputs: dict[str, str]) -> None:
        """Every layer must feed another layer or an output, and every input must be read."""
        consumed = {r for e in entries for r in e.refs or []} | set(outputs.values())
        by_name = {e.name: e for e in entries}
        for e in entries:
            if e.name not in consumed:
                layer = by_name[e.refs[0]] if e.internal and e.refs else e
                self.fail(e.path, f"layer {layer.name!r} ({layer.layer.type_name}) is unused: "
                          "no layer takes its output and no output comes from it")
        for name in self.loaded.spec.inputs:
            if name not in consumed:
                self.fail(("inputs", name), f"input {name!r} is not used by any layer", key=True)

    def infer(self, entries: list[_Entry]) -> list[Node]:
        shapes: dict[str, Shape] = {k: tuple(v.shape) for k, v in self.loaded.spec.inputs.items()}
        nodes: list[Node] = []
        for e in entries:
            if any(r not in shapes for r in e.refs or []):
                continue  # an upstream layer already failed
            ins = [shapes[r] for r in e.refs or []]
            if e.layer.integer_input:
                specs = self.loaded.spec.inputs
                bad = [r for r in e.refs or [] if r not in specs
                       or not specs[r].dtype.startswith(("int", "uint"))]
                if bad:
                    self.fail(e.path, f"layer {e.name!r} ({e.layer.type_name}) needs integer ids "
                              f"from a model input of dtype int32, int64 or uint8; {bad[0]!r} "
                              "is not one")
                    continue
            try:
                shape = e.layer.infer(*ins)
            except ValueError as err:
                # A layer may say where in its message the source goes (`{source}`); otherwise
                # the input shapes and their sources are appended.
                msg = str(err)
                sources = ", ".join(repr(r) for r in e.refs or [])
                if "{source}" in msg:
                    msg = msg.replace("{source}", sources)
                else:
                    got = ", ".join(f"{describe(s)} from {r!r}" for s, r in zip(ins, e.refs or []))
                    msg = f"{msg}; input: {got}"
                self.fail(e.path, f"layer {e.name!r} ({e.layer.type_name}) {msg}")
                continue
            origin = e.refs[0] if e.internal and e.refs else None
            nodes.append(Node(e.name, e.layer, tuple(e.refs or []), shape, e.path, origin,
                              e.trainable))
            shapes[e.name] = shape
        return nodes


def build_graph(loaded: LoadedSpec) -> Graph:
    """Resolve, check and shape-infer the model of a validated spec; raises `SpecError` with
    every problem found."""
    return _Builder(loaded.doc, loaded).build()


def layer_problems(doc: Document) -> list[Problem]:
    """The per-layer checks (types, parameters) of a document whose other sections may be
    invalid, so that one run reports every problem."""
    builder = _Builder(doc)
    layers = doc.data.get("layers") if isinstance(doc.data, dict) else None
    for i, raw in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(raw, dict) and "block" not in raw:
            builder.entry(i, raw, {})
    return builder.problems


def check_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[LoadedSpec, Graph]:
    """Load, override, validate and build a spec file, reporting every problem at once."""
    return check_document(load_file(path), overrides)


def check_document(doc: Document, overrides: Sequence[str] = (), folder: str | None = None
                   ) -> tuple[LoadedSpec, Graph]:
    """Override, validate and build a loaded document, reporting every problem at once;
    `folder` is where its relative paths point (default: the file's folder)."""
    if overrides and isinstance(doc.data, dict):
        apply_overrides(doc, overrides)
    try:
        spec = validate_document(doc)
    except SpecError as err:
        raise SpecError(err.problems + layer_problems(doc)) from None
    loaded = LoadedSpec(spec, doc, folder)
    return loaded, build_graph(loaded)

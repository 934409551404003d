"""From a YAML document to a validated `Spec`, with every error at its line and column."""

from __future__ import annotations

import difflib
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from nnspec.spec.errors import Location, Problem, SpecError
from nnspec.spec.schema import Spec
from nnspec.spec.yamlio import Document, Path, load_file, parse_scalar


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """A "did you mean" suffix naming the closest valid choice, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Union/Annotated down to the part that describes a mapping or a list."""
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is typing.Annotated:
            args = args[:1]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        annotation = (models or args)[0]
    return annotation


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc` (to list its valid keys)."""
    annotation: Any = root
    for segment in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {f.alias or n: f for n, f in annotation.model_fields.items()}
            if segment not in fields:
                return None
            annotation = fields[segment].annotation
        elif origin in (list, dict):
            annotation = typing.get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _data_path(data: Any, loc: tuple) -> Path:
    """Drop the segments pydantic adds that name no child in the data (union tags, validators)."""
    path: list = []
    node = data
    for segment in loc:
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            node = node[segment]
        elif isinstance(node, dict) and isinstance(segment, str):
            path.append(segment)  # a missing or forbidden key: keep it, stop walking
            break
        else:
            continue
        path.append(segment)
    return tuple(path)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path) or "spec"


def pydantic_problems(err: ValidationError, model: type[BaseModel], data: Any, doc: Document,
                      prefix: Path = (), noun: str = "key", label: str | None = None
                      ) -> list[Problem]:
    """Turn pydantic's errors into located problems in the Keras/Equinox message style.

    A misspelt key is reported once, as an unknown key with a suggestion, rather than also as
    the missing key it was meant to be."""
    problems = []
    suggested: set[Path] = set()
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            path = _data_path(data, tuple(e["loc"]))
            owner = _model_at(model, tuple(path[:-1]))
            close = difflib.get_close_matches(str(path[-1]), _keys_of(owner) if owner else [],
                                              n=1, cutoff=0.6)
            suggested |= {(*path[:-1], c) for c in close}
    for e in err.errors():
        path = _data_path(data, tuple(e["loc"]))
        full = (*prefix, *path)
        kind = e["type"]
        key = path[-1] if path else None
        if kind == "extra_forbidden":
            owner = _model_at(model, tuple(path[:-1]))
            hint = did_you_mean(str(key), _keys_of(owner)) if owner else ""
            valid = f" Valid keys: {', '.join(_keys_of(owner))}." if owner and not hint else ""
            where = label or _dotted(full[:-1])
            msg = f"{where}: unknown {noun} {key!r}{hint}{valid}"
            problems.append(Problem(doc.source.locate(full, key=True), msg))
            continue
        if kind == "missing":
            if path in suggested:
                continue
            msg = f"{_dotted(full)}: missing required key {key!r}"
            problems.append(Problem(doc.source.locate(full[:-1]), msg))
            continue
        msg = e["msg"].removeprefix("Value error, ").rstrip(".")
        hint = ""
        if kind.startswith("literal_error") and "expected" in e.get("ctx", {}):
            choices = [c.strip(" '") for c in str(e["ctx"]["expected"]).replace(" or ", ", ")
                       .split(",")]
            hint = did_you_mean(str(e["input"]), choices)
        received = "" if isinstance(e["input"], dict | list) or key is None else (
            f" Received: {key}={e['input']!r}")
        problems.append(Problem(doc.source.locate(full),
                                f"{_dotted(full)}: {msg}.{received}{hint}"))
    return problems


def apply_overrides(doc: Document, overrides: typing.Sequence[str]) -> None:
    """Apply `key.path=value` overrides in place; list items are addressed by index."""
    problems = []
    for arg in overrides:
        key, sep, raw = arg.partition("=")
        where = Location(f"--set {arg}", 1, len(key) + 2)
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
        if not sep or not key or "" in parts:
            problems.append(Problem(Location(f"--set {arg}", 1, 1),
                                    "expected KEY.PATH=VALUE, for example train.epochs=1"))
            continue
        node = doc.data
        if len(parts) > 2 and parts[0] == "layers" and isinstance(parts[1], str):
            # layers.fc1.units: a layer by name
            named = [i for i, e in enumerate(doc.data.get("layers") or [])
                     if isinstance(e, dict) and e.get("name") == parts[1]]
            if named:
                parts[1] = named[0]
        for depth, part in enumerate(parts[:-1]):
            child = node[part] if _has(node, part) else None
            if child is None and isinstance(node, dict):
                child = node[part] = {}
            if isinstance(node, list) and not _has(node, part):
                problems.append(Problem(where, f"cannot set {key}: index {part} is out of range"))
                break
            if not isinstance(child, dict | list):
                problems.append(Problem(where, f"cannot set {key}: "
                                        f"{'.'.join(map(str, parts[:depth + 1]))} is not a "
                                        "mapping or list"))
                break
            node = child
        else:
            last = parts[-1]
            if isinstance(node, list) and not _has(node, last):
                problems.append(Problem(where, f"cannot set {key}: index {last} is out of range"))
                continue
            node[last] = parse_scalar(raw)
            doc.source.set(tuple(parts), where)
    if problems:
        raise SpecError(problems)


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec together with the document it came from (for locating later errors)."""

    spec: Spec
    doc: Document
    base: str | None = None
    """Where relative paths point when the spec is not a file (`Spec.from_dict`)."""

    @property
    def file(self) -> str:
        return self.doc.file

    @property
    def folder(self) -> str:
        if self.base is not None:
            return os.path.abspath(self.base)
        return os.path.dirname(os.path.abspath(self.doc.file)) if os.path.exists(
            self.doc.file) else os.getcwd()


def validate_document(doc: Document) -> Spec:
    """Validate a loaded document against the spec schema; all problems are raised together."""
    if doc.data is None:
        raise SpecError.at(Location(doc.file, 1, 1), "spec is empty; expected a mapping with "
                           "version, name, inputs, layers, data, train and export")
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        raise SpecError.at(doc.source.locate(()), f"a spec must be a mapping at the top level, "
                           f"got a {kind}")
    from nnspec.spec.blocks import expand_blocks

    expand_blocks(doc)
    try:
        return Spec.model_validate(doc.data)
    except ValidationError as err:
        raise SpecError(pydantic_problems(err, Spec, doc.data, doc)) from None


def load_spec(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> LoadedSpec:
    """Read, override and validate a spec file (structure only; layers are checked by the
    compiler)."""
    doc = load_file(path)
    if overrides and isinstance(doc.data, dict):
        apply_overrides(doc, overrides)
    return LoadedSpec(validate_document(doc), doc)

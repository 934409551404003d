"""Safe YAML loading that remembers where every value came from.

PyYAML alone has four traps for a spec language, each handled here:
- it keeps the last of two duplicate keys silently: here a duplicate is an error at the second key;
- it reads `1e-3` as a string and `017` as octal (YAML 1.1): here scalars follow YAML 1.2's core
  schema, so `1e-3` is 0.001, `017` is 17, `no` is the string "no" and dates stay strings;
- aliases are shared references, so a small "billion laughs" file expands without bound in whatever
  walks it: here the expanded size is counted before anything is built, and capped;
- errors lose their position once the data is built: here every key and value keeps its mark.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from nnspec.spec.errors import Location, Problem, SpecError

MAX_BYTES = 1 << 20
MAX_NODES = 20_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]

_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_PLAIN_TAGS = _SCALAR_TAGS | {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars; never patches the global SafeLoader."""

    yaml_implicit_resolvers: dict = {}

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        for prefix, base in (("0x", 16), ("0o", 8)):
            if digits.startswith(prefix):
                return sign * int(digits[2:], base)
        return sign * int(digits, 10)


    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 (PyYAML's)
        # PyYAML's scanner keeps one possible simple key per open flow level and rescans them
        # all for every token: 5000 unclosed `[` cost 24 s of CPU before any depth check ran.
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"flow collections ([...] or {{...}}) nested deeper than "
                f"{MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), in resolution order.
_RESOLVERS = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", list("~nN") + [""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$",
     list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
     r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     list("-+.0123456789")),
    (_MERGE, r"^(?:<<)$", ["<"]),
]
for _tag, _pattern, _first in _RESOLVERS:
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a document was written."""

    file: str
    values: dict[Path, Location] = field(default_factory=dict)
    keys: dict[Path, Location] = field(default_factory=dict)

    def locate(self, path: Path, key: bool = False) -> Location:
        """The location of `path`, or of its nearest written ancestor (for a missing key)."""
        table = self.keys if key else self.values
        if path in table:
            return table[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return Location(self.file, 1, 1)

    def set(self, path: Path, location: Location) -> None:
        """Record a location for a value added after loading (for example by `--set`)."""
        self.values[path] = location
        self.keys.setdefault(path, location)


@dataclass
class Document:
    """A loaded YAML document: plain data plus the source map of its positions."""

    data: Any
    source: SourceMap

    @property
    def file(self) -> str:
        return self.source.file


def _loc(file: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(file, 1, 1)
    return Location(file, mark.line + 1, mark.column + 1)


def _count(node: yaml.Node, memo: dict[int, int], active: set[int], file: str) -> int:
    """Expanded node count, linear in the composed graph thanks to the memo on node identity."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise SpecError.at(_loc(file, node.start_mark), "recursive YAML alias: a value contains "
                           "itself")
    active.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_count(child, memo, active, file) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _count(k, memo, active, file) + _count(v, memo, active, file)
    active.discard(key)
    memo[key] = min(total, 1 << 62)
    return memo[key]


class _Builder:
    """Builds plain Python data from composed nodes, recording marks and checking keys."""

    def __init__(self, loader: _Loader, file: str):
        self.loader = loader
        self.source = SourceMap(file)
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.source.values.setdefault(path, _loc(self.source.file, node.start_mark))
        if len(path) > MAX_DEPTH:
            raise SpecError.at(_loc(self.source.file, node.start_mark),
                               f"YAML nested deeper than {MAX_DEPTH} levels")
        if node.tag not in _PLAIN_TAGS:
            self.problems.append(Problem(_loc(self.source.file, node.start_mark),
                                         f"unsupported YAML tag {node.tag!r}; a spec holds only "
                                         "strings, numbers, booleans, null, lists and mappings"))
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        merged: dict = {}
        explicit: dict = {}
        first_seen: dict[Any, Location] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node]
                # YAML merge: earlier mappings win over later ones, explicit keys over all.
                for src in reversed(sources):
                    value = self.build(src, path)
                    if isinstance(value, dict):
                        merged.update(value)
                continue
            key_loc = _loc(self.source.file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem(key_loc, "mapping keys must be plain scalars"))
                continue
            key = self.loader.construct_object(key_node)
            if not isinstance(key, str | int | float | bool) or key is None:
                key = str(key)
            if key in first_seen:
                first = first_seen[key]
                self.problems.append(Problem(key_loc, f"duplicate key {key!r} (first defined at "
                                                      f"line {first.line}, column {first.col})"))
                continue
            first_seen[key] = key_loc
            self.source.keys[(*path, key)] = key_loc
            explicit[key] = self.build(value_node, (*path, key))
        return {**merged, **explicit}


def _reader_location(text: str, file: str, position: int) -> Location:
    before = text[:position]
    return Location(file, before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1)


def load_text(text: str | bytes, file: str = "<string>") -> Document:
    """Parse a YAML spec. Raises `SpecError` (located) for anything that is not a clean document."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SpecError.at(Location(file, 1, 1), f"file is {len(text)} bytes; specs are "
                               f"limited to {MAX_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            loc = _reader_location(text[: err.start].decode("utf-8", "replace"), file,
                                   len(text[: err.start].decode("utf-8", "replace")))
            raise SpecError.at(loc, f"not UTF-8 text (byte 0x{text[err.start]:02x}); a spec is "
                               "a YAML text file") from None
    if len(text) > MAX_BYTES:
        raise SpecError.at(Location(file, 1, 1), f"file is {len(text)} characters; specs are "
                           f"limited to {MAX_BYTES}")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return Document(None, SourceMap(file))
        size = _count(node, {}, set(), file)
        if size > MAX_NODES:
            raise SpecError.at(_loc(file, node.start_mark),
                               f"YAML expands to {size} nodes through aliases; the limit is "
                               f"{MAX_NODES} (an alias bomb?)")
        builder = _Builder(loader, file)
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        raise SpecError.at(_loc(file, mark), f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as err:
        raise SpecError.at(_reader_location(text, file, err.position),
                           f"YAML cannot contain control character U+{err.character:04X}"
                           ) from None
    except yaml.YAMLError as err:
        raise SpecError.at(Location(file, 1, 1), f"YAML error: {err}") from None
    except RecursionError:
        raise SpecError.at(Location(file, 1, 1), "YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if builder.problems:
        raise SpecError(builder.problems)
    return Document(data, builder.source)


def load_file(path: str | os.PathLike) -> Document:
    """Read and parse a spec file; an unreadable file is a located `SpecError` too."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise SpecError.at(Location(name, 1, 1), f"cannot read spec: {err.strerror}") from None
    return load_text(raw, name)


def parse_scalar(text: str) -> Any:
    """Parse one `--set` value with the same scalar rules as a spec (`1e-3` is a float)."""
    try:
        return load_text(text, "<--set>").data
    except SpecError:
        return text

"""Reusable blocks: a list of layers defined once under `blocks:` and used many times.

    blocks:
      residual:
        params: {filters: 16}              # parameters and their defaults (null: required)
        layers:
          - {type: conv2d, name: a, filters: $filters, kernel_size: 3, activation: relu}
          - {type: conv2d, name: b, filters: $filters, kernel_size: 3}
          - {type: add, inputs: [b, $input]}
    layers:
      - {block: residual, filters: 32, repeat: 2}

Data only: `$name` substitutes a whole value (no expressions), `$input` is the block's input.
Layers inside an instance are named `INSTANCE_LAYER` (instance names default to `BLOCK_N`,
and a repeated instance adds `_K`), so their weights stay addressable by name. Errors point at
the use of the block, or at the template line for a problem inside it.
"""

from __future__ import annotations

import copy
from typing import Any

from nnspec.spec.errors import Problem, SpecError
from nnspec.spec.validate import did_you_mean
from nnspec.spec.yamlio import Document, Path

MAX_DEPTH = 8
USE_KEYS = ("block", "name", "repeat", "inputs")


class _Expander:
    def __init__(self, doc: Document, blocks: dict[str, Any]):
        self.doc, self.blocks = doc, blocks
        self.problems: list[Problem] = []
        self.out: list[dict[str, Any]] = []
        self.origins: list[Path] = []  # where each expanded entry was written
        self.arg_paths: list[dict[str, Path]] = []  # substituted values: their arguments
        self.counts: dict[str, int] = {}

    def fail(self, path: Path, message: str, key: bool = False) -> None:
        self.problems.append(Problem(self.doc.source.locate(path, key=key), message))

    def _name(self, kind: str, given: Any) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return str(given) if given else f"{kind}_{self.counts[kind]}"

    def previous(self) -> str | None:
        return self.out[-1]["name"] if self.out else None

    def layer(self, entry: dict, path: Path) -> None:
        entry = dict(entry)
        entry["name"] = self._name(str(entry.get("type")), entry.get("name"))
        self.append(entry, path, {})

    def append(self, entry: Any, origin: Path, args: dict[str, Path]) -> None:
        self.out.append(entry)
        self.origins.append(origin)
        self.arg_paths.append(args)

    def use(self, entry: dict, path: Path, depth: int, inputs: Any) -> None:
        name = entry["block"]
        if name not in self.blocks:
            self.fail((*path, "block"), f"unknown block {name!r}"
                      f"{did_you_mean(str(name), self.blocks)}")
            return
        if depth > MAX_DEPTH:
            self.fail(path, f"blocks nest deeper than {MAX_DEPTH} levels (a block using itself?)")
            return
        block = self.blocks[name]
        params = dict(block.get("params") or {})
        args = {k: v for k, v in entry.items() if k not in USE_KEYS}
        for key in args:
            if key not in params:
                self.fail((*path, key), f"block {name!r} has no parameter {key!r}"
                          f"{did_you_mean(key, params)}", key=True)
        values = {**params, **args}
        for key, value in values.items():
            if value is None:
                self.fail(path, f"block {name!r} needs parameter {key!r}")
        repeat = entry.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            self.fail((*path, "repeat"), f"`repeat` must be a positive integer. Received: "
                      f"repeat={repeat!r}")
            return
        instance = self._name(str(name), entry.get("name"))
        for k in range(1, repeat + 1):
            prefix = instance if repeat == 1 else f"{instance}_{k}"
            block_input = inputs if k == 1 and inputs is not None else self.previous()
            self.instance(name, block, prefix, values, path, block_input, depth, set(args))

    def instance(self, name: str, block: dict, prefix: str, values: dict, use: Path,
                 block_input: Any, depth: int, given: set[str]) -> None:
        template: Path = ("blocks", name, "layers")
        local = {}
        for j, raw in enumerate(block.get("layers") or []):
            if isinstance(raw, dict):
                inner = raw.get("name") or f"{raw.get('type', raw.get('block'))}_{j + 1}"
                local[str(inner)] = f"{prefix}_{inner}"
        for j, raw in enumerate(block.get("layers") or []):
            if not isinstance(raw, dict):
                self.fail((*template, j), "each layer of a block must be a mapping")
                continue
            entry, args = {}, {}
            for key, value in raw.items():
                entry[key] = self.substitute(value, values, (*template, j, key), use)
                if isinstance(value, str) and value[1:] in given and value.startswith("$"):
                    args[key] = (*use, value[1:])
            refs = entry.get("inputs")
            if refs is None and j == 0 and block_input is not None:
                refs = block_input
            if refs is not None:
                refs = [refs] if isinstance(refs, str) else refs
                entry["inputs"] = [self.resolve(r, local, block_input) for r in refs]
            inner = raw.get("name") or f"{raw.get('type', raw.get('block'))}_{j + 1}"
            if "block" in entry:
                entry["name"] = local[str(inner)]
                self.use(entry, (*template, j), depth + 1, entry.pop("inputs", None))
            else:
                entry["name"] = local[str(inner)]
                self.append(entry, (*template, j), args)

    def substitute(self, value: Any, values: dict, where: Path, use: Path) -> Any:
        if isinstance(value, str) and value.startswith("$") and value != "$input":
            key = value[1:]
            if key not in values:
                self.fail(where, f"{value!r} names no parameter of this block"
                          f"{did_you_mean(key, values)}")
                return None
            return copy.deepcopy(values[key])
        if isinstance(value, list):
            return [self.substitute(v, values, where, use) for v in value]
        return value

    def resolve(self, ref: Any, local: dict[str, str], block_input: Any) -> Any:
        if ref == "$input":
            if isinstance(block_input, list):
                return block_input[0] if len(block_input) == 1 else block_input
            return block_input
        return local.get(ref, ref)


def expand_blocks(doc: Document) -> None:
    """Replace block uses in `doc.data["layers"]` by their layers, in place, and give the
    expanded entries source locations. A spec without blocks is left untouched."""
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        return
    layers = data["layers"]
    if not any(isinstance(e, dict) and "block" in e for e in layers):
        return
    blocks = data.get("blocks")
    if not isinstance(blocks, dict):
        blocks = {}
    exp = _Expander(doc, blocks)
    for i, entry in enumerate(layers):
        path: Path = ("layers", i)
        if isinstance(entry, dict) and "block" in entry:
            exp.use(entry, path, 0, entry.get("inputs"))
        elif isinstance(entry, dict):
            exp.layer(entry, path)
        else:
            exp.append(entry, path, {})
    if exp.problems:
        raise SpecError(exp.problems)
    _relocate(doc, exp.origins, exp.arg_paths)
    data["layers"] = exp.out


def _relocate(doc: Document, origins: list[Path], arg_paths: list[dict[str, Path]]) -> None:
    """Point ('layers', k, ...) at wherever expanded entry k was written; a value substituted
    from a block parameter points at the argument of the block's use."""
    src = doc.source
    snapshots = ((src.values, dict(src.values)), (src.keys, dict(src.keys)))
    for table, _ in snapshots:
        for p in [p for p in table if p[:1] == ("layers",)]:
            del table[p]
    for k, origin in enumerate(origins):
        for table, snapshot in snapshots:
            for p, loc in snapshot.items():
                if p[: len(origin)] == origin:
                    table[("layers", k, *p[len(origin):])] = loc
        for key, arg in arg_paths[k].items():
            src.values[("layers", k, key)] = snapshots[0][1].get(arg, src.locate(arg))

"""What a table's cells teach: column types, bad cells (by row of the file), targets, and the
preprocessing that ships in the model's `table` metadata (vocabularies, means and modes, from
the training split only; the class names of a categorical output from the whole file or
`outputs.NAME.labels`).

Each function reads the table in blocks of rows (`Chunks`), one pass each: the whole table as
one block when it is in memory, a Parquet file's record batches when it streams
(`nnspec.compiler.data.parquet`). Nothing depends on how the rows are cut into blocks (means are
exact sums, ties of a mode go to the smallest value), so both routes learn the same bits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.compiler.data.tables import Table
from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.schema import ColumnSpec, InputSpec

Chunks = Callable[[], Iterable[Table]]
"""A fresh pass over a table's rows in blocks: the whole table as one block (`whole`), or a
Parquet file's record batches, read as they come (`nnspec.compiler.data.parquet`). Every
statistic below is a function of the rows alone, not of how they are cut into blocks, so a
streamed file and the same file in memory learn the same encoding, bit for bit."""


def whole(table: Table) -> Chunks:
    """A table in memory as one block."""
    return lambda: (table,)


def _parsed(cells: Sequence[Any]) -> tuple[int, int]:
    """(present, parsed as numbers) cells of a block."""
    present = parsed = 0
    for cell in cells:
        if rt.is_missing(cell):
            continue
        present += 1
        try:
            float(cell)
            parsed += 1
        except (TypeError, ValueError):
            pass
    return present, parsed


def resolve_types(columns: Mapping[str, ColumnSpec], chunks: Chunks) -> dict[str, str]:
    """numeric or categorical for every column named. `auto`: numeric when the file stores
    numbers, or when at least 90% of the present cells parse as numbers (a few typos in a
    numeric column are bad rows to report, not a reason to treat it as categories)."""
    auto = list(dict.fromkeys(c for e in columns.values() if e.type == "auto"
                              for c in e.columns))
    counts = {c: [0, 0] for c in auto}
    stored: set[str] = set()
    if auto:
        for chunk in chunks():
            for c in auto:
                cells = chunk.cells[c]
                if isinstance(cells, np.ndarray):
                    stored.add(c)
                    continue
                present, parsed = _parsed(cells)
                counts[c][0] += present
                counts[c][1] += parsed
    kinds: dict[str, str] = {}
    for entry in columns.values():
        for c in entry.columns:
            kind = entry.type if entry.type != "auto" else (
                "numeric" if c in stored or counts[c][1] >= 0.9 * counts[c][0]
                else "categorical")
            if kinds.get(c, kind) != kind:
                raise DataError(f"data.columns: column {c!r} is used as numeric and categorical")
            kinds[c] = kind
    return kinds


def _policy(entry: ColumnSpec, kind: str) -> str:
    return entry.missing or ("fail" if kind == "numeric" else "oov")


def _block_problems(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], chunk: Table,
                    outputs: Sequence[str], labels: Mapping[str, list[str]],
                    found: dict[str, set[str]]) -> list[tuple[int, str]]:
    """The problems of one block, by row index in the file; the label values it holds are
    added to `found`."""
    problems: list[tuple[int, str]] = []
    first, where = chunk.first, chunk.where
    for name, entry in columns.items():
        is_output = name in outputs
        for c in entry.columns:
            cells = chunk.cells[c]
            if kinds[c] == "numeric":
                values, bad = rt.numbers(cells, c, lambda i: where(first + i))
                problems += [(first + i, m) for i, m in bad]
                unparsed = {i for i, _ in bad}
                if is_output or _policy(entry, "numeric") == "fail":
                    problems += [(first + int(i), f"{where(first + int(i))}: column {c!r} is "
                                  "missing" + ("" if is_output else " (set data.columns."
                                               f"{name}.missing: mean, mode or constant to "
                                               "fill it)"))
                                 for i in np.flatnonzero(np.isnan(values))
                                 if int(i) not in unparsed]
                continue
            if not is_output:
                if _policy(entry, "categorical") == "fail":
                    problems += [(first + i, f"{where(first + i)}: column {c!r} is missing")
                                 for i, v in enumerate(cells) if rt.text(v) is None]
                continue
            known = labels.get(name)
            for i, v in enumerate(rt.text(v) for v in cells):
                if v is None:
                    problems.append((first + i, f"{where(first + i)}: label column {c!r} is "
                                     "missing"))
                elif known and v not in known:
                    problems.append((first + i, f"{where(first + i)}: label {v!r} of column "
                                     f"{c!r} is not one of outputs.{name}.labels {list(known)}"))
                else:
                    found[name].add(v)
    return problems


def check_rows(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], chunks: Chunks,
               outputs: Sequence[str], labels: Mapping[str, list[str]]
               ) -> tuple[list[tuple[int, str]], dict[str, list[str]]]:
    """Problems found before any fitting (cells that do not parse, missing cells with
    `missing: fail`, labels outside the declared classes, missing targets), by row index in
    the file, and the class names of each categorical output."""
    categorical = [n for n in outputs if kinds[columns[n].columns[0]] == "categorical"]
    found: dict[str, set[str]] = {n: set() for n in categorical}
    problems: list[tuple[int, str]] = []
    for chunk in chunks():
        problems += _block_problems(columns, kinds, chunk, outputs, labels, found)
    classes = {n: list(labels[n]) if labels.get(n) else sorted(found[n]) for n in categorical}
    # A row with two bad cells is one bad row: keep each message, sorted by row.
    return sorted(set(problems)), classes


def _exact_sum(carry: list[float], values: Sequence[float]) -> list[float]:
    """A few floats whose exact sum is that of `carry` and `values`: `math.fsum` is correctly
    rounded, so each residual is far smaller than the last and they end at 0 in a step or
    two. A mean from it depends on the values only, not on their order or blocks."""
    terms = [*carry, *values]
    out: list[float] = []
    while True:
        residual = math.fsum([*terms, *(-o for o in out)])
        if residual == 0.0:
            return out
        out.append(residual)


def _most_common(counts: Counter) -> Any:
    """The most frequent value; among equally frequent ones the smallest (not the first
    seen, which would depend on the order the rows were read in)."""
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def fit(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], chunks: Chunks,
        train: np.ndarray, inputs: Mapping[str, InputSpec]) -> dict[str, Any]:
    """The `table` metadata's `inputs`: per input its dtype, shape and column items with the
    vocabulary (sorted) and fill value learned from the training rows (`train`: a mask over
    the file's rows), in one pass over the blocks."""
    used = {c: (name, entry) for name, entry in columns.items() if name in inputs
            for c in entry.columns}
    sums: dict[str, list[float]] = {c: [] for c in used}
    special: dict[str, list[float]] = {c: [] for c in used}  # inf, -inf: numpy's mean of them
    seen: dict[str, int] = {c: 0 for c in used}
    counts: dict[str, Counter] = {c: Counter() for c in used}
    for chunk in chunks():
        mask = train[chunk.first:chunk.first + chunk.rows]
        for c, (_, entry) in used.items():
            cells = chunk.cells[c]
            policy = _policy(entry, kinds[c])
            if kinds[c] == "numeric":
                values = rt.numbers(cells, c, chunk.where)[0][mask]
                values = values[~np.isnan(values)]
                finite = np.isfinite(values)
                sums[c] = _exact_sum(sums[c], values[finite].tolist())
                special[c] += values[~finite].tolist()
                seen[c] += len(values)
                if policy == "mode":
                    counts[c].update(values.tolist())
            else:
                counts[c].update(v for v in (rt.text(cells[i]) for i in np.flatnonzero(mask))
                                 if v is not None)
    spec: dict[str, Any] = {}
    for name, entry in columns.items():
        if name not in inputs:
            continue
        items = []
        for c in entry.columns:
            kind = kinds[c]
            policy = _policy(entry, kind)
            item: dict[str, Any] = {"name": c, "type": kind, "missing": policy}
            if kind == "numeric":
                total = math.fsum(sums[c]) + (float(np.sum(special[c])) if special[c] else 0.0)
                fill = {"mean": total / seen[c] if seen[c] else 0.0,
                        "mode": float(_most_common(counts[c])) if counts[c] else 0.0,
                        "constant": entry.fill_value}.get(policy)
                item["fill"] = None if fill is None else float(fill)
            else:
                item["vocabulary"] = sorted(counts[c])
                item["encoding"] = entry.encoding
                item["fill"] = (_most_common(counts[c]) if policy == "mode" and counts[c]
                                else str(entry.fill_value) if policy == "constant" else None)
            items.append(item)
        spec[name] = {"dtype": inputs[name].dtype, "shape": list(inputs[name].shape),
                      "columns": items}
    return spec


def targets(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], chunks: Chunks,
            outputs: Sequence[str], classes: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
    """Targets per output, for every row of the file: class ids for a categorical column,
    integers for one whole-number column, else float32 values."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
    index = {n: {v: i for i, v in enumerate(classes[n])} for n in outputs if n in classes}
    for chunk in chunks():
        for name in outputs:
            entry = columns[name]
            if name in classes:
                parts[name].append(np.array([index[name].get(rt.text(v), -1) for v in
                                             chunk.cells[entry.columns[0]]], np.int64))
                continue
            parts[name].append(np.stack([rt.numbers(chunk.cells[c], c, chunk.where)[0]
                                         for c in entry.columns], axis=1))
    y = {}
    for name in outputs:
        values = np.concatenate(parts[name])
        if name in classes:
            y[name] = values
        elif (values.shape[1] == 1 and np.all(np.isfinite(values))
              and np.all(values == np.round(values))):
            y[name] = values[:, 0].astype(np.int64)
        else:
            y[name] = values.astype(np.float32)
    return y

"""Table rows to model inputs, with numpy only: the preprocessing that `nnspec train` learns
from a CSV/Parquet training split (column order, vocabularies, fill values) and ships in the
model's `table` metadata, applied the same way at training and at prediction time.

What is in the ONNX graph: only what the spec's layers do (`normalize`, `embedding`, ...).
What is here, outside the graph: parsing cells, filling missing values, mapping strings to
vocabulary ids (0: out of vocabulary) or one-hot vectors, and gathering columns into each
input's tensor. Training calls the same `encode` on the cells it reads with pyarrow, so the
predictions on raw rows equal the training-time evaluation exactly.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Cells that mean "missing" in a CSV (pyarrow's and pandas' defaults, the common ones).
NULLS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "none", "-",
                   "?", "#N/A"})
OOV = 0  # the id of a value outside the vocabulary (and of a missing one, by default)


class TableError(ValueError):
    """Cells that do not fit the table's preprocessing: `problems` is a list of
    (row index, message), every problem at once."""

    def __init__(self, problems: list[tuple[int, str]]):
        self.problems = problems
        shown = [m for _, m in problems[:20]]
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__("\n".join(shown) + more)


def is_missing(cell: Any) -> bool:
    """True for None, NaN and the usual spellings of a missing cell (`NULLS`)."""
    if cell is None:
        return True
    if isinstance(cell, float | np.floating):
        return math.isnan(cell)
    return isinstance(cell, str) and cell.strip() in NULLS


def text(cell: Any) -> str | None:
    """A categorical cell as the vocabulary holds it: stripped text, None when missing."""
    if is_missing(cell):
        return None
    if isinstance(cell, float | np.floating) and float(cell).is_integer():
        return str(int(cell))
    return str(cell).strip()


def numbers(cells: Sequence[Any], column: str, where: Any
            ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """float64 values of a numeric column (NaN where missing) and the cells that do not parse,
    as (row index, message); `where(row)` names a row (`file:line`)."""
    if isinstance(cells, np.ndarray) and np.issubdtype(cells.dtype, np.number):
        return cells.astype(np.float64), []
    out = np.empty(len(cells), np.float64)
    problems = []
    for i, cell in enumerate(cells):
        if is_missing(cell):
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except (TypeError, ValueError):
            out[i] = np.nan
            problems.append((i, f"{where(i)}: column {column!r}: not a number: {cell!r}"))
    return out, problems


def width(item: Mapping[str, Any]) -> int:
    """Values one column item contributes to its input."""
    if item["type"] == "categorical" and item.get("encoding") == "one_hot":
        return len(item["vocabulary"]) + 1
    return 1


def encode_column(item: Mapping[str, Any], cells: Sequence[Any], where: Any
                  ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """One column item's values, shaped (rows, width), and its problems."""
    name = item["name"]
    if item["type"] == "numeric":
        values, problems = numbers(cells, name, where)
        missing = np.isnan(values)
        if missing.any():
            if item.get("fill") is None:
                problems += [(int(i), f"{where(int(i))}: column {name!r} is missing (set "
                              f"data.columns.*.missing: mean, mode or constant to fill it)")
                             for i in np.flatnonzero(missing)]
            else:
                values = np.where(missing, float(item["fill"]), values)
        return values[:, None], problems
    index = {v: i + 1 for i, v in enumerate(item["vocabulary"])}
    fill = item.get("fill")
    ids = np.empty(len(cells), np.int64)
    for i, cell in enumerate(cells):
        value = text(cell)
        ids[i] = index.get(fill if value is None else value, OOV)
    if item.get("encoding") == "one_hot":
        return np.eye(len(index) + 1, dtype=np.float64)[ids], []
    return ids[:, None], []


def encode(spec: Mapping[str, Any], table: Mapping[str, Sequence[Any]], where: Any
           ) -> dict[str, np.ndarray]:
    """The model inputs (`spec` is the metadata's `inputs`: per input its dtype, shape and
    column items) from cells by column name. Raises `TableError` listing every bad cell."""
    arrays, problems = {}, []
    for name, entry in spec.items():
        parts = []
        for item in entry["columns"]:
            values, bad = encode_column(item, table[item["name"]], where)
            parts.append(values)
            problems += bad
        x = np.concatenate(parts, axis=1)
        shape = [d for d in entry["shape"]]
        if None not in shape and math.prod(shape) == x.shape[1]:
            x = x.reshape((len(x), *shape))
        arrays[name] = np.ascontiguousarray(x.astype(entry["dtype"]))
    if problems:
        raise TableError(sorted(problems))
    return arrays


def columns_needed(spec: Mapping[str, Any]) -> list[str]:
    """Every column an input reads, in first-use order."""
    return list(dict.fromkeys(item["name"] for e in spec.values() for item in e["columns"]))


def missing_columns_message(missing: Sequence[str], header: Sequence[str], path: str) -> str:
    """'`path` has no column 'x' (did you mean 'y'?)', for every missing column."""
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, list(header), n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"{path} has no column {', '.join(parts)}; its columns are "
            f"{', '.join(header)}")


def read_csv(path: str, needed: Sequence[str]) -> tuple[dict[str, list[str]], list[int]]:
    """The cells of the `needed` columns of a CSV with a header row, and each row's line
    number. Raises `TableError` for missing columns and malformed rows."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise TableError([(0, f"{path} is empty (a header row is needed)")])
        header = [h.strip() for h in header]
        absent = [c for c in needed if c not in header]
        if absent:
            raise TableError([(0, missing_columns_message(absent, header, path))])
        at = [header.index(c) for c in needed]
        cells: dict[str, list[str]] = {c: [] for c in needed}
        lines, problems = [], []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append((len(lines), f"{path}:{reader.line_num}: {len(row)} fields, "
                                 f"the header has {len(header)}"))
                continue
            for c, j in zip(needed, at):
                cells[c].append(row[j])
            lines.append(reader.line_num)
    if problems:
        raise TableError(problems)
    return cells, lines


def read_parquet(path: str, needed: Sequence[str]
                 ) -> tuple[dict[str, Any], int, list[str]]:
    """The cells of the `needed` columns of a Parquet file as training reads them (numbers as
    float64 arrays, other columns as Python values), the row count and the header. Needs
    pyarrow, the runtime's one optional dependency; raises `TableError` when it or a column is
    missing (a missing column's problem has row -1)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TableError([(0, f"{path}: reading .parquet needs pyarrow "
                           "(pip install pyarrow), or give the rows as .csv")]) from None
    try:
        header = list(pq.read_schema(path).names)
        absent = [c for c in needed if c not in header]
        if absent:
            raise TableError([(-1, missing_columns_message(absent, header, path))])
        table = pq.read_table(path, columns=list(needed))
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError([(0, f"{path}: cannot read it as Parquet: {err}")]) from None
    return arrow_cells(table, needed), table.num_rows, header


def arrow_cells(table: Any, needed: Sequence[str]) -> dict[str, Any]:
    """The cells of the `needed` columns of a pyarrow Table or RecordBatch as training and
    `predict` read them: numeric columns as float64 arrays (NaN where null), other columns as
    Python values. One conversion for a whole file, a row group or a few of its rows, so every
    way of reading a Parquet file encodes to the same bits."""
    import pyarrow as pa

    cells: dict[str, Any] = {}
    for c in needed:
        column = table.column(c)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            cells[c] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            cells[c] = column.to_pylist()
    return cells


def read_table_inputs(path: str, metadata: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The model inputs from the rows of a CSV or Parquet file, by the model's `table`
    metadata; the label and any other column the model does not read are ignored."""
    spec = json.loads(metadata["table"])["inputs"]
    if path.lower().endswith(".parquet"):
        cells, count, _ = read_parquet(path, columns_needed(spec))
        if not count:
            raise TableError([(0, f"{path} holds no data rows")])
        return encode(spec, cells, lambda i: f"{path}: row {i + 1}")
    cells, lines = read_csv(path, columns_needed(spec))
    if not lines:
        raise TableError([(0, f"{path} holds no data rows")])
    return encode(spec, cells, lambda i: f"{path}:{lines[i]}")

"""`source: csv` and `source: parquet`: a table read with pyarrow, its columns mapped to the
model's inputs and outputs by name (`data.columns`).

Every cell is read as text (Parquet: as stored) and parsed by `nnspec.runtime.tables`, the same
code `nnspec predict` runs on raw rows, so training and prediction agree exactly. Vocabularies,
means and modes are learned from the training split only; the class names of a categorical
output come from the whole file (or `outputs.NAME.labels`). The learned preprocessing ships in
the model's `table` metadata.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.schema import ColumnSpec, DataSpec, InputSpec


class Table:
    """The cells of the needed columns of a file, and a name (`file:line`) for each row."""

    def __init__(self, path: str, cells: dict[str, Sequence[Any]], rows: int,
                 where: Callable[[int], str], header: list[str]):
        self.path, self.cells, self.rows, self.where, self.header = (path, cells, rows, where,
                                                                     header)


def _csv_header(path: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"data.path: cannot read {path!r} as a CSV file: {err}") from None


def _scan(path: str, width: int) -> tuple[list[int], list[str]]:
    """Line numbers of the well-formed data rows, and a message for each malformed one (the
    slow exact pass, run only when a row needs naming)."""
    lines, bad = [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != width:
                bad.append(f"{path}:{reader.line_num}: {len(row)} fields, the header has "
                           f"{width}")
            else:
                lines.append(reader.line_num)
    return lines, bad


def read_csv(path: str, needed: Sequence[str]) -> tuple[Table, list[str]]:
    """The needed columns as text, and the malformed rows (skipped) as messages."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(path)
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"data.columns: {rt.missing_columns_message(absent, header, path)}")
    invalid: list[Any] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, include_columns=list(needed),
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: cannot read it as CSV: {err}") from None
    cells = {c: table.column(c).to_pylist() for c in needed}
    lines: list[int] = []
    bad: list[str] = []
    if invalid:
        lines, bad = _scan(path, len(header))

    def where(i: int) -> str:
        if not lines:
            lines.extend(_scan(path, len(header))[0])
        return f"{path}:{lines[i]}" if i < len(lines) else f"{path}: data row {i + 1}"

    return Table(path, cells, table.num_rows, where, header), bad


def read_parquet(path: str, needed: Sequence[str]) -> Table:
    """The needed columns of a Parquet file (numbers stay numbers, strings text), read as the
    runtime reads them for `predict`."""
    try:
        cells, count, header = rt.read_parquet(path, needed)
    except rt.TableError as err:
        missing = err.problems and err.problems[0][0] == -1
        raise DataError(("data.columns: " if missing else "") + str(err)) from None
    return Table(path, cells, count, lambda i: f"{path}: row {i + 1}", header)


def _is_numeric(cells: Sequence[Any]) -> bool:
    """Numeric when at least 90% of the present cells parse as numbers: a few typos in a
    numeric column are bad rows to report, not a reason to treat it as categories."""
    if isinstance(cells, np.ndarray):
        return True
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
    return parsed >= 0.9 * present


def resolve_types(columns: Mapping[str, ColumnSpec], table: Table) -> dict[str, str]:
    """numeric or categorical for every column named (auto: numeric when all cells parse)."""
    kinds: dict[str, str] = {}
    for entry in columns.values():
        for c in entry.columns:
            kind = entry.type if entry.type != "auto" else (
                "numeric" if _is_numeric(table.cells[c]) else "categorical")
            if kinds.get(c, kind) != kind:
                raise DataError(f"data.columns: column {c!r} is used as numeric and categorical")
            kinds[c] = kind
    return kinds


def _policy(entry: ColumnSpec, kind: str) -> str:
    return entry.missing or ("fail" if kind == "numeric" else "oov")


def check_rows(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], table: Table,
               outputs: Sequence[str], labels: Mapping[str, list[str]]
               ) -> tuple[list[tuple[int, str]], dict[str, list[str]]]:
    """Problems found before any fitting (cells that do not parse, missing cells with
    `missing: fail`, labels outside the declared classes, missing targets) and the class names
    of each categorical output."""
    problems: list[tuple[int, str]] = []
    classes: dict[str, list[str]] = {}
    for name, entry in columns.items():
        is_output = name in outputs
        for c in entry.columns:
            cells = table.cells[c]
            if kinds[c] == "numeric":
                values, bad = rt.numbers(cells, c, table.where)
                problems += bad
                unparsed = {i for i, _ in bad}
                if is_output or _policy(entry, "numeric") == "fail":
                    problems += [(int(i), f"{table.where(int(i))}: column {c!r} is missing"
                                  + ("" if is_output else " (set data.columns."
                                     f"{name}.missing: mean, mode or constant to fill it)"))
                                 for i in np.flatnonzero(np.isnan(values))
                                 if int(i) not in unparsed]
                continue
            if not is_output:
                if _policy(entry, "categorical") == "fail":
                    problems += [(i, f"{table.where(i)}: column {c!r} is missing")
                                 for i, v in enumerate(cells) if rt.text(v) is None]
                continue
            values = [rt.text(v) for v in cells]
            known = labels.get(name)
            names = list(known) if known else sorted({v for v in values if v is not None})
            allowed = set(names)
            for i, v in enumerate(values):
                if v is None:
                    problems.append((i, f"{table.where(i)}: label column {c!r} is missing"))
                elif v not in allowed:
                    problems.append((i, f"{table.where(i)}: label {v!r} of column {c!r} is "
                                     f"not one of outputs.{name}.labels {names}"))
            classes[name] = names
    # A row with two bad cells is one bad row: keep each message, sorted by row.
    return sorted(set(problems)), classes


def fit(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], table: Table,
        train_rows: np.ndarray, inputs: Mapping[str, InputSpec]) -> dict[str, Any]:
    """The `table` metadata's `inputs`: per input its dtype, shape and column items with the
    vocabulary (sorted) and fill value learned from the training rows."""
    spec: dict[str, Any] = {}
    for name, entry in columns.items():
        if name not in inputs:
            continue
        items = []
        for c in entry.columns:
            cells = table.cells[c]
            kind = kinds[c]
            policy = _policy(entry, kind)
            item: dict[str, Any] = {"name": c, "type": kind, "missing": policy}
            if kind == "numeric":
                values = rt.numbers(cells, c, table.where)[0][train_rows]
                seen = values[~np.isnan(values)]
                fill = {"mean": float(seen.mean()) if len(seen) else 0.0,
                        "mode": float(Counter(seen.tolist()).most_common(1)[0][0])
                        if len(seen) else 0.0,
                        "constant": entry.fill_value}.get(policy)
                item["fill"] = None if fill is None else float(fill)
            else:
                values = [rt.text(cells[i]) for i in train_rows]
                counts = Counter(v for v in values if v is not None)
                item["vocabulary"] = sorted(counts)
                item["encoding"] = entry.encoding
                item["fill"] = (counts.most_common(1)[0][0] if policy == "mode" and counts
                                else str(entry.fill_value) if policy == "constant" else None)
            items.append(item)
        spec[name] = {"dtype": inputs[name].dtype, "shape": list(inputs[name].shape),
                      "columns": items}
    return spec


def targets(columns: Mapping[str, ColumnSpec], kinds: Mapping[str, str], table: Table,
            outputs: Sequence[str], classes: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
    """Targets per output: class ids for a categorical column, integers for one whole-number
    column, else float32 values."""
    y = {}
    for name in outputs:
        entry = columns[name]
        if name in classes:
            index = {v: i for i, v in enumerate(classes[name])}
            y[name] = np.array([index.get(rt.text(v), -1) for v in
                                table.cells[entry.columns[0]]], np.int64)
            continue
        parts = [rt.numbers(table.cells[c], c, table.where)[0] for c in entry.columns]
        values = np.stack(parts, axis=1)
        if len(parts) == 1 and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            y[name] = values[:, 0].astype(np.int64)
        else:
            y[name] = values.astype(np.float32)
    return y


def check_columns(data: DataSpec, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Every input and output has its columns and every `columns` key names one of them."""
    from nnspec.spec.validate import did_you_mean

    columns = data.column_specs()
    names = [*inputs, *outputs]
    problems = [f"data.columns.{k}: not an input or output of the model"
                f"{did_you_mean(k, names)}; they are {names}" for k in columns if k not in names]
    problems += [f"data.columns has no entry for {kind} {n!r}" for kind, group in
                 (("input", inputs), ("output", outputs)) for n in group if n not in columns]
    if problems:
        raise DataError("\n".join(problems))

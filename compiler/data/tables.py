"""`source: csv` and `source: parquet`: a table read with pyarrow, its columns mapped to the
model's inputs and outputs by name (`data.columns`).

Every cell is read as text (Parquet: as stored) and parsed by `nnspec.runtime.tables`, the same
code `nnspec predict` runs on raw rows, so training and prediction agree exactly. What is
learned from the cells (types, problems, vocabularies, fills, targets) is in `tablestats`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from typing import Any

from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec


class Table:
    """The cells of the needed columns of a file (or of a block of its rows, starting at row
    `first`), and a name (`file:line`) for each row by its index in the file."""

    def __init__(self, path: str, cells: dict[str, Sequence[Any]], rows: int,
                 where: Callable[[int], str], header: list[str], first: int = 0):
        self.path, self.cells, self.rows, self.where, self.header = (path, cells, rows, where,
                                                                     header)
        self.first = first


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

"""Sources whose samples have names (table rows, image files): read, check every sample
(reporting every problem at once, or skipping bad samples with `data.on_error: skip`), split,
fit the table preprocessing on the training split and encode each split."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.compiler.data.dataset import Dataset, Split, _stratified_split, fit_input
from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec

SHOWN = 20  # problems listed in one error message


def resolve(path: str, spec_folder: str) -> str:
    """A data path relative to the spec's folder (absolute paths stay)."""
    return path if os.path.isabs(path) else os.path.join(spec_folder, path)


def fail_or_skip(data: DataSpec, problems: Sequence[tuple[int, str]], what: str
                 ) -> tuple[set[int], list[str]]:
    """The bad samples to skip and their messages; a `DataError` listing them all when
    `data.on_error` is `fail`."""
    if not problems:
        return set(), []
    messages = list(dict.fromkeys(m for _, m in problems))
    bad = {i for i, _ in problems}
    if data.on_error == "fail":
        more = (f"\n... and {len(messages) - SHOWN} more" if len(messages) > SHOWN else "")
        raise DataError(f"{len(bad)} bad {what}{'s' if len(bad) != 1 else ''} (set "
                        f"data.on_error: skip to train without them):\n"
                        + "\n".join(messages[:SHOWN]) + more)
    return bad, messages


def split_rows(data: DataSpec, y: np.ndarray, rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (into `rows`) of the train, validation and test samples, as `make_dataset`
    splits arrays: limit, then a stratified test split, then a validation split."""
    rng = np.random.default_rng(data.seed)
    keep = np.arange(len(rows))
    if data.limit:
        keep = rng.permutation(len(rows))[: data.limit]
    kept, test = _stratified_split(y[keep], data.test_split, rng)
    kept, test = keep[kept], keep[test]
    train, val = _stratified_split(y[kept], data.validation_split, rng)
    return kept[train], kept[val], test


def _subset(cells: Sequence[Any], index: np.ndarray) -> Sequence[Any]:
    if isinstance(cells, np.ndarray):
        return cells[index]
    return [cells[i] for i in index]


def table_dataset(data: DataSpec, inputs: Mapping[str, InputSpec], outputs: Sequence[str],
                  spec_folder: str, labels: Mapping[str, list[str]], stream: str = "auto"
                  ) -> Dataset:
    """A `csv`/`parquet` source as a `Dataset`, with its `table` metadata. A Parquet file
    whose encoded inputs would not fit the device budget (`parquet.lazy`) stays on disk: its
    encoding is learned in passes over its record batches, and its splits are `TableColumn`s
    read by row group."""
    from nnspec.compiler.data import parquet, tables, tablestats

    tables.check_columns(data, list(inputs), outputs)
    columns = data.column_specs()
    path = resolve(data.path or "", spec_folder)
    if not os.path.isfile(path):
        raise DataError(f"data.path: no such file {path!r}")
    needed = list(dict.fromkeys(c for e in columns.values() for c in e.columns))
    malformed: list[str] = []
    source = None
    if data.source == "csv":
        table, malformed = tables.read_csv(path, needed)
    else:
        source = parquet.ParquetRows(path, needed)
        if not parquet.lazy(stream, inputs, source.rows):
            source, table = None, tables.read_parquet(path, needed)
    chunks = source.blocks if source is not None else tablestats.whole(table)
    count = source.rows if source is not None else table.rows
    for name in outputs:
        if len(columns[name].columns) != 1 and columns[name].type == "categorical":
            raise DataError(f"data.columns.{name}: a categorical output reads one column, "
                            f"got {columns[name].columns}")
    kinds = tablestats.resolve_types(columns, chunks)
    problems, classes = tablestats.check_rows(columns, kinds, chunks, outputs, labels)
    bad, messages = fail_or_skip(data, [(-1 - i, m) for i, m in enumerate(malformed)]
                                 + problems, "row")
    keep = np.ones(count, bool)
    keep[[i for i in bad if i >= 0]] = False
    rows = np.flatnonzero(keep).astype(np.int64)
    if not len(rows):
        raise DataError(f"{path}: no usable data rows")
    y_all = tablestats.targets(columns, kinds, chunks, outputs, classes)
    y = {k: v[rows] for k, v in y_all.items()}
    train, val, test = split_rows(data, y[outputs[0]], rows)
    in_train = np.zeros(count, bool)
    in_train[rows[train]] = True
    spec = tablestats.fit(columns, kinds, chunks, in_train, inputs)
    for name, entry in spec.items():
        got = sum(rt.width(item) for item in entry["columns"])
        want = inputs[name].shape
        if None not in want and math.prod(want) != got:
            parts = ", ".join(f"{i['name']}: {rt.width(i)}" for i in entry["columns"])
            raise DataError(f"input {name!r} takes {math.prod(want)} values per sample "
                            f"(shape {tuple(want)}); its columns give {got} ({parts})")
    if source is not None:
        source.encoding, source.inputs = spec, dict(inputs)

    # A Parquet file in memory is hashed as the lazy route hashes it (`column_fingerprint`).
    digest = parquet.file_digest(path) if source is None and data.source == "parquet" else None
    origins = {k: rows[at] for k, at in (("train", train), ("validation", val), ("test", test))}

    def split(at: np.ndarray, origin: np.ndarray) -> Split:
        if source is not None:
            return Split({n: parquet.TableColumn(source, origin, n) for n in inputs},
                         {k: v[at] for k, v in y.items()})
        cells = {c: _subset(table.cells[c], origin) for c in needed}
        x = rt.encode(spec, cells, lambda i: table.where(int(origin[i])))
        prints = {} if digest is None else {
            n: parquet.column_fingerprint(digest, spec, n, origin) for n in inputs}
        return Split({n: fit_input(x[n], inputs[n], n) for n in inputs},
                     {k: v[at] for k, v in y.items()}, prints)

    meta = {"source": data.source, "inputs": spec,
            "outputs": {n: {"columns": columns[n].columns, **(
                {"labels": classes[n]} if n in classes else {})} for n in outputs}}
    # A streamed table's sources are the very row arrays its columns read (8 bytes a row, once).
    return Dataset(split(train, origins["train"]), split(val, origins["validation"]),
                   split(test, origins["test"]), labels=dict(classes), table=meta,
                   sources={k: v if source is not None else v.tolist()
                            for k, v in origins.items()}, skipped=messages)


def named_dataset(data: DataSpec, inputs: Mapping[str, InputSpec], outputs: Sequence[str],
                  spec_folder: str, labels: Mapping[str, list[str]], stream: str = "auto"
                  ) -> Dataset:
    """The `Dataset` of a `csv`, `parquet` or `images` source (`stream`: `train.pipeline`;
    streamed image folders and Parquet files are read as their samples are)."""
    if data.source == "images":
        from nnspec.compiler.data.images import image_dataset

        return image_dataset(data, inputs, outputs, spec_folder, labels, stream)
    return table_dataset(data, inputs, outputs, spec_folder, labels, stream)

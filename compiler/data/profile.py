"""What a spec's `data` section resolves to before any training (`nnspec data SPEC`): files
found, samples per split, class balance, per-column type, range, missing count and vocabulary
size, the input shapes produced, the first samples, and every problem at once. Never imports
JAX."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnspec.compiler.data.dataset import Dataset, make_dataset
from nnspec.compiler.data.tablestats import _exact_sum
from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.validate import LoadedSpec

FIRST = 5  # samples shown


def _plain(value: np.ndarray) -> Any:
    """A sample as JSON-ready lists; float32 values by their shortest repr (39.1, not
    39.099998474121094)."""
    if np.issubdtype(value.dtype, np.floating):
        return np.vectorize(lambda v: float(str(np.float32(v))), otypes=[object])(
            value).tolist() if value.ndim else float(str(np.float32(value)))
    return value.tolist()


DISTINCT_CAP = 100_000
"""Distinct values `nnspec data` counts in a column of undeclared type before it stops: a
numeric label column of a huge file would otherwise hold every value in a set."""


class _ColumnTally:
    """One column's statistics, added block by block (a table in memory is one block)."""

    def __init__(self, numeric_only: bool):
        self.numeric_only = numeric_only
        self.cells = self.missing = self.bad = self.seen = 0
        self.low, self.high, self.total = math.inf, -math.inf, []  # total: exact partial sums
        self.distinct: set = set()

    def add(self, cells: Any, column: str, where: Any) -> None:
        self.cells += len(cells)
        values, bad = rt.numbers(cells, column, where)
        self.bad += len(bad)
        if isinstance(cells, np.ndarray) and np.issubdtype(cells.dtype, np.number):
            self.missing += int(np.isnan(values).sum())
        else:
            self.missing += int(sum(rt.is_missing(v) for v in cells))
        seen = values[~np.isnan(values)]
        if len(seen):
            self.seen += len(seen)
            self.low, self.high = min(self.low, float(seen.min())), max(self.high,
                                                                        float(seen.max()))
            self.total = _exact_sum(self.total, seen.tolist())
        if not self.numeric_only and len(self.distinct) < DISTINCT_CAP:
            self.distinct.update(rt.text(v) for v in cells)
            self.distinct.discard(None)

    def row(self, item: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"missing": self.missing}
        kind = item.get("type", "numeric" if self.bad <= 0.1 * self.cells else "categorical")
        if kind == "numeric":
            found = self.seen > 0
            row.update(type="numeric", min=self.low if found else None,
                       max=self.high if found else None,
                       mean=math.fsum(self.total) / self.seen if found else None)
            if item:
                row["fill"] = item.get("fill")
            return row
        row.update(type="categorical", distinct=len(self.distinct))
        if len(self.distinct) >= DISTINCT_CAP:
            row["distinct_counted_up_to"] = DISTINCT_CAP
        if "vocabulary" in item:
            row["vocabulary_size"] = len(item["vocabulary"])
        return row


def _columns(loaded: LoadedSpec, data: Dataset) -> list[dict[str, Any]]:
    """Per-column type, range, missing count and vocabulary size of a table source, read in
    blocks (a Parquet file a record batch at a time: never the file whole)."""
    from nnspec.compiler.data import tables
    from nnspec.compiler.data.parquet import ParquetRows
    from nnspec.compiler.data.sources import resolve

    spec = loaded.spec.data
    path = resolve(spec.path or "", loaded.folder)
    needed = list(dict.fromkeys(c for e in spec.column_specs().values() for c in e.columns))
    blocks = ((tables.read_csv(path, needed)[0],) if spec.source == "csv"
              else ParquetRows(path, needed).blocks())
    items = {i["name"]: i for e in (data.table or {}).get("inputs", {}).values()
             for i in e["columns"]}
    tallies = {c: _ColumnTally(items.get(c, {}).get("type") == "numeric") for c in needed}
    for block in blocks:
        for c in needed:
            tallies[c].add(block.cells[c], c, block.where)
    return [{"column": c, **tallies[c].row(items.get(c, {}))} for c in needed]


def profile(loaded: LoadedSpec, outputs: Sequence[str]) -> dict[str, Any]:
    """The report of `nnspec data`: a JSON-ready mapping; `problems` lists every bad sample
    (found by reading with `on_error: skip`) and any error that stops the reading."""
    spec = loaded.spec.data
    if spec is None:
        raise DataError("the spec has no `data` section")
    labels = {k: o.labels for k, o in (loaded.spec.outputs or {}).items() if o.labels}
    lenient = spec.model_copy(update={"on_error": "skip"})
    report: dict[str, Any] = {"source": spec.source, "path": spec.path, "problems": []}
    try:
        data = make_dataset(lenient, loaded.spec.inputs, list(outputs), loaded.folder, labels)
    except DataError as err:
        report["problems"] += str(err).splitlines()
        return report
    report["problems"] += data.skipped
    splits = data.splits()
    report["samples"] = {k: len(s) for k, s in splits.items()}
    if spec.source == "images":
        files = sorted({f for v in data.sources.values() for f in v})
        report["files"] = len(files)
    elif spec.path:
        report["files"] = 1
    balance: dict[str, Any] = {}
    for out in outputs:
        y = data.train.y[out]
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
            names = data.labels.get(out) or labels.get(out)
            balance[out] = {k: {(names[int(c)] if names and int(c) < len(names) else str(c)):
                                int(n) for c, n in zip(*np.unique(s.y[out], return_counts=True))}
                            for k, s in splits.items()}
    report["class_balance"] = balance
    report["inputs"] = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)}
                        for k, v in data.train.x.items()}
    if spec.source in ("csv", "parquet"):
        report["columns"] = _columns(loaded, data)
    first = []
    for i in range(min(FIRST, len(data.train))):
        sample: dict[str, Any] = {}
        if data.sources.get("train"):
            source = data.sources["train"][i]  # a streamed table's rows: a numpy array
            sample["source"] = source.item() if isinstance(source, np.generic) else source
        if spec.source != "images":
            sample["inputs"] = {k: _plain(v[i]) for k, v in data.train.x.items()}
        for out in outputs:
            y = data.train.y[out][i]
            names = data.labels.get(out) or labels.get(out)
            sample[out] = names[int(y)] if names and y.ndim == 0 else y.tolist()
        first.append(sample)
    report["first_samples"] = first
    report["_dataset"] = data
    return report


def contact_sheet(data: Dataset, path: str, labels: Sequence[str] = (), count: int = 64,
                  scale: int = 0) -> None:
    """The first `count` training images in a grid, each with its label, as a PNG."""
    from PIL import Image, ImageDraw

    from nnspec._io import write_bytes

    name = next(iter(data.train.x))
    images = np.asarray(data.train.x[name][:count])  # a streamed folder's: decoded here
    out = next(iter(data.train.y))
    labels = data.labels.get(out) or list(labels)
    if images.ndim == 4 and images.shape[1] in (1, 3, 4) and images.shape[-1] not in (1, 3, 4):
        images = np.moveaxis(images, 1, -1)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    pixels = images.astype(np.float64)
    top = pixels.max() if pixels.size else 1.0
    pixels = (pixels * (255.0 / top if top > 0 else 1.0)).clip(0, 255).astype(np.uint8)
    h, w = pixels.shape[1:3]
    scale = scale or max(1, 64 // max(h, w))
    cols = int(np.ceil(np.sqrt(len(pixels)))) or 1
    cell_w, cell_h = w * scale + 8, h * scale + 20
    sheet = Image.new("RGB", (cols * cell_w, int(np.ceil(len(pixels) / cols)) * cell_h),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(pixels):
        tile = Image.fromarray(img).convert("RGB").resize((w * scale, h * scale),
                                                          Image.Resampling.NEAREST)
        x, y = (i % cols) * cell_w + 4, (i // cols) * cell_h + 4
        sheet.paste(tile, (x, y))
        c = int(data.train.y[out][i])
        draw.text((x, y + h * scale + 2), labels[c] if c < len(labels) else str(c), fill="black")
    import io

    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes(os.fspath(path), buffer.getvalue())

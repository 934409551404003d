"""Inputs from files and predictions to files, for `nnspec predict` (numpy only; Pillow for
images when installed).

Inputs: `.npy` (a batch, or one sample), `.npz` (one array per input), `.csv` (numeric, an
optional header row, one sample per row; for a model trained on a table, its raw rows by
column name), `.parquet` (a table model's rows; needs pyarrow) and images (`.png`, `.jpg`,
`.jpeg`, `.bmp`, `.webp`). Several files are concatenated along the batch axis. Outputs:
JSON (the whole report) or CSV (one row per sample).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from nnspec.runtime.model import InputError, Model, TensorInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SUFFIXES = (".npy", ".npz", ".csv", ".parquet", *IMAGE_SUFFIXES)
_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}

Inputs = np.ndarray | dict[str, np.ndarray]
PathLike = str | os.PathLike


def read_inputs(path: PathLike | Sequence[PathLike], model: Model) -> Inputs:
    """The model's inputs from one file or several (concatenated along the batch axis): an
    array for a single-input model, else arrays by input name. Raises `InputError`."""
    paths = [os.fspath(path)] if isinstance(path, str | os.PathLike) else [
        os.fspath(p) for p in path]
    if not paths:
        raise InputError("no input file given")
    parts = [_read_one(p, model) for p in paths]
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        if not all(isinstance(p, np.ndarray) for p in parts):
            raise InputError(f"input files {paths} mix single arrays and per-input archives")
        return _concatenate(parts, paths, model.inputs[0])
    keys = set(parts[0])
    for p, part in zip(paths, parts):
        if not isinstance(part, dict) or set(part) != keys:
            found = sorted(part) if isinstance(part, dict) else "one array"
            raise InputError(f"{p!r} holds {found}; {paths[0]!r} holds {sorted(keys)}")
    infos = {i.name: i for i in model.inputs}
    return {k: _concatenate([part[k] for part in parts], paths, infos.get(k)) for k in parts[0]}


def _read_one(path: str, model: Model) -> Inputs:
    if not os.path.isfile(path):
        raise InputError(f"no such file {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".csv", ".parquet") and "table" in model.metadata:
        # A model trained on a table: raw rows by column name (nnspec.runtime.tables).
        from nnspec.runtime.tables import TableError, read_table_inputs

        try:
            return read_table_inputs(path, model.metadata)
        except TableError as err:
            raise InputError(str(err)) from None
    if suffix == ".csv":
        return _read_csv(path, model)
    if suffix == ".parquet":
        raise InputError(f"{path!r}: .parquet rows feed a model trained on a table (source "
                         "csv/parquet); give this model .npy, .npz, .csv or images")
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path, model)
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read {path!r} as .npy/.npz ({', '.join(SUFFIXES)} are "
                         f"read): {err}") from None
    if isinstance(arrays, dict) and len(model.inputs) == 1:
        name = model.inputs[0].name
        if name in arrays:
            return arrays[name]
        if len(arrays) != 1:
            raise InputError(f"{path!r} holds {sorted(arrays)}; the model's input is {name!r}")
        return next(iter(arrays.values()))
    if isinstance(arrays, np.ndarray) and len(model.inputs) != 1:
        names = [i.name for i in model.inputs]
        raise InputError(f"{path!r} holds one array; the model takes {names}: give an .npz "
                         "with one array per input")
    return arrays


def _single_input(model: Model, path: str, kind: str) -> TensorInfo:
    if len(model.inputs) != 1:
        raise InputError(f"{path!r}: {kind} files feed a model with one input; this one takes "
                         f"{[i.name for i in model.inputs]} (give an .npz)")
    return model.inputs[0]


def _read_csv(path: str, model: Model) -> np.ndarray:
    info = _single_input(model, path, "CSV")
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        first = True
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            header, first = first, False
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if header:
                    continue
                bad = next(c for c in cells if not _is_number(c))
                raise InputError(f"{path}:{reader.line_num}: not a number: {bad!r}") from None
            if rows and len(values) != len(rows[0]):
                raise InputError(f"{path}:{reader.line_num}: {len(values)} values, the rows "
                                 f"before hold {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise InputError(f"{path!r} holds no data rows")
    x = np.asarray(rows)
    shape = info.shape
    if None not in shape and math.prod(shape) == x.shape[1]:
        return x.reshape(len(x), *shape)
    if len(shape) == 1 and shape[0] is None:
        return x
    want = "x".join("?" if d is None else str(d) for d in shape)
    raise InputError(f"rows of {path!r} hold {x.shape[1]} values; input {info.name!r} takes "
                     f"{want} per sample")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _image_layout(info: TensorInfo, path: str) -> tuple[int, int | None, int | None, bool]:
    """(channels, height, width, channels_first) for an image input; channels 0 means no
    channel axis."""
    shape = info.shape
    if len(shape) == 2:
        return 0, shape[0], shape[1], False
    if len(shape) == 3 and shape[2] in _CHANNELS:
        return shape[2], shape[0], shape[1], False
    if len(shape) == 3 and shape[0] in _CHANNELS:
        return shape[0], shape[1], shape[2], True
    dims = ", ".join("?" if d is None else str(d) for d in shape)
    raise InputError(f"{path!r}: input {info.name!r} of shape ({dims}) is not an image (expected "
                     "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4)")


def _read_image(path: str, model: Model) -> np.ndarray:
    info = _single_input(model, path, "image")
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError(f"reading {path!r} needs Pillow (pip install pillow)") from None
    channels, height, width, first = _image_layout(info, path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert(_CHANNELS.get(channels, "L"))
    except OSError as err:
        raise InputError(f"cannot read {path!r} as an image: {err}") from None
    size = (width or image.width, height or image.height)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)  # uint8, (H, W) or (H, W, C)
    if channels == 1:
        pixels = pixels[..., None]
    if first and channels:
        pixels = np.moveaxis(pixels, -1, 0)
    if info.dtype != np.uint8:
        pixels = _scale(pixels.astype(np.float32), model.metadata)
    return pixels[None]


def _scale(pixels: np.ndarray, metadata: Mapping[str, str]) -> np.ndarray:
    """Raw 0..255 values, unless the model declares ONNX's `Image.NominalPixelRange`."""
    nominal = metadata.get("Image.NominalPixelRange", "")
    if nominal == "Normalized_0_1":
        return pixels / 255.0
    if nominal == "Normalized_1_1":
        return pixels / 127.5 - 1.0
    return pixels


def _concatenate(arrays: list[np.ndarray], paths: list[str], info: TensorInfo | None
                 ) -> np.ndarray:
    batches = []
    for a in arrays:
        a = np.asarray(a)
        if info is not None and None not in info.shape and a.shape == info.shape:
            a = a[None]  # one sample without its batch axis
        batches.append(a)
    if len({a.shape[1:] for a in batches}) > 1 or any(a.ndim == 0 for a in batches):
        shapes = ", ".join(f"{p}: {a.shape}" for p, a in zip(paths, batches))
        raise InputError(f"input files do not stack into one batch ({shapes})")
    return np.concatenate(batches)


def random_inputs(model: Model, batch: int, seed: int = 0, free: int = 4
                  ) -> dict[str, np.ndarray]:
    """Random inputs shaped and typed as the model takes them: integers within the model's
    `input_ranges` (else [0, 16)), floats standard normal; free dimensions get `free`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.inputs:
        shape = (batch, *(free if d is None else d for d in info.shape))
        if np.issubdtype(info.dtype, np.integer):
            lo, hi = model.input_ranges.get(info.name) or (0, 16)
            value = rng.integers(lo, hi, size=shape).astype(info.dtype)
        else:
            value = rng.standard_normal(shape).astype(info.dtype)
        feeds[info.name] = np.ascontiguousarray(value)
    return feeds


def report(outputs: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]]
           ) -> dict[str, Any]:
    """Outputs by name: shape, values and, for class scores, the class (and label) per sample."""
    result: dict[str, Any] = {}
    for name, value in outputs.items():
        entry: dict[str, Any] = {"shape": list(value.shape), "values": value.tolist()}
        if _is_classes(value):
            classes = value.argmax(-1).tolist()
            entry["class"] = classes
            if name in labels:
                entry["label"] = [labels[name][c] for c in classes]
        result[name] = entry
    return result


def _is_classes(value: np.ndarray) -> bool:
    return value.ndim == 2 and value.shape[-1] > 1


def write_predictions(outputs: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]],
                      fmt: str, stream: TextIO, model: str | None = None) -> None:
    """Write predictions as `json` (one object: `{"model", "outputs": {name: {"shape",
    "values", "class", "label"}}}`) or `csv` (a header, then one row per sample: class index,
    label when known, then the probabilities; other outputs as their flattened values)."""
    if fmt == "json":
        doc: dict[str, Any] = {"model": model} if model is not None else {}
        doc["outputs"] = report(outputs, labels)
        stream.write(json.dumps(doc) + "\n")
        return
    if fmt != "csv":
        raise ValueError(f"unknown prediction format {fmt!r} (json or csv)")
    prefix = len(outputs) > 1
    header: list[str] = []
    columns: list[list[list[str]]] = []  # per output, per sample, cells
    for name, value in outputs.items():
        tag = f"{name}." if prefix else ""
        names = labels.get(name)
        flat = value.reshape(len(value), -1) if value.ndim else value.reshape(1, 1)
        cells = [[_number(v) for v in row] for row in flat]
        if _is_classes(value):
            classes = value.argmax(-1)
            header.append(f"{tag}class")
            if names:
                header.append(f"{tag}label")
            header += [f"{tag}p_{names[i] if names and i < len(names) else i}"
                       for i in range(value.shape[-1])]
            cells = [[str(int(c)), *([names[c]] if names else []), *row]
                     for c, row in zip(classes, cells)]
        else:
            width = flat.shape[1]
            header += [name if width == 1 else f"{name}[{i}]" for i in range(width)]
        columns.append(cells)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    for row in zip(*columns):
        writer.writerow([cell for part in row for cell in part])


def _number(v: Any) -> str:
    """Shortest text that reads back to the same float32/float64 (numpy's repr)."""
    return str(v) if isinstance(v, np.generic) else repr(v)

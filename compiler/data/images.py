"""`source: images`: a folder with one subfolder per class (class names: the subfolders'
names, sorted) or a CSV of path,label (paths relative to the CSV), decoded with Pillow to the
image input's shape: grayscale or RGB from its channel count, uint8 pixels, resized (bilinear,
as `nnspec predict` resizes) only when `data.resize: resize` asks for it."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

from nnspec.compiler.data.buffers import empty_aligned
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MODES = {0: "L", 1: "L", 3: "RGB", 4: "RGBA"}


def layout(shape: Sequence[int | None], name: str) -> tuple[int, int | None, int | None, bool]:
    """(channels, height, width, channels_first) of an image input (channels 0: no channel
    axis), as `nnspec predict` reads images."""
    if len(shape) == 2:
        return 0, shape[0], shape[1], False
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return shape[2], shape[0], shape[1], False
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return shape[0], shape[1], shape[2], True
    raise DataError(f"data.source images: input {name!r} of shape {tuple(shape)} is not an "
                    "image (expected (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4)")


def list_images(path: str) -> tuple[list[str], list[str], list[str]]:
    """(files, their labels, problems) of a class-folder tree or a path,label CSV."""
    if os.path.isdir(path):
        classes = sorted(d for d in os.listdir(path) if not d.startswith(".")
                         and os.path.isdir(os.path.join(path, d)))
        if not classes:
            raise DataError(f"data.path: {path} has no class subfolders (one folder of images "
                            "per class, named after the class)")
        files, labels = [], []
        for c in classes:
            for f in sorted(os.listdir(os.path.join(path, c))):
                if f.lower().endswith(SUFFIXES):
                    files.append(os.path.join(path, c, f))
                    labels.append(c)
        return files, labels, []
    files, labels, problems = [], [], []
    folder = os.path.dirname(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["path", "label"]:
            raise DataError(f"{path}: the first row must be the header path,label; got "
                            f"{','.join(header)}")
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                problems.append(f"{path}:{reader.line_num}: expected path,label, got {row}")
                continue
            files.append(os.path.join(folder, row[0].strip()))
            labels.append(row[1].strip())
    return files, labels, problems


def decode(path: str, shape: Sequence[int | None], resize: bool, name: str) -> np.ndarray:
    """One image as uint8 pixels in the input's layout. Raises `DataError` naming the file."""
    from PIL import Image, ImageOps

    channels, height, width, first = layout(shape, name)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened).convert(MODES[channels])
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read it as an image: {err}") from None
    size = (width or image.width, height or image.height)
    if image.size != size:
        if not resize:
            raise DataError(f"{path}: {image.width}x{image.height} pixels, input {name!r} "
                            f"takes {size[0]}x{size[1]} (set data.resize: resize)")
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        pixels = pixels[..., None]
    if first and channels:
        pixels = np.moveaxis(pixels, -1, 0)
    return pixels


def check_header(path: str, shape: Sequence[int | None], resize: bool, name: str
                 ) -> tuple[int, ...]:
    """What can be known of an image without decoding it (its format and size), as `decode`
    would report it; the shape `decode` will give."""
    from PIL import Image

    channels, height, width, first = layout(shape, name)
    try:
        with Image.open(path) as opened:
            size = opened.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read it as an image: {err}") from None
    want = (width or size[0], height or size[1])
    if size != want and not resize:
        raise DataError(f"{path}: {size[0]}x{size[1]} pixels, input {name!r} takes "
                        f"{want[0]}x{want[1]} (set data.resize: resize)")
    hw = (want[1], want[0])
    return hw if not channels else (channels, *hw) if first else (*hw, channels)


class ImageColumn:
    """The images of a split, decoded when indexed (in Grain's worker processes when the
    training set streams): indexing gives the input's pixels as `decode` makes them, in the
    input's dtype. Pickles as its file list."""

    decodes = True

    def __init__(self, files: Sequence[str], spec: InputSpec, resize: bool, name: str):
        self.files, self.spec, self.resize, self.name = list(files), spec, resize, name
        self.dtype = np.dtype(spec.dtype)
        self.shape = (len(self.files), *spec.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.files)

    def take(self, indices: object, axis: int = 0, out: object = None,
             mode: str = "raise") -> np.ndarray:
        # out/mode: `np.take` passes them; without them it would decode the whole split.
        if axis != 0 or out is not None:
            raise ValueError("ImageColumn.take reads along axis 0 only")
        rows = np.asarray(indices, np.int64)
        out = empty_aligned((rows.size, *self.shape[1:]), self.dtype)
        for i, r in enumerate(rows.reshape(-1).tolist()):
            out[i] = decode(self.files[r], self.spec.shape, self.resize, self.name)
        return out.reshape((*rows.shape, *self.shape[1:]))

    def __getitem__(self, index: object) -> object:
        if isinstance(index, slice):
            return ImageColumn(self.files[index], self.spec, self.resize, self.name)
        if isinstance(index, (int, np.integer)):
            return self.take([int(index)])[0]
        return self.take(index)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


def _lazy(stream: str, spec: InputSpec, count: int) -> bool:
    """Whether the training images stay on disk: `train.pipeline: stream`, or `auto` and
    the decoded set would not fit the device budget (the test the engine makes)."""
    if None in spec.shape or stream == "device":
        return False
    if stream == "stream":
        return True
    from nnspec.compiler.train.pipeline import choose_pipeline

    size = count * int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
    return choose_pipeline("auto", size) == "stream"


def image_dataset(data: DataSpec, inputs: Mapping[str, InputSpec], outputs: Sequence[str],
                  spec_folder: str, labels: Mapping[str, list[str]], stream: str = "auto"
                  ):  # -> Dataset
    """An `images` source as a `Dataset` (one image input, one class output). Streamed
    (`_lazy`), the images of every split are only checked (format, size) here and decoded
    when read; a file that fails to decode then stops training with its path."""
    from nnspec.compiler.data.dataset import Dataset, Split, fit_input
    from nnspec.compiler.data.sources import fail_or_skip, resolve, split_rows

    if len(inputs) != 1 or len(outputs) != 1:
        raise DataError(f"data.source images feeds a model with one input and one output; "
                        f"this one has inputs {list(inputs)} and outputs {list(outputs)}")
    (name, spec), out = next(iter(inputs.items())), outputs[0]
    path = resolve(data.path or "", spec_folder)
    if not os.path.exists(path):
        raise DataError(f"data.path: no such folder or file {path!r}")
    files, found, listed = list_images(path)
    declared = labels.get(out)
    classes = list(declared) if declared else sorted(set(found))
    index = {c: i for i, c in enumerate(classes)}
    problems: list[tuple[int, str]] = [(-1 - i, m) for i, m in enumerate(listed)]
    problems += [(i, f"{f}: label {c!r} is not one of outputs.{out}.labels {classes}")
                 for i, (f, c) in enumerate(zip(files, found)) if c not in index]
    pixels: dict[int, np.ndarray] = {}
    sizes: dict[tuple[int, ...], str] = {}
    lazy = _lazy(stream, spec, len(files))
    # Streamed with `on_error: skip`, every image is decoded once here and its pixels dropped:
    # the samples to skip must be known before training, since dropping one mid-epoch would
    # change every later batch (and the run would no longer be a function of the seed).
    # Streamed with `fail`, a header check suffices: a file whose pixels do not decode stops
    # training with its path when its batch is read.
    full_check = lazy and data.on_error == "skip"
    for i, f in enumerate(files):
        try:
            if lazy:
                shape = (decode(f, spec.shape, data.resize == "resize", name).shape
                         if full_check else
                         check_header(f, spec.shape, data.resize == "resize", name))
                sizes.setdefault(shape, f)
                continue
            pixels[i] = decode(f, spec.shape, data.resize == "resize", name)
        except DataError as err:
            problems.append((i, str(err)))
            continue
        sizes.setdefault(pixels[i].shape, f)
    if len(sizes) > 1:  # free dimensions and no resize: the images must still stack
        shown = ", ".join(f"{f} is {s}" for s, f in list(sizes.items())[:3])
        raise DataError(f"images of mixed sizes ({shown}); set data.resize: resize and give "
                        f"input {name!r} a fixed shape")
    bad, skipped = fail_or_skip(data, problems, "image")
    keep = [i for i in range(len(files)) if i not in bad]
    if not keep:
        raise DataError(f"data.path: {path} holds no usable images ({', '.join(SUFFIXES)})")
    y = np.array([index[found[i]] for i in keep], np.int64)
    rows = np.array(keep)
    train, val, test = split_rows(data, y, rows)
    if lazy:
        column = ImageColumn([files[i] for i in keep], spec, data.resize == "resize", name)

        # Every split stays on disk: evaluation reads validation and test a chunk of batches
        # at a time (`feed.eval_batches`), as training reads its split.
        def split(at: np.ndarray) -> Split:
            part = ImageColumn([column.files[i] for i in at], spec, column.resize, name)
            return Split({name: part}, {out: y[at]})

        parts = (split(train), split(val), split(test))
    else:
        x = np.stack([pixels[i] for i in keep])

        def split(at: np.ndarray) -> Split:
            return Split({name: fit_input(x[at], spec, name)}, {out: y[at]})

        parts = (split(train), split(val), split(test))
    return Dataset(*parts, labels={out: classes},
                   sources={k: [files[rows[i]] for i in v] for k, v in
                            (("train", train), ("validation", val), ("test", test))},
                   skipped=skipped)

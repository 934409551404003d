"""A spec's `data` section to train, validation and test arrays shaped for the model's input."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec


@dataclass(frozen=True)
class Split:
    """Samples of one split: model inputs `x` and targets `y`, by input and output name."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    fingerprints: dict[str, bytes] = field(default_factory=dict)
    """By input: what the checkpoint's data hash takes instead of the values (the inputs of a
    Parquet file's split, the same on the lazy and the in-memory route); not carried by
    `take`."""

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if self.x else 0

    def take(self, index: np.ndarray) -> Split:
        return Split({k: v[index] for k, v in self.x.items()},
                     {k: v[index] for k, v in self.y.items()})


@dataclass(frozen=True)
class Dataset:
    """The three splits; `validation` and `test` may be empty. Sources that name their samples
    (tables, image folders) also give the class names they found (`labels`), the learned table
    preprocessing that ships in the model (`table`), each split's source rows or files
    (`sources`) and the bad samples `data.on_error: skip` dropped (`skipped`)."""

    train: Split
    validation: Split
    test: Split
    labels: dict[str, list[str]] = field(default_factory=dict)
    table: dict[str, Any] | None = None
    sources: dict[str, list[Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def splits(self) -> dict[str, Split]:
        return {k: s for k, s in (("train", self.train), ("validation", self.validation),
                                  ("test", self.test)) if len(s)}


def load_digits() -> dict[str, np.ndarray]:
    """The UCI handwritten digits shipped with nnspec: 1797 images of 8x8, values 0..16."""
    with resources.files("nnspec.compiler.data").joinpath("digits.npz").open("rb") as fh:
        with np.load(fh) as npz:
            return {"x": npz["x"], "y": npz["y"]}


def _load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise DataError(f"data.path: cannot read {path!r} as an .npz file: {err}") from None
    return arrays


def load_arrays(data: DataSpec, spec_folder: str) -> dict[str, np.ndarray]:
    """The raw arrays of a source: `x`/`y`, or `x_train`/`y_train`/`x_test`/`y_test`."""
    if data.source == "digits":
        return load_digits()
    if data.source in ("mnist", "fashion_mnist"):
        from nnspec.compiler.data.mnist import load_mnist

        return load_mnist(data.source)
    path = data.path if os.path.isabs(data.path or "") else os.path.join(spec_folder, data.path)
    return _load_npz(path)


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out); per class when `y` holds class labels, so small sets keep
    every class in every split."""
    order = rng.permutation(len(y))
    if fraction == 0:
        return order, order[:0]
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        held = []
        for c in np.unique(y):
            members = order[y[order] == c]
            held.append(members[: int(round(len(members) * fraction))])
        held_idx = np.concatenate(held)
    else:
        held_idx = order[: int(round(len(y) * fraction))]
    mask = np.zeros(len(y), bool)
    mask[held_idx] = True
    return order[~mask[order]], order[mask[order]]


def fit_input(x: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """Reshape samples to the input's shape (when the element counts agree) and cast them to
    its dtype; anything else is a `DataError` naming the input and both shapes."""
    want = tuple(spec.shape)
    got = x.shape[1:]
    if got != want and None not in want and math.prod(got) == math.prod(want):
        x = x.reshape((len(x), *want))
    elif len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
        raise DataError(f"input {name!r} expects samples of shape {want}, the data has "
                        f"{got}")
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
        if not np.array_equal(x, np.round(x)):
            raise DataError(f"input {name!r} is {spec.dtype} but the data holds non-integer "
                            f"values ({x.dtype})")
    if np.issubdtype(dtype, np.integer) and x.size:
        info = np.iinfo(dtype)
        if x.min() < info.min or x.max() > info.max:
            raise DataError(f"input {name!r} is {spec.dtype} but the data ranges over "
                            f"[{x.min()}, {x.max()}]")
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def _named(arrays: dict[str, np.ndarray], inputs: list[str], outputs: list[str],
           path: str) -> tuple[Split, Split]:
    """Training and given-test samples by input and output name. One input and one output may
    use the conventional names `x`/`y` (or `x_train`/`y_train`/`x_test`/`y_test`); otherwise
    arrays are named after the inputs and outputs (`NAME`, and `NAME_test` for a test split)."""
    def pick(names: list[str], short: str, suffix: str) -> dict[str, np.ndarray] | None:
        if all(f"{n}{suffix}" in arrays for n in names):
            return {n: arrays[f"{n}{suffix}"] for n in names}
        if len(names) == 1:
            for key in ((f"{short}{suffix}",) if suffix else (short, f"{short}_train")):
                if key in arrays:
                    return {names[0]: arrays[key]}
        return None

    x, y = pick(inputs, "x", ""), pick(outputs, "y", "")
    if x is None or y is None:
        want = ["x", "y"] if len(inputs) == len(outputs) == 1 else [*inputs, *outputs]
        raise DataError(f"data: {path} must hold arrays {want} (and optionally the same names "
                        f"with _test); it holds {sorted(arrays)}")
    xt, yt = pick(inputs, "x", "_test"), pick(outputs, "y", "_test")
    empty = Split({k: v[:0] for k, v in x.items()}, {k: v[:0] for k, v in y.items()})
    return Split(x, y), Split(xt, yt) if xt is not None and yt is not None else empty


def make_dataset(data: DataSpec, inputs: dict[str, InputSpec], outputs: list[str],
                 spec_folder: str = ".", labels: dict[str, list[str]] | None = None,
                 stream: str = "auto") -> Dataset:
    """Load a source and split it: a test split carved out unless the source has one, then a
    validation split from the training part (both stratified, seeded by `data.seed`).
    `labels`: the class names the spec declares per output (tables and image folders check
    their labels against them). `stream`: the run's `train.pipeline`; a streamed image
    folder's training images are decoded as they are read."""
    if data.source == "npy":
        from nnspec.compiler.data.mapped import mapped_dataset

        return mapped_dataset(data, inputs, outputs, spec_folder)
    if data.source == "array_record":
        from nnspec.compiler.data.arrayrecord import record_dataset

        return record_dataset(data, inputs, outputs, spec_folder)
    if data.source in ("csv", "parquet", "images"):
        from nnspec.compiler.data.sources import named_dataset

        return named_dataset(data, inputs, outputs, spec_folder, labels or {}, stream)
    return split_arrays(load_arrays(data, spec_folder), data, inputs, outputs,
                        data.path or data.source)


def split_arrays(arrays: dict[str, np.ndarray], data: DataSpec, inputs: dict[str, InputSpec],
                 outputs: list[str], where: str) -> Dataset:
    """Split arrays named after the inputs and outputs (or `x`/`y`) as `data` says: the
    arrays a spec's source gives, or the ones a Python caller passes to `nnspec.train`."""
    whole, test = _named(arrays, list(inputs), outputs, where)
    lengths = {len(v) for v in [*whole.x.values(), *whole.y.values()]}
    if len(lengths) != 1:
        raise DataError(f"data: {where} arrays have different numbers of samples: "
                        f"{ {k: len(v) for k, v in {**whole.x, **whole.y}.items()} }")
    rng = np.random.default_rng(data.seed)
    if data.limit:
        whole = whole.take(rng.permutation(len(whole))[: data.limit])
    first_y = next(iter(whole.y.values()))
    if not len(test):
        kept, held = _stratified_split(first_y, data.test_split, rng)
        whole, test = whole.take(kept), whole.take(held)
        first_y = next(iter(whole.y.values()))
    kept, held = _stratified_split(first_y, data.validation_split, rng)

    def fit(split: Split) -> Split:
        return Split({n: fit_input(split.x[n], inputs[n], n) for n in inputs}, split.y)

    return Dataset(fit(whole.take(kept)), fit(whole.take(held)), fit(test))

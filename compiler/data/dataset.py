"""A spec's `data` section to train, validation and test arrays shaped for the model's input."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec


@dataclass(frozen=True)
class Split:
    """Samples of one split: model input `x` and integer or float targets `y`."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Dataset:
    """The three splits; `validation` and `test` may be empty."""

    train: Split
    validation: Split
    test: Split

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
    for keys in (("x", "y"), ("x_train", "y_train")):
        if all(k in arrays for k in keys):
            return arrays
    raise DataError(f"data.path: {path!r} must hold arrays 'x' and 'y' (or 'x_train', 'y_train' "
                    f"and optionally 'x_test', 'y_test'); it holds {sorted(arrays)}")


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


def make_dataset(data: DataSpec, inputs: dict[str, InputSpec], spec_folder: str = ".") -> Dataset:
    """Load a source and split it: a test split carved out unless the source has one, then a
    validation split from the training part (both stratified, seeded by `data.seed`)."""
    if len(inputs) != 1:
        raise DataError(f"data sources feed one input; the model has {len(inputs)} "
                        f"({', '.join(inputs)})")
    (name, spec), = inputs.items()
    arrays = load_arrays(data, spec_folder)
    rng = np.random.default_rng(data.seed)
    if "x_train" in arrays:
        x, y = arrays["x_train"], arrays["y_train"]
        test = Split(arrays.get("x_test", x[:0]), arrays.get("y_test", y[:0]))
        if data.limit:
            keep = rng.permutation(len(x))[: data.limit]
            x, y = x[keep], y[keep]
    else:
        x, y = arrays["x"], arrays["y"]
        if data.limit:
            keep = rng.permutation(len(x))[: data.limit]
            x, y = x[keep], y[keep]
        kept, held = _stratified_split(y, data.test_split, rng)
        test = Split(x[held], y[held])
        x, y = x[kept], y[kept]
    if len(x) != len(y):
        raise DataError(f"data has {len(x)} samples but {len(y)} targets")
    kept, held = _stratified_split(y, data.validation_split, rng)
    fit = lambda s: Split(fit_input(s.x, spec, name), s.y)  # noqa: E731
    return Dataset(fit(Split(x[kept], y[kept])), fit(Split(x[held], y[held])), fit(test))

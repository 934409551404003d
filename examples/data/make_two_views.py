"""Write `digits_two_views.npz`, the data of `examples/two_inputs.yaml`, from the UCI
handwritten digits that ship with nnspec (see README.md in this folder).

Two views of each of the 1797 digits, plus its label, as arrays named after the spec's inputs
and output (how an .npz feeds a model with several inputs):

    image    (1797, 8, 8, 1) uint8    the 8x8 image, pixel values 0..16
    profile  (1797, 16)      float32  its 8 row sums then its 8 column sums, divided by 16
                                      (so each lies in 0..8)
    digit    (1797,)         int64    the class, 0..9

Samples keep the order of the shipped digits; the spec's `data` section shuffles and splits
them. The output is byte-for-byte reproducible (fixed zip timestamps, fixed array order):

    python examples/data/make_two_views.py            # rewrites examples/data/digits_two_views.npz
    python examples/data/make_two_views.py --out FILE
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

from nnspec.compiler.data.dataset import load_digits

HERE = Path(__file__).resolve().parent


def two_views() -> dict[str, np.ndarray]:
    """The three arrays, in the order they are written."""
    digits = load_digits()
    x = digits["x"].astype(np.uint8)  # (n, 8, 8), 0..16
    rows = x.sum(axis=2, dtype=np.float32)  # (n, 8): sum over each row's pixels
    cols = x.sum(axis=1, dtype=np.float32)  # (n, 8): sum over each column's pixels
    return {
        "image": x[..., None],
        "profile": np.concatenate([rows, cols], axis=1) / np.float32(16),
        "digit": digits["y"].astype(np.int64),
    }


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """As `np.savez_compressed`, but with a fixed timestamp on every member so that the same
    arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits_two_views.npz")
    args = parser.parse_args()
    arrays = two_views()
    save_npz(args.out, arrays)
    shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items())
    print(f"{args.out}: {shapes}")


if __name__ == "__main__":
    main()

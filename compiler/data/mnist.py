"""Load MNIST and Fashion-MNIST from their gzipped IDX files, downloaded and verified.

Checksum sources (SHA-256 of the upstream .gz archives; each set confirmed in two projects):
- MNIST: tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (commit 31f1255e,
  which also gives the mirror used here and the sizes 9912422 / 28881 / 1648877 / 4542 bytes),
  and pytorch/vision, torchvision/prototype/datasets/_builtin/mnist.py (MNIST._CHECKSUMS).
- Fashion-MNIST: tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt
  (commit 333639b3, with sizes 26421880 / 29515 / 4422102 / 5148 bytes), and pytorch/vision,
  torchvision/prototype/datasets/_builtin/mnist.py (FashionMNIST._CHECKSUMS).

Debian's package dataset-fashion-mnist ships the same four files under
/usr/share/datasets/fashion-mnist/, but recompressed (each .gz is 24 bytes smaller than
upstream's), so their archive checksums differ; those files are checked by content instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnspec.compiler.data.download import default_cache_dir, fetch
from nnspec.compiler.data.idx import read_idx

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "EXPECTED_COUNTS",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_URL",
    "FILES",
    "MNIST_SHA256",
    "MNIST_URL",
    "load_mnist",
]

# Output key -> archive file name; both datasets use the same names.
FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# fmt: on

# Key and value on separate lines keep the 64-hex values within the line length.
# fmt: off
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz":
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

# Where Debian's dataset-fashion-mnist package installs the files. Looked up at call time, so
# tests can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Image counts of the full splits. Local files carry no trusted checksum, so these (with the
# image size and label range) are what tells a complete copy from a damaged one.
EXPECTED_COUNTS: dict[str, int] = {"train": 60_000, "test": 10_000}

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class _Dataset:
    url: str
    url_env: str
    sha256: dict[str, str]
    has_debian_copy: bool


_DATASETS: dict[str, _Dataset] = {
    "mnist": _Dataset(MNIST_URL, "NNSPEC_MNIST_URL", MNIST_SHA256, False),
    "fashion_mnist": _Dataset(
        FASHION_MNIST_URL, "NNSPEC_FASHION_MNIST_URL", FASHION_MNIST_SHA256, True
    ),
}
DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)


def _dataset(name: str) -> _Dataset:
    """Return the registry entry for `name`; ValueError listing the valid names otherwise."""
    try:
        return _DATASETS[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}, expected one of {valid}") from None


def _checksums(defaults: dict[str, str], override: dict[str, str] | None) -> dict[str, str]:
    """Merge per-file checksum overrides into the defaults, rejecting unknown file names."""
    if not override:
        return dict(defaults)
    unknown = sorted(set(override) - set(defaults))
    if unknown:
        raise ValueError(
            f"sha256 override names unknown files {unknown}, expected some of {sorted(defaults)}"
        )
    return {**defaults, **override}


def _join_url(base_url: str, filename: str) -> str:
    """Join a mirror URL and a file name, whether or not the mirror ends with '/'."""
    return base_url.rstrip("/") + "/" + filename


def _debian_paths(dataset: _Dataset) -> dict[str, Path] | None:
    """Return the Debian package's files for `dataset` if all of them are installed."""
    if not dataset.has_debian_copy:
        return None
    paths = {key: DEBIAN_FASHION_MNIST_DIR / fname for key, fname in FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _check_split(
    images: np.ndarray,
    labels: np.ndarray,
    images_path: Path,
    labels_path: Path,
    expected_count: int | None,
) -> None:
    """Raise ValueError naming the file unless images/labels form a valid MNIST-style split."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: holds {len(labels)} labels, but {images_path} holds "
            f"{len(images)} images; expected equal counts"
        )
    if expected_count is not None and len(images) != expected_count:
        raise ValueError(f"{images_path}: holds {len(images)} images, expected {expected_count}")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(
            f"{labels_path}: label {int(labels.max())} out of range, expected 0..{NUM_CLASSES - 1}"
        )


def _read_checked(paths: dict[str, Path], full_size: bool) -> dict[str, np.ndarray]:
    """Read the four IDX files and validate each split; `full_size` also checks the counts."""
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = f"x_{split}", f"y_{split}"
        count = EXPECTED_COUNTS[split] if full_size else None
        _check_split(arrays[x], arrays[y], paths[x], paths[y], count)
    return arrays


def load_mnist(
    name: str = "mnist",
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    sha256: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Load MNIST or Fashion-MNIST as uint8 arrays.

    Returns {"x_train": (N, 28, 28), "y_train": (N,), "x_test": (M, 28, 28), "y_test": (M,)}.

    `name` is "mnist" or "fashion_mnist". The archives are downloaded from `base_url`, else from
    $NNSPEC_MNIST_URL / $NNSPEC_FASHION_MNIST_URL, else from the default mirror, into
    `cache_dir / name` (cache_dir defaults to default_cache_dir()), and verified against the
    pinned SHA-256 checksums; `sha256` overrides them per file name. For "fashion_mnist" with no
    mirror given, the files of Debian's dataset-fashion-mnist package are used when installed
    (checked by content, as their archives differ from upstream's).

    Raises ValueError for an unknown name or invalid data (naming the file), DownloadError when
    a download fails or does not match its checksum.
    """
    dataset = _dataset(name)
    checksums = _checksums(dataset.sha256, sha256)
    mirror = base_url or os.environ.get(dataset.url_env) or None

    if mirror is None:
        local = _debian_paths(dataset)
        if local is not None:
            return _read_checked(local, full_size=True)

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / name
    url = mirror or dataset.url
    paths = {
        key: fetch(_join_url(url, fname), checksums[fname], cache_dir=folder, filename=fname)
        for key, fname in FILES.items()
    }
    return _read_checked(paths, full_size=False)

"""Tests for the IDX reader/writer, the verified downloader and the MNIST loaders.

Everything is served from a loopback HTTP server holding small IDX files written here, so the
tests need no internet and never touch the user's cache (cache_dir is always under tmp_path).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import http.server
import re
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from nnspec.compiler.data import download, idx, mnist

N_TRAIN, N_TEST = 20, 10


# --------------------------------------------------------------------------- fixtures


@dataclass
class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving `root`, recording each request path."""

    root: Path
    httpd: http.server.ThreadingHTTPServer
    thread: threading.Thread
    requests: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mirror overrides from the developer's shell would redirect load_mnist; a proxy would
    # swallow the loopback requests.
    for var in ("NNSPEC_MNIST_URL", "NNSPEC_FASHION_MNIST_URL", "NNSPEC_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            with lock:
                requests.append(self.path)
            super().do_GET()

        def log_message(self, format, *args) -> None:
            pass  # keep pytest output clean

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval makes shutdown() return promptly instead of after up to 0.5 s.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    srv = LoopbackServer(root, httpd, thread, requests)
    yield srv
    srv.stop()


def make_dataset(seed: int = 0) -> dict[str, np.ndarray]:
    """Small random MNIST-shaped arrays, keyed like load_mnist's result."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=N_TRAIN, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=N_TEST, dtype=np.uint8),
    }


def write_dataset(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write `arrays` as the four gzipped IDX files in `folder`; return their sha256 by name."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for key, fname in mnist.FILES.items():
        idx.write_idx(folder / fname, arrays[key])
        checksums[fname] = sha256_of(folder / fname)
    return checksums


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Values spread over (at most) -1000..1000, clipped to what `dtype` can hold."""
    values = rng.uniform(-1000, 1000, size=shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return np.asarray(values).astype(dtype)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == {"x_train", "y_train", "x_test", "y_test"}
    for key, array in want.items():
        assert got[key].dtype == np.uint8, key
        np.testing.assert_array_equal(got[key], array, err_msg=key)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download attempt fail loudly instead of reaching the real mirrors."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected network access: {args[0]!r}")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 3, 5), (2, 1, 3, 2), (0, 28, 28)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, dtype, shape, suffix: str) -> None:
    array = random_array(shape, np.dtype(dtype), np.random.default_rng(1))
    path = tmp_path / f"a.idx{suffix}"
    idx.write_idx(path, array)
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    assert back.flags.writeable
    assert files_in(tmp_path) == [path.name]  # no temp file left behind


def test_idx_compression_is_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    plain_named_gz = tmp_path / "plain.gz"
    gz_named_plain = tmp_path / "compressed.idx"
    idx.write_idx(plain_named_gz, array, compress=False)
    idx.write_idx(gz_named_plain, array, compress=True)
    assert plain_named_gz.read_bytes()[:4] == b"\x00\x00\x0c\x03"
    assert gz_named_plain.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(idx.read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(idx.read_idx(gz_named_plain), array)


def test_read_idx_parses_big_endian_bytes(tmp_path: Path) -> None:
    # Hand-made bytes, so a reader and writer that agree on the wrong byte order still fail.
    raw = b"\x00\x00\x0b\x02" + struct.pack(">ii", 2, 2) + struct.pack(">hhhh", 1, -2, 258, -300)
    path = tmp_path / "i16.idx"
    path.write_bytes(raw)
    np.testing.assert_array_equal(idx.read_idx(path), [[1, -2], [258, -300]])
    assert idx.encode_idx(np.array([[1, -2], [258, -300]], dtype=np.int16)) == raw


def test_read_idx_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    idx.write_idx(path, np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"expected 7840 bytes of data .*found 7740") as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_gzip_names_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    idx.write_idx(path, np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="gzip") as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_gzip_of_short_data(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    header = b"\x00\x00\x08\x01" + struct.pack(">i", 1000)
    path.write_bytes(gzip.compress(header + bytes(10)))
    with pytest.raises(ValueError, match=r"labels\.gz: expected 1000 bytes of data.*found 10"):
        idx.read_idx(path)


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">i", 3) + bytes(3), "bad IDX magic 01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">i", 3) + bytes(3), "unknown IDX dtype code 0x07"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03" + struct.pack(">i", 3), "declares 3 dimensions"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 3) + bytes(5), "expected 3 bytes .*found 5"),
    ],
)
def test_read_idx_malformed(tmp_path: Path, raw: bytes, pattern: str) -> None:
    path = tmp_path / "bad-file.idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=pattern) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.uint16, np.int64])
def test_write_idx_rejects_unsupported_dtype(tmp_path: Path, dtype) -> None:
    with pytest.raises(ValueError, match=f"cannot store dtype {np.dtype(dtype)}"):
        idx.write_idx(tmp_path / "x.idx", np.zeros(3, dtype))
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------- download


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NNSPEC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("NNSPEC_DATA")
    assert download.default_cache_dir() == tmp_path / "xdg" / "nnspec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.default_cache_dir() == tmp_path / "home" / ".cache" / "nnspec"


def test_fetch_downloads_verifies_and_caches(server: LoopbackServer, tmp_path: Path) -> None:
    (server.root / "blob.bin").write_bytes(b"hello " * 1000)
    digest = sha256_of(server.root / "blob.bin")
    cache = tmp_path / "cache"
    path = download.fetch(server.url + "blob.bin", digest.upper(), cache_dir=cache)
    assert path == cache / "blob.bin"
    assert path.read_bytes() == b"hello " * 1000
    server.stop()
    assert download.fetch(server.url + "blob.bin", digest, cache_dir=cache) == path
    assert server.requests == ["/blob.bin"]


def test_fetch_wrong_checksum_leaves_nothing(server: LoopbackServer, tmp_path: Path) -> None:
    (server.root / "blob.bin").write_bytes(b"payload")
    actual = sha256_of(server.root / "blob.bin")
    expected = "0" * 64
    cache = tmp_path / "cache"
    url = server.url + "blob.bin"
    with pytest.raises(download.DownloadError) as err:
        download.fetch(url, expected, cache_dir=cache)
    message = str(err.value)
    assert url in message and expected in message and actual in message
    assert files_in(cache) == []


def test_fetch_redownloads_corrupt_cache(server: LoopbackServer, tmp_path: Path) -> None:
    (server.root / "blob.bin").write_bytes(b"good bytes")
    digest = sha256_of(server.root / "blob.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(b"bad bytes")
    path = download.fetch(server.url + "blob.bin", digest, cache_dir=cache)
    assert path.read_bytes() == b"good bytes"
    assert server.requests == ["/blob.bin"]
    assert files_in(cache) == ["blob.bin"]


def test_fetch_corrupt_cache_and_wrong_download_says_so(
    server: LoopbackServer, tmp_path: Path
) -> None:
    (server.root / "blob.bin").write_bytes(b"served")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(b"stale")
    expected = hashlib.sha256(b"what we want").hexdigest()
    with pytest.raises(download.DownloadError, match="cached copy .*re-downloaded") as err:
        download.fetch(server.url + "blob.bin", expected, cache_dir=cache)
    assert hashlib.sha256(b"stale").hexdigest() in str(err.value)
    assert files_in(cache) == ["blob.bin"]  # no partial file beside it


def test_fetch_http_error_names_url(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.url + "missing.gz"
    with pytest.raises(download.DownloadError, match=re.escape(url) + ".*404"):
        download.fetch(url, "a" * 64, cache_dir=tmp_path / "cache")
    assert files_in(tmp_path / "cache") == []


def test_fetch_connection_refused_names_url(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.url + "x.gz"
    server.stop()  # the port is now closed
    with pytest.raises(download.DownloadError, match=re.escape(url)):
        download.fetch(url, "a" * 64, cache_dir=tmp_path / "cache", timeout=5)
    assert files_in(tmp_path / "cache") == []


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "a" * 63])
def test_fetch_rejects_malformed_sha256(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        download.fetch("http://127.0.0.1:9/x", bad, cache_dir=tmp_path)


# --------------------------------------------------------------------------- mnist


def test_load_mnist_downloads_then_serves_from_cache(
    server: LoopbackServer, tmp_path: Path
) -> None:
    arrays = make_dataset()
    checksums = write_dataset(server.root, arrays)
    cache = tmp_path / "cache"
    got = mnist.load_mnist("mnist", cache_dir=cache, base_url=server.url, sha256=checksums)
    assert_same(got, arrays)
    assert sorted(server.requests) == sorted("/" + f for f in mnist.FILES.values())
    assert files_in(cache / "mnist") == sorted(mnist.FILES.values())

    server.stop()
    again = mnist.load_mnist("mnist", cache_dir=cache, base_url=server.url, sha256=checksums)
    assert_same(again, arrays)
    assert len(server.requests) == 4


def test_load_mnist_redownloads_corrupt_cached_file(server: LoopbackServer, tmp_path: Path) -> None:
    arrays = make_dataset()
    checksums = write_dataset(server.root, arrays)
    cache = tmp_path / "cache"
    mnist.load_mnist("mnist", cache_dir=cache, base_url=server.url, sha256=checksums)
    cached = cache / "mnist" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes()[:-10])
    got = mnist.load_mnist("mnist", cache_dir=cache, base_url=server.url, sha256=checksums)
    assert_same(got, arrays)
    assert server.requests[4:] == ["/t10k-images-idx3-ubyte.gz"]


def test_load_mnist_wrong_checksum(server: LoopbackServer, tmp_path: Path) -> None:
    checksums = write_dataset(server.root, make_dataset())
    actual = checksums["train-images-idx3-ubyte.gz"]
    wrong = hashlib.sha256(b"something else").hexdigest()
    checksums["train-images-idx3-ubyte.gz"] = wrong
    cache = tmp_path / "cache"
    with pytest.raises(download.DownloadError) as err:
        mnist.load_mnist("mnist", cache_dir=cache, base_url=server.url, sha256=checksums)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and wrong in message and actual in message
    assert "train-images-idx3-ubyte.gz" not in files_in(cache)
    assert not [name for name in files_in(cache) if name.startswith(".")]


def test_load_mnist_url_from_environment(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = make_dataset(3)
    checksums = write_dataset(server.root / "mirror", arrays)
    monkeypatch.setenv("NNSPEC_MNIST_URL", server.url + "mirror")  # no trailing slash
    got = mnist.load_mnist("mnist", cache_dir=tmp_path / "cache", sha256=checksums)
    assert_same(got, arrays)
    assert all(r.startswith("/mirror/") for r in server.requests) and len(server.requests) == 4


def test_load_mnist_datasets_cache_separately(server: LoopbackServer, tmp_path: Path) -> None:
    # Both datasets use the same file names; a shared folder would mix them up.
    digits, clothes = make_dataset(1), make_dataset(2)
    sums_digits = write_dataset(server.root / "d", digits)
    sums_clothes = write_dataset(server.root / "f", clothes)
    cache = tmp_path / "cache"
    got_d = mnist.load_mnist("mnist", cache, base_url=server.url + "d/", sha256=sums_digits)
    got_f = mnist.load_mnist(
        "fashion_mnist", cache, base_url=server.url + "f/", sha256=sums_clothes
    )
    assert_same(got_d, digits)
    assert_same(got_f, clothes)


def test_load_mnist_rejects_bad_labels(server: LoopbackServer, tmp_path: Path) -> None:
    arrays = make_dataset()
    arrays["y_test"][3] = 10
    checksums = write_dataset(server.root, arrays)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 out of range"):
        mnist.load_mnist("mnist", tmp_path / "cache", base_url=server.url, sha256=checksums)


def test_load_mnist_rejects_count_mismatch(server: LoopbackServer, tmp_path: Path) -> None:
    arrays = make_dataset()
    arrays["y_train"] = arrays["y_train"][:-1]
    checksums = write_dataset(server.root, arrays)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: holds 19 labels"):
        mnist.load_mnist("mnist", tmp_path / "cache", base_url=server.url, sha256=checksums)


def test_load_mnist_rejects_wrong_image_shape(server: LoopbackServer, tmp_path: Path) -> None:
    arrays = make_dataset()
    arrays["x_test"] = np.zeros((N_TEST, 28, 27), np.uint8)
    checksums = write_dataset(server.root, arrays)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: expected uint8 images"):
        mnist.load_mnist("mnist", tmp_path / "cache", base_url=server.url, sha256=checksums)


def test_load_mnist_unknown_name() -> None:
    with pytest.raises(ValueError, match="'emnist'.*'mnist'.*'fashion_mnist'"):
        mnist.load_mnist("emnist")


def test_load_mnist_unknown_checksum_override(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown files"):
        mnist.load_mnist("mnist", tmp_path, base_url="http://127.0.0.1:9/", sha256={"x.gz": "0"})


@pytest.fixture
def debian_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    folder.mkdir()
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_MNIST_DIR", folder)
    return folder


def test_fashion_mnist_uses_debian_files(
    debian_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    arrays = make_dataset(5)
    # Debian's archives differ from upstream's: the pinned checksums must not be applied.
    write_dataset(debian_dir, arrays)
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": N_TRAIN, "test": N_TEST})
    cache = tmp_path / "cache"
    assert_same(mnist.load_mnist("fashion_mnist", cache_dir=cache), arrays)
    assert not cache.exists()


def test_fashion_mnist_debian_files_must_be_full_size(
    debian_dir: Path, tmp_path: Path, no_network: None
) -> None:
    write_dataset(debian_dir, make_dataset(5))  # 20 images, not the 60000 of the real set
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: holds 20 images.*60000"):
        mnist.load_mnist("fashion_mnist", cache_dir=tmp_path / "cache")


def test_fashion_mnist_debian_labels_checked(
    debian_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    arrays = make_dataset(5)
    arrays["y_train"][0] = 200
    write_dataset(debian_dir, arrays)
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": N_TRAIN, "test": N_TEST})
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: label 200"):
        mnist.load_mnist("fashion_mnist", cache_dir=tmp_path / "cache")


def test_fashion_mnist_base_url_bypasses_debian(
    debian_dir: Path, server: LoopbackServer, tmp_path: Path
) -> None:
    write_dataset(debian_dir, make_dataset(5))
    served = make_dataset(6)
    checksums = write_dataset(server.root, served)
    got = mnist.load_mnist("fashion_mnist", tmp_path / "cache", server.url, checksums)
    assert_same(got, served)
    assert len(server.requests) == 4


def test_mnist_ignores_debian_fashion_files(
    debian_dir: Path, server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dataset(debian_dir, make_dataset(5))
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": N_TRAIN, "test": N_TEST})
    digits = make_dataset(7)
    checksums = write_dataset(server.root, digits)
    assert_same(mnist.load_mnist("mnist", tmp_path / "c", server.url, checksums), digits)


def test_real_checksum_constants() -> None:
    tables = [mnist.MNIST_SHA256, mnist.FASHION_MNIST_SHA256]
    for table in tables:
        assert set(table) == set(mnist.FILES.values())
    values = [v for table in tables for v in table.values()]
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in values)
    assert len(set(values)) == len(values) == 8
    # Spot-check one pinned value per dataset against the published ones.
    assert mnist.MNIST_SHA256["t10k-labels-idx1-ubyte.gz"].startswith("f7ae60f92e00ec6d")
    assert mnist.FASHION_MNIST_SHA256["t10k-labels-idx1-ubyte.gz"].startswith("67da17c76eaffca5")


def test_modules_import_only_stdlib_numpy_and_siblings() -> None:
    # These loaders must work without the training stack: no jax, flax or optax import.
    # Checked on the source, since importing nnspec may pull in other parts of the package.
    allowed_third_party = {"numpy", "nnspec"}
    for module in (idx, download, mnist):
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top in allowed_third_party
                assert ok, f"{module.__name__} imports {name}"

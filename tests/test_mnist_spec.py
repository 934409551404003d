"""examples/mnist_mlp.yaml end to end on small IDX files served over loopback HTTP (the real
MNIST cannot be downloaded here): the downloader, the checksums, the cache and training."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
from conftest import EXAMPLES

from nnspec.compiler.data import mnist
from nnspec.compiler.data.idx import write_idx
from nnspec.main import main


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback mirror holding 200 train and 50 test 28x28 images, and the pinned checksums
    replaced by theirs."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 200).astype(np.uint8),
              "x_test": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 50).astype(np.uint8)}
    for key, name in mnist.FILES.items():
        write_idx(folder / name, arrays[key])
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(mnist.MNIST_SHA256, name, digest)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    monkeypatch.setenv("NNSPEC_MNIST_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("NNSPEC_DATA", str(tmp_path / "cache"))
    yield arrays, requests
    server.shutdown()
    server.server_close()


def test_mnist_spec_trains_on_a_mirror(mirror, tmp_path, capsys):
    arrays, requests = mirror
    out = tmp_path / "run"
    code = main(["train", str(EXAMPLES / "mnist_mlp.yaml"), "--out", str(out), "-q",
                 "--set", "train.epochs=1"])
    assert code == 0, capsys.readouterr().err
    assert sorted(requests) == sorted(f"/{n}" for n in mnist.FILES.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 2  # 180 training images in batches of 128
    assert json.loads((out / "parity.json").read_text())["passed"]
    # A second run is served from the cache.
    assert main(["train", str(EXAMPLES / "mnist_mlp.yaml"), "--out", str(out), "-q",
                 "--set", "train.epochs=1"]) == 0
    assert len(requests) == 4


def test_tampered_mirror_is_refused(mirror, tmp_path, capsys):
    arrays, _ = mirror
    name = mnist.FILES["y_test"]
    mnist.MNIST_SHA256[name] = "0" * 64
    code = main(["train", str(EXAMPLES / "mnist_mlp.yaml"), "--out", str(tmp_path / "run"),
                 "-q", "--set", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "0" * 64 in err and name in err
    assert not (tmp_path / "run" / "model.onnx").exists()

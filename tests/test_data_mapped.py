"""`data.source: npy`: a folder of memory-mapped .npy files streams through training exactly as
the same arrays in memory do (same weights, bit for bit), and bad folders are located errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import run_cli

from nnspec.compiler.data.dataset import load_digits, make_dataset
from nnspec.spec.errors import DataError
from nnspec.spec.validate import load_spec

SPEC = """\
version: 1
name: mapped
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, units: 32, activation: relu}
  - {type: dense, units: 10, activation: softmax}
outputs:
  digit: {}
data: {source: npy, path: arrays, validation_split: 0}
train:
  epochs: 3
  batch_size: 64
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  pipeline: stream
"""


def _write(tmp_path):
    digits = load_digits()
    folder = tmp_path / "arrays"
    folder.mkdir()
    x, y = digits["x"].astype(np.uint8), digits["y"].astype(np.int64)
    # The npz route shuffles its training part once (seed 0) while splitting; the mapped
    # folder keeps the stored order, so store it in that order: the same training set.
    order = np.random.default_rng(0).permutation(1400)
    np.save(folder / "pixels.npy", x[:1400][order])
    np.save(folder / "digit.npy", y[:1400][order])
    np.save(folder / "pixels_test.npy", x[1400:])
    np.save(folder / "digit_test.npy", y[1400:])
    np.savez(tmp_path / "arrays.npz", x=x[:1400], y=y[:1400], x_test=x[1400:],
             y_test=y[1400:])
    (tmp_path / "mapped.yaml").write_text(SPEC)
    return folder


def test_mapped_folder_trains_bit_identical_to_arrays_in_memory(tmp_path):
    _write(tmp_path)
    loaded = load_spec(tmp_path / "mapped.yaml")
    data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["digit"], loaded.folder)
    assert data.train.x["pixels"].base is not None  # a view over the mapping, not a copy
    assert len(data.train) == 1400 and len(data.test) == 397
    runs = {}
    for source in ("npy", "npz"):
        args = ["--set", f"data.source={source}"]
        if source == "npz":
            args += ["--set", "data.path=arrays.npz"]
        out = tmp_path / source
        result = run_cli("train", str(tmp_path / "mapped.yaml"), "--out", str(out), "-q", *args)
        assert result.returncode == 0, result.stderr
        runs[source] = out
    assert (runs["npy"] / "weights.msgpack").read_bytes() == (
        runs["npz"] / "weights.msgpack").read_bytes()
    metrics = json.loads((runs["npy"] / "metrics.json").read_text())
    assert metrics["training"]["pipeline"] == "stream"
    assert metrics["test"] == json.loads((runs["npz"] / "metrics.json").read_text())["test"]


def test_mapped_folder_errors_name_the_file(tmp_path):
    folder = _write(tmp_path)
    loaded = load_spec(tmp_path / "mapped.yaml")

    def error() -> str:
        with pytest.raises(DataError) as err:
            make_dataset(loaded.spec.data, loaded.spec.inputs, ["digit"], loaded.folder)
        return str(err.value)

    np.save(folder / "pixels.npy", np.zeros((1400, 8, 8), np.float32))
    assert "input 'pixels' is uint8, the file holds float32" in error()
    np.save(folder / "pixels.npy", np.zeros((1400, 64), np.uint8))
    assert "expects samples of shape (8, 8), the file holds (64,)" in error()
    data = (folder / "digit.npy").read_bytes()
    (folder / "digit.npy").unlink()
    assert "has no digit.npy; it holds" in error()
    (folder / "digit.npy").write_bytes(data)
    np.save(folder / "pixels.npy", np.zeros((1400, 8, 8), np.uint8))
    raw = (folder / "pixels.npy").read_bytes()
    (folder / "pixels.npy").write_bytes(raw[: len(raw) // 2])
    assert "truncated" in error()


READERS = ["native", "pread", "python"]
"""gather.cc's gather (io_uring where the kernel allows it), its pread loop, the Python loop."""


def _use_reader(monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    from nnspec.compiler.data import mapped as mapped_module
    from nnspec.compiler.kernels.build import KernelUnavailable

    fn = None
    if reader != "python":
        try:
            fn = mapped_module.native_reader(
                "nnspec_gather_rows" if reader == "native" else "nnspec_gather_rows_pread")
        except KernelUnavailable:
            pytest.skip("no C++ compiler here: the native row gather is not built")
    monkeypatch.setattr(mapped_module, "_gather", [fn])


@pytest.mark.parametrize("reader", READERS)
def test_mapped_rows_read_with_pread_equal_numpy_indexing(tmp_path, monkeypatch, reader):
    from nnspec.compiler.data.mapped import open_npy

    # The native gathers (gather.cc) and the Python loop they stand in for read the same bytes.
    _use_reader(monkeypatch, reader)
    a = np.arange(6000, dtype=np.float64).reshape(1000, 2, 3)
    np.save(tmp_path / "a.npy", a)
    mapped = open_npy(str(tmp_path / "a.npy"))
    rows = np.array([[3, 999], [0, -1]])
    assert np.array_equal(np.take(mapped, rows, axis=0), a[rows])  # the streamed gather
    assert np.array_equal(np.take(mapped[10:20], np.array([0, 9]), axis=0), a[[10, 19]])
    assert np.array_equal(mapped[[5, 7]], a[[5, 7]]) and np.array_equal(mapped[:3], a[:3])
    converted = np.asanyarray(mapped, np.float32)  # a copy: must not read the file's bytes
    assert np.array_equal(np.take(converted, rows, axis=0), a[rows].astype(np.float32))
    with pytest.raises(IndexError):
        np.take(mapped, np.array([1000]), axis=0)
    big = np.random.default_rng(0).integers(0, 255, (5000, 97), dtype=np.uint8)  # odd rows
    np.save(tmp_path / "b.npy", big)
    rows = np.random.default_rng(1).integers(-5000, 5000, (3, 700))
    assert np.array_equal(np.take(open_npy(str(tmp_path / "b.npy")), rows, axis=0), big[rows])


@pytest.mark.parametrize("reader", READERS)
def test_a_mapped_file_cut_short_under_a_reader_is_a_read_error(tmp_path, monkeypatch, reader):
    """The file shrinks after it was opened (rewritten by someone else): the gather says which
    row it could not read instead of returning the zeros past the end."""
    from nnspec.compiler.data.mapped import open_npy

    _use_reader(monkeypatch, reader)
    np.save(tmp_path / "a.npy", np.ones((1000, 16), np.float32))
    mapped = open_npy(str(tmp_path / "a.npy"))
    with open(tmp_path / "a.npy", "r+b") as fh:
        fh.truncate(mapped._start + 500 * 64)  # the header and 500 rows are left
    with pytest.raises(OSError, match="short read at row 900"):
        np.take(mapped, np.array([3, 900]), axis=0)


def test_threads_reading_mapped_rows_yield_to_the_training_step(tmp_path):
    """A reader thread (Grain's, evaluation's read-ahead) drops to the lowest priority the
    first time it reads, so its reads fill the gaps of the step's threads instead of
    preempting them; the main thread keeps its priority."""
    import os
    import threading

    from nnspec.compiler.data.mapped import READER_NICE, open_npy

    np.save(tmp_path / "a.npy", np.arange(4000, dtype=np.float32).reshape(1000, 4))
    mapped = open_npy(str(tmp_path / "a.npy"))
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def read() -> None:
        me = threading.get_native_id()
        seen.append(os.getpriority(os.PRIO_PROCESS, me))
        assert np.array_equal(np.take(mapped, np.array([7, 3]), axis=0)[:, 0], [28, 12])
        seen.append(os.getpriority(os.PRIO_PROCESS, me))

    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    assert seen == [main_before, max(READER_NICE, main_before)]
    np.take(mapped, np.array([1]), axis=0)  # on the main thread: left alone
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


def test_io_uring_can_be_turned_off_and_reads_the_same_rows(tmp_path):
    """`NNSPEC_IO_URING=0` reads with pread; either way the rows are the file's (a fresh
    process each: the reader is chosen once per process)."""
    import subprocess
    import sys

    a = np.random.default_rng(0).integers(0, 255, (3000, 1000), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    rows = np.random.default_rng(1).integers(0, 3000, 2000)
    np.save(tmp_path / "rows.npy", rows)
    script = (
        "import sys, numpy as np\n"
        "from nnspec.compiler.data.mapped import open_npy, reader_in_use\n"
        f"m = open_npy({str(tmp_path / 'a.npy')!r})\n"
        f"rows = np.load({str(tmp_path / 'rows.npy')!r})\n"
        "np.save(sys.argv[1], np.take(m, rows, axis=0)); print(reader_in_use())\n")
    used = {}
    for setting in ("1", "0"):
        out = tmp_path / f"out{setting}.npy"
        proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                              text=True, env={**os.environ, "NNSPEC_IO_URING": setting})
        assert proc.returncode == 0, proc.stderr
        used[setting] = proc.stdout.split()[-1]
        assert np.array_equal(np.load(out), a[rows])
    if used["1"] == "python":
        pytest.skip("no C++ compiler here: the native row gather is not built")
    assert used["0"] == "pread"
    assert used["1"] in ("io_uring", "pread")  # pread where the kernel or a seccomp refuses

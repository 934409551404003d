"""The streamed route on Grain: an ArrayRecord set decoded in Grain worker processes trains the
same weights, bit for bit, as the same samples in memory; a streamed `.npy` run stopped
mid-epoch records the loader's position and resumes to the uninterrupted run's bytes; bad
record files are located errors; a SIGKILLed streamed run resumes bit-identically (slow)."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli

from nnspec.compiler.data.arrayrecord import write_records
from nnspec.compiler.data.dataset import load_digits, make_dataset
from nnspec.compiler.data.mapped import open_npy
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.run import _prepare
from nnspec.compiler.train import engine
from nnspec.compiler.train.checkpoint import Checkpoints
from nnspec.compiler.train.engine import Interrupted, Trainer
from nnspec.compiler.train.feed import ChunkAt, epoch_rows
from nnspec.spec.errors import DataError
from nnspec.spec.validate import load_spec

SPEC = """\
version: 1
name: grain
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, units: 32, activation: relu}
  - {type: dropout, rate: 0.1}
  - {type: dense, units: 10, activation: softmax}
outputs:
  digit: {}
data: {source: npy, path: arrays, validation_split: 0}
train:
  epochs: 2
  batch_size: 64
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  seed: 2
  pipeline: stream
"""
N = 600  # training samples; the rest of the digits are the given test split


def _write(tmp_path):
    """The same digits as an npy folder, an ArrayRecord folder and an npz, in one order."""
    digits = load_digits()
    x, y = digits["x"].astype(np.uint8), digits["y"].astype(np.int64)
    x, y = x[:N + 200], y[:N + 200]
    (tmp_path / "arrays").mkdir()
    (tmp_path / "records").mkdir()
    for suffix, part in (("", slice(0, N)), ("_test", slice(N, None))):
        np.save(tmp_path / "arrays" / f"pixels{suffix}.npy", x[part])
        np.save(tmp_path / "arrays" / f"digit{suffix}.npy", y[part])
        write_records(str(tmp_path / "records" / f"digits{suffix}.array_record"),
                      {"pixels": x[part], "digit": y[part]})
    (tmp_path / "s.yaml").write_text(SPEC)
    return tmp_path / "s.yaml"


def _fit(path, *overrides, workers="auto", **kwargs):
    loaded, _ = check_spec(path, list(overrides))
    graph, heads, data = _prepare(loaded)
    trainer = Trainer(graph, loaded.spec.train, heads, len(data.train))
    trainer.workers = workers
    return trainer, trainer.fit(data, **kwargs)


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    """The npy folder's samples trained from memory on the device: what every streamed run
    below must equal, bit for bit."""
    path = _write(tmp_path_factory.mktemp("memory"))
    return _fit(path, "train.pipeline=device")[1]


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(x, y)


def test_element_is_a_pure_function_of_the_position(tmp_path):
    """The Grain element at a position: that step's rows of the engine's epoch permutation,
    the same after pickling (what a worker process receives) and across epochs."""
    _write(tmp_path)
    x = {"pixels": open_npy(str(tmp_path / "arrays" / "pixels.npy"))}
    y = {"digit": np.load(tmp_path / "arrays" / "digit.npy")}
    idx0, _ = engine._padded_batches(N, 64, 64)
    element = ChunkAt(x, y, 5, N, idx0, 4, (0, 64))
    copy = pickle.loads(pickle.dumps(element))
    assert len(pickle.dumps(element)) < 50_000  # the mapped file travels as its path
    for position in (0, 2, 3, 5):
        epoch, start, xs, ys = copy(position)
        assert (epoch, start) == element.where(position)
        rows = epoch_rows(5, epoch, N, idx0)[start:start + 4]
        rows = np.concatenate([rows, np.repeat(rows[:1], 4 - len(rows), 0)])
        np.testing.assert_array_equal(xs["pixels"], np.asarray(x["pixels"])[rows])
        np.testing.assert_array_equal(ys["digit"], y["digit"][rows])
    # 10 steps an epoch, chunks of 4: 3 chunks an epoch
    assert [element.where(p) for p in (2, 3, 4)] == [(1, 8), (2, 0), (2, 4)]


def test_array_record_through_grain_workers_equals_in_memory(tmp_path, memory):
    """Records decoded in two Grain worker processes, streamed: the weights of the same
    samples trained from memory on the device, bit for bit."""
    path = _write(tmp_path)
    trainer, records = _fit(path, "data.source=array_record", "data.path=records", workers=2)
    assert trainer.pipeline == "stream"
    _same(records, memory)
    assert records.metrics["test"] == memory.metrics["test"]


def test_stopped_mid_epoch_records_the_loader_and_resumes_bit_identical(tmp_path, monkeypatch,
                                                                       memory):
    """A streamed npy run stopped mid-epoch, resumed from its checkpoint: the in-memory
    run's weights and history."""
    path = _write(tmp_path)
    monkeypatch.setattr(engine, "FIRST_SPAN", 2)
    monkeypatch.setattr(engine, "CHUNK_SECONDS", 1e-9)  # one step a chunk after the first
    calls = iter(range(1000))
    store = Checkpoints(str(tmp_path / "ckpt"), keep=3)
    with pytest.raises(Interrupted):
        _fit(path, "train.checkpoint.every_steps=4", checkpoints=store,
             stop=lambda: next(calls) == 12)
    store.close()
    step = max(store.manager.all_steps())
    assert step % 10 != 0  # mid-epoch (10 steps an epoch)
    files = [f for f in (tmp_path / "ckpt" / str(step)).rglob("*") if f.is_file()
             and b'"loader"' in f.read_bytes()]
    record = json.loads(files[0].read_text())
    assert record["loader"] == {"loader": "grain", "seed": 2, "chunk": record["loader"]["chunk"],
                                "workers": 0, "epoch": record["epoch"], "step": record["batch"]}
    assert (record["loader"]["epoch"] - 1) * 10 + record["loader"]["step"] == step
    store = Checkpoints(str(tmp_path / "ckpt"), keep=3)
    _, resumed = _fit(path, "train.checkpoint.every_steps=4", checkpoints=store, resume=True)
    store.close()
    _same(resumed, memory)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in memory.history]


def test_bad_record_files_are_located_errors(tmp_path):
    path = _write(tmp_path)
    loaded = load_spec(path)
    data = loaded.spec.data.model_copy(update={"source": "array_record", "path": "records"})
    inputs, outputs = loaded.spec.inputs, ["digit"]
    good = make_dataset(data, inputs, outputs, loaded.folder)
    assert len(good.train) == N and len(good.test) == 200
    np.testing.assert_array_equal(good.train.x["pixels"][[3, 1]],
                                  load_digits()["x"][[3, 1]].astype(np.uint8))
    (tmp_path / "bad").mkdir()
    write_records(str(tmp_path / "bad" / "a.array_record"),
                  {"pixels": np.zeros((3, 4, 4), np.uint8), "digit": np.zeros(3, np.int64)})
    cases = [("nothing", "no such file or folder"),
             ("bad", r"input 'pixels' expects samples of shape \(8, 8\), the records hold "
                     r"\(4, 4\)")]
    for folder, message in cases:
        with pytest.raises(DataError, match=message):
            make_dataset(data.model_copy(update={"path": folder}), inputs, outputs,
                         loaded.folder)
    write_records(str(tmp_path / "bad" / "a.array_record"),
                  {"image": np.zeros((3, 8, 8), np.uint8), "digit": np.zeros(3, np.int64)})
    with pytest.raises(DataError, match=r"a.array_record: record 0 holds arrays \['digit', "
                                        r"'image'\], not \['pixels'\]"):
        make_dataset(data.model_copy(update={"path": "bad"}), inputs, outputs, loaded.folder)
    result = run_cli("train", str(path), "--set", "data.source=array_record", "--set",
                     "data.path=bad", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "record 0 holds arrays" in result.stderr


@pytest.mark.slow
def test_sigkill_mid_epoch_on_a_streamed_npy_set_resumes_bit_identical(tmp_path):
    """Through the CLI: SIGKILL a streamed run after its second epoch began, --resume, and
    the weights file equals an uninterrupted run's."""
    path = _write(tmp_path)
    text = SPEC.replace("epochs: 2", "epochs: 8").replace(
        "pipeline: stream", "pipeline: stream\n  checkpoint: {every_steps: 3, keep: 2}")
    path.write_text(text)
    base = [sys.executable, "-m", "nnspec", "train", str(path), "-q", "--out"]
    assert subprocess.run([*base, str(tmp_path / "whole")], cwd=ROOT).returncode == 0
    out = tmp_path / "cut"
    proc = subprocess.Popen([*base, str(out)], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = subprocess.run([*base, str(out), "--resume"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "weights.msgpack").read_bytes() == (
        tmp_path / "whole" / "weights.msgpack").read_bytes()


IMAGES = SPEC.replace("pixels: {shape: [8, 8], dtype: uint8}",
                      "pixels: {shape: [8, 8, 1], dtype: uint8}").replace(
    "data: {source: npy, path: arrays, validation_split: 0}",
    "data: {source: images, path: digits, validation_split: 0.1}")


def test_streamed_image_folder_decodes_in_workers_to_the_eager_weights(tmp_path):
    """A streamed image folder is checked (format, size) up front and decoded in a Grain
    worker as batches are read, its validation and test splits as they are evaluated: the
    weights, losses and metrics of the same folder decoded up front."""
    from PIL import Image
    from test_data_images import write_folders

    write_folders(tmp_path / "digits", count=300)
    path = tmp_path / "images.yaml"
    path.write_text(IMAGES)
    loaded = load_spec(path)
    lazy = make_dataset(loaded.spec.data, loaded.spec.inputs, ["digit"], loaded.folder,
                        stream="stream")
    for split in (lazy.train, lazy.validation, lazy.test):  # every split stays on disk
        assert type(split.x["pixels"]).__name__ == "ImageColumn"
    _, eager = _fit(path, "train.pipeline=device")
    trainer, streamed = _fit(path, workers=1)
    assert trainer.pipeline == "stream"
    _same(streamed, eager)
    # Validation and test evaluated through the files, a chunk at a time: the same numbers.
    assert [r["val_loss"] for r in streamed.history] == [r["val_loss"] for r in eager.history]
    assert streamed.metrics == eager.metrics
    np.testing.assert_array_equal(streamed.predictions["test"]["digit"],
                                  eager.predictions["test"]["digit"])
    # A file whose header reads but whose pixels do not: its path, when a batch reads it.
    victim = lazy.train.x["pixels"].files[7]
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)
    Image.fromarray(noise, mode="L").save(victim)
    with open(victim, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    with pytest.raises(DataError, match="cannot read it as an image"):
        lazy.train.x["pixels"].take([7])


@pytest.mark.slow
def test_two_hosts_each_read_their_columns_and_train_as_one(tmp_path):
    """Streamed under jax.distributed (two processes of two CPU devices): each process's
    loader reads only the batch columns its devices hold (make_array_from_process_local_data
    refuses anything else) and the run matches one process of four devices."""
    from conftest import SMALL
    from test_multihost import _finish, _history, _launch

    spec = tmp_path / "hosts.yaml"
    spec.write_text(SMALL + "  pipeline: stream\n")
    procs = _launch(spec, tmp_path / "two")
    four = run_cli("train", str(spec), "--out", str(tmp_path / "four"), "-q",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    (rc1, _, err1), (rc0, _, err0) = _finish(procs)
    assert (rc0, rc1) == (0, 0), err0 + err1
    assert four.returncode == 0, four.stderr
    training = json.loads((tmp_path / "two" / "metrics.json").read_text())["training"]
    assert (training["processes"], training["pipeline"]) == (2, "stream")
    a, b = _history(tmp_path / "two"), _history(tmp_path / "four")
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)


def test_streamed_image_folder_with_skip_finds_bad_pixels_before_training(tmp_path):
    """A file whose header reads but whose pixels do not: streamed with `on_error: skip` it is
    found up front (every image decoded once) and left out of every split, so the run stays a
    function of the seed; streamed with `fail` the header check passes and training stops
    with the file's path (exit 2) when a Grain worker reads its batch."""
    from PIL import Image
    from test_data_images import write_folders

    write_folders(tmp_path / "digits", count=120)
    path = tmp_path / "images.yaml"
    path.write_text(IMAGES)
    victim = sorted((tmp_path / "digits").rglob("*.png"))[5]
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)
    Image.fromarray(noise, mode="L").save(victim)
    with open(victim, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    loaded = load_spec(path)
    skip = loaded.spec.data.model_copy(update={"on_error": "skip"})
    lazy = make_dataset(skip, loaded.spec.inputs, ["digit"], loaded.folder, stream="stream")
    assert len(lazy.skipped) == 1 and str(victim) in lazy.skipped[0]
    assert str(victim) not in [f for files in lazy.sources.values() for f in files]
    assert type(lazy.train.x["pixels"]).__name__ == "ImageColumn"
    result = run_cli("train", str(path), "--set", "train.pipeline=stream", "--set",
                     "data.workers=1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{victim}: cannot read it as an image" in result.stderr

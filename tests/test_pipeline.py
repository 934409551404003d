"""How batches reach the step: fused loops, streamed chunks, chunk sizes, mid-epoch checkpoints.

Every route trains the same network on the same shipped digits; the routes differ only in where
the data lives and how many steps one compiled call runs, so their weights must be equal.
"""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.run import _prepare
from nnspec.compiler.train import engine as train
from nnspec.compiler.train import pipeline
from nnspec.compiler.train.checkpoint import Checkpoints
from nnspec.compiler.train.engine import Interrupted, Trainer

MLP = """\
version: 1
name: routes
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, units: 32, activation: relu}
  - {type: dropout, rate: 0.2}
  - {type: dense, units: 10, activation: softmax}
data: {source: digits, limit: 400}
train:
  epochs: 6
  batch_size: 32
  optimizer: {name: adam, learning_rate: 0.01}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 3
"""

CNN = """\
version: 1
name: routes_cnn
inputs:
  pixels: {shape: [8, 8, 1], dtype: uint8}
layers:
  - {type: rescale, scale: 0.0625}
  - {type: conv2d, filters: 4, kernel_size: 3, activation: relu}
  - {type: max_pool2d, pool_size: 2}
  - {type: flatten}
  - {type: dense, units: 10, activation: softmax}
data: {source: digits, limit: 200}
train:
  epochs: 2
  batch_size: 32
  loss: categorical_crossentropy
  seed: 3
"""


def fit(tmp_path, text, *overrides, name="spec", **kwargs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    loaded, _ = check_spec(path, overrides)
    graph, heads, data = _prepare(loaded)
    trainer = Trainer(graph, loaded.spec.train, heads, len(data.train))
    return trainer, trainer.fit(data, **kwargs)


def leaves(result):
    return jax.tree.leaves(result.variables)


def assert_same(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The MLP through one call per step with the data on the device."""
    return fit(tmp_path_factory.mktemp("ref"), MLP, "train.loop=step", "train.pipeline=device")


@pytest.mark.parametrize("loop, route", [("fused", "device"), ("fused", "stream"),
                                         ("step", "stream")])
def test_every_route_trains_the_same_weights(tmp_path, reference, loop, route):
    trainer, result = fit(tmp_path, MLP, f"train.loop={loop}", f"train.pipeline={route}")
    assert (trainer.loop, trainer.pipeline) == (loop, route)
    assert (result.input_wait_seconds > 0) == (route == "stream")  # the first chunk is waited
    assert result.input_wait_seconds < result.train_seconds
    assert_same(result, reference[1])
    assert result.history[-1]["loss"] == reference[1].history[-1]["loss"]
    assert result.metrics["test"]["accuracy"] > 0.8


def test_chunk_boundaries_do_not_change_the_numbers(tmp_path, reference, monkeypatch):
    # One step per compiled call, and streamed chunks of 3 steps that do not divide the epoch.
    monkeypatch.setattr(train, "FIRST_SPAN", 1)
    monkeypatch.setattr(train, "CHUNK_SECONDS", 1e-9)
    monkeypatch.setattr(train, "stream_chunk", lambda *a: 3)
    seen = []
    _, result = fit(tmp_path, MLP, "train.loop=fused", "train.pipeline=stream",
                    progress=seen.append)
    assert_same(result, reference[1])
    steps = seen[0]["steps"]
    assert [p["step"] for p in seen if p["epoch"] == 1] == list(range(1, steps + 1))
    assert all(p["metrics"]["loss"] > 0 and 0 <= p["metrics"]["accuracy"] <= 1
               and p["samples_per_second"] > 0 for p in seen)


def test_convolutions_stream_and_fuse_to_the_same_weights(tmp_path):
    _, step = fit(tmp_path, CNN, "train.loop=step", "train.pipeline=device", name="a")
    _, fused = fit(tmp_path, CNN, "train.loop=fused", "train.pipeline=stream", name="b")
    # XLA may compile the loop body's convolutions differently from a lone step's, so this
    # pair is close rather than equal (for the MLP above every route is equal).
    for x, y in zip(leaves(step), leaves(fused), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_checkpoint_every_steps_resumes_mid_epoch_bit_identical(tmp_path, reference,
                                                                   monkeypatch):
    monkeypatch.setattr(train, "FIRST_SPAN", 2)
    monkeypatch.setattr(train, "CHUNK_SECONDS", 1e-9)  # every chunk one step after the first
    calls = iter(range(1000))
    folder = tmp_path / "ckpt"
    overrides = ("train.loop=fused", "train.checkpoint.every_steps=4")
    store = Checkpoints(str(folder), keep=3)
    with pytest.raises(Interrupted, match="checkpoint saved"):
        fit(tmp_path, MLP, *overrides, checkpoints=store, stop=lambda: next(calls) == 5)
    store.close()
    assert store.manager.all_steps() == [4, 7]  # both mid-epoch (9 steps an epoch)
    store = Checkpoints(str(folder), keep=3)
    _, resumed = fit(tmp_path, MLP, *overrides, checkpoints=store, resume=True)
    store.close()
    assert_same(resumed, reference[1])
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference[1].history]


def test_auto_loop_keeps_slow_convolutions_out_of_cpu_loops(tmp_path):
    # Stride-1 convolutions have canonical gradients (layers/_fast_conv.py), so they fuse;
    # a strided one still takes XLA's own gradient, slow inside CPU loops.
    strided = CNN.replace("kernel_size: 3,", "kernel_size: 3, strides: 2,")
    assert strided != CNN
    for text, cpu in ((MLP, "fused"), (CNN, "fused"), (strided, "step")):
        path = tmp_path / "auto.yaml"
        path.write_text(text)
        _, graph = check_spec(path)
        assert pipeline.choose_loop(graph, "auto", "cpu") == cpu
        assert pipeline.choose_loop(graph, "auto", "gpu") == "fused"
        assert pipeline.choose_loop(graph, "step", "gpu") == "step"


def test_auto_pipeline_streams_what_does_not_fit():
    assert pipeline.choose_pipeline("auto", 10, budget=100) == "device"
    assert pipeline.choose_pipeline("auto", 1000, budget=100) == "stream"
    assert pipeline.choose_pipeline("stream", 10, budget=100) == "stream"
    assert pipeline.device_budget() > 0


def test_stream_chunk_is_bounded_by_bytes_and_steps():
    assert pipeline.stream_chunk(10, 32, 100) == 10
    assert pipeline.stream_chunk(1000, 32, 100) == pipeline.MAX_STREAM_CHUNK
    assert pipeline.stream_chunk(1000, 1024, 1 << 20) == 1  # one batch over the byte budget


def _prefetch(rows, starts, size, x=None):
    x = x if x is not None else {"a": np.arange(20, dtype=np.float32) * 10}
    return pipeline.Prefetch(x, {"b": np.arange(20, dtype=np.int32)}, rows, starts, size,
                             jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def test_prefetch_gathers_chunks_in_order_and_pads_the_last():
    rows = np.arange(14).reshape(7, 2)[::-1].copy()  # 7 steps of batch 2, reversed
    with _prefetch(rows, [0, 3, 6], 3) as feed:
        got = list(feed)
    assert [start for start, _, _ in got] == [0, 3, 6]
    np.testing.assert_array_equal(got[0][2]["b"], rows[:3])
    np.testing.assert_array_equal(got[0][1]["a"], rows[:3] * 10.0)
    last = np.asarray(got[2][2]["b"])
    assert last.shape == (3, 2) and np.array_equal(last[0], rows[6])  # padded by repeats


def test_prefetch_reraises_errors_and_stops_early():
    class Broken(dict):
        def items(self):
            raise OSError("disk gone")

    with _prefetch(np.zeros((4, 2), np.int64), [0, 2], 2, x=Broken()) as feed:
        with pytest.raises(OSError, match="disk gone"):
            list(feed)
    feed = _prefetch(np.zeros((400, 2), np.int64), list(range(400)), 1)
    next(iter(feed))
    feed.close()  # the thread, blocked on a full queue, notices and ends
    assert not any(t.name == "nnspec-prefetch" and t.is_alive() for t in threading.enumerate())


def _stop_after(when):
    """A `stop` poll that answers yes once, right after the progress report `when` accepts."""
    last, fired = {}, []

    def stop():
        if not fired and last and when(last):
            fired.append(last.copy())
            return True
        return False

    return last.update, stop, fired


def test_a_signal_in_the_epoch_that_stops_early_ends_the_run(tmp_path):
    # min_delta 100: no epoch ever improves enough, so early stopping ends epoch 2.
    early = "train.early_stopping={monitor: loss, patience: 0, min_delta: 100}"
    _, whole = fit(tmp_path, MLP, early, name="whole")
    assert whole.stopped_early == 2
    progress, stop, fired = _stop_after(lambda p: p["epoch"] == 2 and p["step"] == p["steps"])
    store = Checkpoints(str(tmp_path / "ckpt"), keep=2)
    _, signalled = fit(tmp_path, MLP, early, name="signalled", checkpoints=store, stop=stop,
                       progress=progress)  # returns: the run was over anyway
    store.close()
    assert fired and signalled.stopped_early == 2
    store = Checkpoints(str(tmp_path / "ckpt"), keep=2)
    _, resumed = fit(tmp_path, MLP, early, name="resumed", checkpoints=store, resume=True)
    store.close()
    assert resumed.steps == whole.steps and len(resumed.history) == 2  # nothing more trained
    assert_same(resumed, whole)


def test_a_signal_after_the_last_step_still_finishes(tmp_path, reference):
    progress, stop, fired = _stop_after(lambda p: p["epoch"] == p["epochs"]
                                        and p["step"] == p["steps"])
    _, result = fit(tmp_path, MLP, "train.loop=step", "train.pipeline=device", stop=stop,
                    progress=progress)
    assert fired and len(result.history) == 6
    assert_same(result, reference[1])

"""Each training technique, trained on shipped or generated data, with its effect asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_cli
from flax import serialization

BASE = """\
version: 1
name: engine
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, name: fc1, units: 32, activation: relu}
  - {type: dense, name: head, units: 10}
  - {type: softmax}
data: {source: digits, limit: 500}
train:
  epochs: 4
  batch_size: 32
  optimizer: {name: adam, learning_rate: 0.003}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 1
"""


def train(tmp_path, text, *args, name="run", check=True):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    result = run_cli("train", str(spec), "--out", str(tmp_path / name), "-q", *args)
    if check:
        assert result.returncode == 0, result.stderr
    return tmp_path / name, result


def weights(run):
    return serialization.msgpack_restore((run / "weights.msgpack").read_bytes())


def history(run):
    return json.loads((run / "history.json").read_text())


def test_records_and_plots(tmp_path):
    run, _ = train(tmp_path, BASE)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows == history(run)
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == 5
    for png in ("curves.png", "confusion.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoints").is_dir()


def test_frozen_layer_is_bit_identical_and_unfreezes(tmp_path):
    frozen = BASE.replace("name: fc1, units: 32, activation: relu}",
                          "name: fc1, units: 32, activation: relu, trainable: false}")
    a, _ = train(tmp_path, frozen, name="frozen")
    b, _ = train(tmp_path, frozen + "  unfreeze_after: 2\n", name="thawed")
    c, _ = train(tmp_path, BASE, name="free")
    wa, wb, wc = weights(a), weights(b), weights(c)
    # The frozen layer keeps its seeded initial values; the head still trains.
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.train.engine import Trainer
    from nnspec.compiler.train.heads import resolve_heads
    loaded, graph = check_spec(tmp_path / "frozen.yaml")
    trainer = Trainer(graph, loaded.spec.train, resolve_heads(loaded, graph), 10)
    init = trainer.init({"pixels": np.zeros((1, 8, 8), np.uint8)})
    fc1 = np.asarray(init["params"]["fc1"]["kernel"])
    assert np.array_equal(wa["params"]["fc1"]["kernel"], fc1)
    assert not np.array_equal(wa["params"]["head"]["kernel"],
                              np.asarray(init["params"]["head"]["kernel"]))
    assert not np.array_equal(wb["params"]["fc1"]["kernel"], wa["params"]["fc1"]["kernel"])
    assert not np.array_equal(wc["params"]["fc1"]["kernel"], wa["params"]["fc1"]["kernel"])


def test_l2_lowers_the_weight_norm(tmp_path):
    plain, _ = train(tmp_path, BASE, name="plain")
    l2, _ = train(tmp_path, BASE + "  regularization: {l2: 0.01}\n", name="l2")
    norm = lambda w: sum(float(np.sum(w["params"][k]["kernel"] ** 2)) for k in ("fc1", "head"))  # noqa: E731
    assert norm(weights(l2)) < 0.8 * norm(weights(plain))
    biases = weights(l2)["params"]["fc1"]["bias"]
    assert np.any(biases != 0)  # biases are not penalised away


def test_early_stopping_restores_the_best_epoch(tmp_path):
    text = BASE.replace("epochs: 4", "epochs: 30").replace("learning_rate: 0.003",
                                                           "learning_rate: 0.05")
    run, _ = train(tmp_path, text + "  early_stopping: {monitor: val_loss, patience: 2}\n")
    rows = history(run)
    metrics = json.loads((run / "metrics.json").read_text())
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    assert len(rows) < 30 and len(rows) == best + 1 + 3  # stopped after patience + 1 epochs
    assert metrics["training"]["best_epoch"] == best + 1
    assert metrics["validation"]["loss"] == pytest.approx(rows[best]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_trains(tmp_path, name):
    lr = {"sgd": 0.1, "adagrad": 0.05}.get(name, 0.003)
    text = BASE.replace("{name: adam, learning_rate: 0.003}",
                        f"{{name: {name}, learning_rate: {lr}, clip_norm: 5.0}}")
    run, _ = train(tmp_path, text)
    rows = history(run)
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.7


@pytest.mark.parametrize(("schedule", "check"), [
    ("{name: step, decay_epochs: 2, decay_rate: 0.5}",
     lambda lr: np.allclose(lr, [0.003, 0.003, 0.0015, 0.0015], rtol=1e-5)),
    ("{name: cosine}", lambda lr: lr[0] > lr[1] > lr[2] > lr[3] >= 0),
    ("{name: warmup_cosine, warmup_epochs: 2}", lambda lr: lr[0] < lr[1] and lr[1] > lr[3]),
])
def test_schedules_change_the_learning_rate(tmp_path, schedule, check):
    text = BASE.replace("learning_rate: 0.003}", f"learning_rate: 0.003, schedule: {schedule}}}")
    run, _ = train(tmp_path, text)
    rates = [r["learning_rate"] for r in history(run)]
    assert check(np.array(rates)), rates


def _npz(tmp_path, n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)


VECTOR = """\
version: 1
name: vec
inputs:
  x: {shape: [6]}
layers:
  - {type: dense, units: 8, activation: tanh}
  - {type: dense, units: 2}
  - {type: softmax}
data: {source: npz, path: d.npz, validation_split: 0, test_split: 0}
train:
  epochs: 3
  batch_size: 64
  optimizer: {name: sgd, learning_rate: 0.1}
  loss: sparse_categorical_crossentropy
  seed: 0
"""


def test_reduce_on_plateau_lowers_the_rate(tmp_path):
    text = BASE.replace("epochs: 4", "epochs: 12").replace(
        "learning_rate: 0.003}",
        "learning_rate: 0.3, schedule: {name: reduce_on_plateau, patience: 1, factor: 0.5}}")
    run, result = train(tmp_path, text)
    rates = [r["learning_rate"] for r in history(run)]
    assert rates[0] == pytest.approx(0.3)
    assert min(rates) < 0.3 and all(b <= a for a, b in zip(rates, rates[1:]))


def test_every_metric_is_recorded(tmp_path):
    text = BASE.replace("metrics: [accuracy]",
                        "metrics: [accuracy, top_k_accuracy, precision, recall, f1]")
    run, _ = train(tmp_path, text)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "accuracy", "top_k_accuracy", "precision",
                                    "recall", "f1"}
    assert metrics["test"]["top_k_accuracy"] >= metrics["test"]["accuracy"]
    assert {"val_f1", "val_precision"} <= set(history(run)[0])


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    _npz(tmp_path)
    big, _ = train(tmp_path, VECTOR, name="big")
    acc, _ = train(tmp_path, VECTOR.replace("batch_size: 64", "batch_size: 32").replace(
        "learning_rate: 0.1}", "learning_rate: 0.1, accumulate: 2}"), name="acc")
    wa, wb = weights(big)["params"], weights(acc)["params"]
    for layer in wa:
        for p in wa[layer]:
            np.testing.assert_allclose(wa[layer][p], wb[layer][p], rtol=1e-5, atol=1e-6)


def test_class_weights_move_the_decision(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * rng.normal(size=600)) > 1.3).astype(np.int64)  # about 10% positives
    np.savez(tmp_path / "d.npz", x=x, y=y)
    text = VECTOR.replace("epochs: 3", "epochs: 15").replace(
        "validation_split: 0, test_split: 0", "validation_split: 0, test_split: 0.3").replace(
        "metrics: [accuracy]\n", "")
    text = text.replace("  seed: 0\n", "  seed: 0\n  metrics: [recall]\n")
    plain, _ = train(tmp_path, text, name="plain")
    weighted, _ = train(tmp_path, text.replace(
        "loss: sparse_categorical_crossentropy",
        "loss: {name: sparse_categorical_crossentropy, class_weights: [1.0, 9.0]}"),
        name="weighted")
    from nnspec.runtime import load
    test_x = x  # every sample: the decision boundary moves towards the majority class
    def positive(run):
        return int(load(run / "model.onnx").predict(test_x)["output"].argmax(-1).sum())
    assert positive(weighted) > 1.5 * positive(plain)


def test_augmentation_is_seeded_and_changes_training(tmp_path):
    text = BASE.replace("shape: [8, 8], dtype: uint8}", "shape: [8, 8, 1], dtype: uint8}")
    aug = text + "  augment:\n    - {type: random_translate, factor: 0.25}\n" \
        "    - {type: gaussian_noise, stddev: 0.5}\n"
    a, _ = train(tmp_path, aug, name="a")
    b, _ = train(tmp_path, aug, name="b")
    c, _ = train(tmp_path, text, name="c")
    assert (a / "weights.msgpack").read_bytes() == (b / "weights.msgpack").read_bytes()
    assert (a / "weights.msgpack").read_bytes() != (c / "weights.msgpack").read_bytes()
    import onnx
    ops = {n.op_type for n in onnx.load(str(a / "model.onnx")).graph.node}
    assert ops == {n.op_type for n in onnx.load(str(c / "model.onnx")).graph.node}


def test_transfer_from_a_run_and_from_onnx(tmp_path):
    base, _ = train(tmp_path, BASE, name="base")
    new_head = BASE.replace("name: head, units: 10", "name: new_head, units: 10").replace(
        "epochs: 4", "epochs: 1")
    for source in ("base", "base/model.onnx"):
        text = new_head.replace("name: fc1, units: 32, activation: relu}",
                                "name: fc1, units: 32, activation: relu, trainable: false}")
        run, result = train(tmp_path, text + f"  init_from: {source}\n",
                            name=source.replace("/", "_").replace(".", "_"))
        assert np.array_equal(weights(run)["params"]["fc1"]["kernel"],
                              weights(base)["params"]["fc1"]["kernel"])
    bad = BASE.replace("units: 32", "units: 16") + "  init_from: base\n"
    _, result = train(tmp_path, bad, name="bad", check=False)
    assert result.returncode == 2
    assert "rename the layer to train it from scratch" in result.stderr
    assert ("fc1/kernel has shape (64, 32)" in result.stderr
            or "fc1/bias has shape (32,)" in result.stderr), result.stderr


def test_bfloat16_compute_trains_and_exports_float32(tmp_path):
    run, _ = train(tmp_path, BASE.replace("epochs: 4", "epochs: 8") + "  precision: bfloat16\n")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85
    assert weights(run)["params"]["fc1"]["kernel"].dtype == np.float32
    assert json.loads((run / "parity.json").read_text())["passed"]


def test_non_finite_loss_stops_with_exit_code_3(tmp_path):
    text = BASE.replace("{name: adam, learning_rate: 0.003}", "{name: sgd, learning_rate: 1.0e+30}")
    run, result = train(tmp_path, text, check=False)
    assert result.returncode == 3, result.stderr
    assert "the loss became non-finite at step" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "model.onnx").exists()


RESUME = BASE.replace("epochs: 4", "epochs: 12") + "  checkpoint: {every_epochs: 1}\n"


def _start(tmp_path, name, *extra):
    spec = tmp_path / "resume.yaml"
    spec.write_text(RESUME)
    return subprocess.Popen([sys.executable, "-m", "nnspec", "train", str(spec), "--out",
                             str(tmp_path / name), "-q", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run, count, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jsonl = run / "metrics.jsonl"
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not progress")


# SIGKILL at random points, then --resume: tests/test_faults.py.


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    whole = _start(tmp_path, "whole")
    stopped = _start(tmp_path, "stopped")
    _wait_for_epochs(tmp_path / "stopped", 3, stopped)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate()
    assert stopped.returncode == 130, err
    assert "checkpoint saved" in err
    resumed = _start(tmp_path, "stopped", "--resume")
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert whole.wait() == 0
    assert (tmp_path / "whole" / "weights.msgpack").read_bytes() == (
        tmp_path / "stopped" / "weights.msgpack").read_bytes()


@pytest.mark.parametrize("loop, pipeline", [("fused", "device"), ("step", "stream"),
                                            ("fused", "stream")])
def test_four_cpu_devices_match_one(tmp_path, loop, pipeline):
    # 30 samples a step: 4 devices take batches padded to 32 with weight-0 samples, and must
    # still see the same 30 samples a step as one device.
    text = BASE.replace("batch_size: 32", "batch_size: 30")
    one, _ = train(tmp_path, text, name="one")
    spec = tmp_path / "four.yaml"
    spec.write_text(text)
    env = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
           " --xla_force_host_platform_device_count=4"}
    result = run_cli("train", str(spec), "--out", str(tmp_path / "four"), "-q", "--set",
                     f"train.loop={loop}", "--set", f"train.pipeline={pipeline}", env=env)
    assert result.returncode == 0, result.stderr
    training = json.loads((tmp_path / "four" / "metrics.json").read_text())["training"]
    assert (training["devices"], training["loop"], training["pipeline"]) == (4, loop, pipeline)
    a, b = history(one), history(tmp_path / "four")
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-4)
    np.testing.assert_allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b],
                               rtol=1e-4)


def test_normalize_adapts_to_the_training_data_and_ships_in_the_model(tmp_path):
    text = BASE.replace("  - {type: flatten}\n  - {type: rescale, scale: 0.0625}\n",
                        "  - {type: normalize, name: norm}\n  - {type: flatten}\n")
    run, _ = train(tmp_path, text)
    stats = weights(run)["stats"]["norm"]
    from nnspec.compiler.data.dataset import make_dataset
    from nnspec.compiler.graph.ir import check_spec
    loaded, _ = check_spec(tmp_path / "run.yaml")
    data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["output"], str(tmp_path))
    x = data.train.x["pixels"].reshape(-1, 8).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], x.std(0) + 1e-7, rtol=1e-6)
    import onnx
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t)
             for t in onnx.load(str(run / "model.onnx")).graph.initializer}
    np.testing.assert_array_equal(inits["norm/mean"], stats["mean"])
    assert json.loads((run / "parity.json").read_text())["passed"]
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] > 0.8


def test_adapting_normalize_must_read_an_input(tmp_path):
    text = BASE.replace("  - {type: rescale, scale: 0.0625}\n", "  - {type: normalize}\n")
    _, result = train(tmp_path, text, check=False)
    assert result.returncode == 2
    assert "must read a model input; it reads 'flatten_1'" in result.stderr

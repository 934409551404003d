"""Models with several inputs and several outputs train end to end, each output with its own
loss, weight and metrics, and export with parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
from conftest import run_cli

SPEC = """\
version: 1
name: two_inputs
inputs:
  image: {shape: [8, 8], dtype: uint8}
  hint: {shape: [3]}
layers:
  - {type: flatten, inputs: image}
  - {type: rescale, scale: 0.0625}
  - {type: dense, name: features, units: 32, activation: relu}
  - {type: dense, name: side, units: 8, activation: tanh, inputs: hint}
  - {type: concat, name: joined, inputs: [features, side]}
  - {type: dense, name: digit_logits, units: 10}
  - {type: softmax, name: digit}
  - {type: dense, name: size, units: 1, inputs: joined}
outputs:
  digit: {from: digit, loss: sparse_categorical_crossentropy, metrics: [accuracy]}
  size: {from: size, loss: mse, loss_weight: 0.5}
data: {source: npz, path: data.npz}
train:
  epochs: 25
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.003}
  seed: 0
"""


def _data(folder):
    from nnspec.compiler.data.dataset import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    x, y = digits["x"], digits["y"].astype(np.int64)
    hint = rng.normal(size=(len(x), 3)).astype(np.float32)
    size = (x.reshape(len(x), -1).mean(-1, keepdims=True) / 8 + hint[:, :1]).astype(np.float32)
    np.savez(folder / "data.npz", image=x, hint=hint, digit=y, size=size)


def test_two_inputs_two_outputs_train_and_export(tmp_path):
    _data(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC)
    result = run_cli("train", "spec.yaml", "--out", "run", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test) == {"loss", "digit_loss", "digit_accuracy", "size_loss"}
    assert test["digit_accuracy"] > 0.9
    assert abs(test["loss"] - (test["digit_loss"] + 0.5 * test["size_loss"])) < 1e-4
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["size_loss"] < history[0]["size_loss"] / 2  # the regression head learns
    parity = json.loads((tmp_path / "run" / "parity.json").read_text())
    assert parity["passed"] and set(parity["outputs"]) == {"digit", "size"}
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["image", "hint"]
    assert [o.name for o in model.graph.output] == ["digit", "size"]


def test_an_output_without_a_loss_is_a_located_error(tmp_path):
    _data(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC.replace(", loss: mse, loss_weight: 0.5", ""))
    result = run_cli("train", "spec.yaml", "--out", "run", "-q", cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.yaml:17:3: output 'size' has no loss: set train.loss, or outputs.size.loss" in (
        result.stderr)


def test_missing_named_arrays(tmp_path):
    np.savez(tmp_path / "data.npz", image=np.zeros((10, 8, 8), np.uint8))
    (tmp_path / "spec.yaml").write_text(SPEC)
    result = run_cli("train", "spec.yaml", "--out", "run", "-q", cwd=tmp_path)
    assert result.returncode == 2
    assert "must hold arrays ['image', 'hint', 'digit', 'size']" in result.stderr

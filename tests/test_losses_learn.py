"""Every loss on every way to end a network learns: for each (loss, ending) a small model
trains in-process on a learnable synthetic task, its loss on the training set falls below a
stated fraction of the untrained model's, and its metric beats chance by a stated margin.

Tasks (8 standard-normal features, 640 samples, a quarter held out): 4 classes, the argmax of a
fixed linear map (chance accuracy 0.25); 3 independent yes/no labels, signs of linear maps
(chance 0.5); 3 regression targets, a linear map plus noise (chance R^2 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from nnspec.compiler.data.dataset import Dataset, Split
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.train.engine import Trainer
from nnspec.compiler.train.heads import resolve_heads

N, FEATURES = 640, 8
_rng = np.random.default_rng(0)
X = _rng.standard_normal((N, FEATURES)).astype(np.float32)
CLASSES = np.argmax(X @ _rng.standard_normal((FEATURES, 4)), axis=1).astype(np.int64)
YESNO = (X @ _rng.standard_normal((FEATURES, 3)) > 0).astype(np.float32)
VALUES = (X @ _rng.standard_normal((FEATURES, 3)) * 0.5
          + 0.05 * _rng.standard_normal((N, 3))).astype(np.float32)
TARGETS = {"classes": CLASSES, "onehot": np.eye(4, dtype=np.float32)[CLASSES],
           "yesno": YESNO, "yes": YESNO[:, :1], "values": VALUES}
UNITS = {"classes": 4, "onehot": 4, "yesno": 3, "yes": 1, "values": 3}
ENDINGS = {"softmax": "  - {type: softmax, name: out}\n",
           "sigmoid": "  - {type: sigmoid, name: out}\n",
           "hard_sigmoid": "  - {type: hard_sigmoid, name: out}\n",
           "linear": "  - {type: relu, name: unused_relu, inputs: head}\n"}
SPEC = """\
version: 1
name: learn
inputs:
  x: {shape: [8]}
layers:
  - {type: dense, name: hidden, units: 32, activation: relu}
  - {type: dense, name: head, units: UNITS}
ENDING
outputs:
  y: {from: SOURCE}
train:
  epochs: 15
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.01}
  loss: LOSS
  metrics: [METRIC]
  seed: 0
"""
# (loss as written, ending, task, metric, loss must fall below this fraction, metric floor);
# SLOW(...) rows (variants, and forms another row already covers) run with `-m slow`.
SLOW = lambda *case: pytest.param(*case, marks=pytest.mark.slow)  # noqa: E731
CASES = [
    ("sparse_categorical_crossentropy", "softmax", "classes", "accuracy", 0.4, 0.75),
    ("sparse_categorical_crossentropy", "linear", "classes", "accuracy", 0.4, 0.75),
    SLOW("categorical_crossentropy", "softmax", "onehot", "accuracy", 0.4, 0.75),
    ("categorical_crossentropy", "linear", "onehot", "accuracy", 0.4, 0.75),
    SLOW("{name: sparse_categorical_crossentropy, label_smoothing: 0.1}", "softmax", "classes",
     "accuracy", 0.6, 0.75),
    SLOW("{name: sparse_categorical_crossentropy, class_weights: [1, 2, 1, 2]}", "linear",
     "classes", "accuracy", 0.4, 0.75),
    ("binary_crossentropy", "sigmoid", "yes", "accuracy", 0.4, 0.85),
    SLOW("binary_crossentropy", "sigmoid", "yesno", "label_accuracy", 0.4, 0.85),
    ("binary_crossentropy", "linear", "yes", "auc", 0.4, 0.9),
    ("binary_crossentropy", "linear", "yesno", "label_accuracy", 0.4, 0.85),
    ("binary_crossentropy", "hard_sigmoid", "yesno", "label_accuracy", 0.5, 0.85),
    SLOW("{name: binary_crossentropy, label_smoothing: 0.1}", "sigmoid", "yes", "accuracy", 0.6,
     0.85),
    ("mse", "linear", "values", "r2", 0.1, 0.8),
    ("mae", "linear", "values", "r2", 0.4, 0.8),
    ("{name: huber, delta: 0.5}", "linear", "values", "r2", 0.1, 0.8),
    SLOW("mse", "softmax", "classes", "accuracy", 0.6, 0.75),
    SLOW("mse", "sigmoid", "yes", "accuracy", 0.5, 0.85),
]
CHANCE = {"accuracy": {"classes": 0.25, "onehot": 0.25, "yes": 0.5}, "label_accuracy": 0.5,
          "auc": 0.5, "r2": 0.0}
# Several independent yes/no labels (binary cross-entropy over 3 units): nnspec's `accuracy`
# is per label there; it is checked against the labels scored here by hand (the threshold is 0
# on logits, 0.5 on probabilities).


def _data(targets: dict[str, np.ndarray]) -> Dataset:
    cut = N * 3 // 4
    split = lambda a, b: Split({"x": X[a:b]}, {k: v[a:b] for k, v in targets.items()})  # noqa: E731
    return Dataset(split(0, cut), split(0, 0), split(cut, N))


def _train(tmp_path, text: str, targets: dict[str, np.ndarray]):
    path = tmp_path / "learn.yaml"
    path.write_text(text)
    loaded, graph = check_spec(path)
    data = _data(targets)
    trainer = Trainer(graph, loaded.spec.train, resolve_heads(loaded, graph), len(data.train))
    before, _ = trainer.evaluate(trainer.init(data.train.x), data.train)
    return before, trainer.fit(data)


def _id(case) -> str:
    loss, ending, task = (case.values if hasattr(case, "values") else case)[:3]
    return (f"{loss.removeprefix('{name: ').split(',')[0]}-{ending}-{task}"
            + ("-variant" if "{" in loss else ""))


@pytest.mark.parametrize(("loss", "ending", "task", "metric", "fall", "floor"), CASES,
                         ids=[_id(c) for c in CASES])
def test_loss_learns(tmp_path, loss, ending, task, metric, fall, floor):
    source = "out" if ending != "linear" else "head"
    text = (SPEC.replace("UNITS", str(UNITS[task])).replace("ENDING\n", ENDINGS[ending])
            .replace("SOURCE", source).replace("LOSS", loss)
            .replace("[METRIC]", "[accuracy]" if metric == "label_accuracy" else f"[{metric}]"))
    if ending == "linear":  # the relu only keeps the spec's layer list the same length
        text = text.replace("  - {type: relu, name: unused_relu, inputs: head}\n", "")
    before, result = _train(tmp_path, text, {"y": TARGETS[task]})
    after = result.metrics["train"]["loss"]
    assert after < fall * before["loss"], (before["loss"], after)
    chance = CHANCE[metric] if metric != "accuracy" else CHANCE[metric][task]
    if metric == "label_accuracy":
        out = result.predictions["test"]["y"]
        cut = 0.0 if ending == "linear" else 0.5
        score = float(np.mean((out > cut) == (TARGETS[task][N * 3 // 4:] > 0.5)))
        assert result.metrics["test"]["accuracy"] == pytest.approx(score, abs=1e-6)
    else:
        score = result.metrics["test"][metric]
    assert score >= floor > chance, (score, floor, chance)


def test_several_outputs_each_learn(tmp_path):
    text = """\
version: 1
name: two_heads
inputs:
  x: {shape: [8]}
layers:
  - {type: dense, name: hidden, units: 32, activation: relu}
  - {type: dense, name: class_logits, units: 4, inputs: hidden}
  - {type: dense, name: flags, units: 3, activation: sigmoid, inputs: hidden}
  - {type: dense, name: regression, units: 3, inputs: hidden}
outputs:
  cls: {from: class_logits, loss: sparse_categorical_crossentropy, metrics: [accuracy]}
  flag: {from: flags, loss: binary_crossentropy, loss_weight: 0.5, metrics: []}
  value: {from: regression, loss: mse, loss_weight: 2.0, metrics: [r2]}
train:
  epochs: 15
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.01}
  seed: 0
"""
    before, result = _train(tmp_path, text, {"cls": CLASSES, "flag": YESNO, "value": VALUES})
    train, test = result.metrics["train"], result.metrics["test"]
    for head in ("cls", "flag", "value"):
        assert train[f"{head}_loss"] < 0.4 * before[f"{head}_loss"], head
    # The total is the weighted sum of the heads' losses.
    assert train["loss"] == pytest.approx(
        train["cls_loss"] + 0.5 * train["flag_loss"] + 2.0 * train["value_loss"], rel=1e-4)
    flags = result.predictions["test"]["flag"]
    assert test["cls_accuracy"] >= 0.75
    assert np.mean((flags > 0.5) == (YESNO[N * 3 // 4:] > 0.5)) >= 0.85
    assert test["value_r2"] >= 0.8

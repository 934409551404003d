"""The form each loss takes on each kind of output (heads.loss_form), the errors for the
mismatches, what validate/summary say, and the logits defect: a classifier without a softmax
trains like one with it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.train.heads import (
    LOGITS,
    PROBABILITIES,
    SIGMOID_LOGITS,
    SOFTMAX_LOGITS,
    VALUES,
    loss_form,
    resolve_heads,
)

HEAD = "  - {type: dense, name: head, units: UNITS}\n"
SPEC = """\
version: 1
name: forms
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, name: fc1, units: 32, activation: relu}
HEAD
data: {source: digits, limit: 1000, test_split: 0.3}
train:
  epochs: 12
  batch_size: 32
  optimizer: {name: adam, learning_rate: 0.003}
  loss: LOSS
  metrics: [accuracy]
  seed: 0
"""


def _spec(tmp_path, ending: str, loss: str, units: int = 10, name: str = "s"):
    text = SPEC.replace("HEAD\n", HEAD.replace("UNITS", str(units)) + ending).replace(
        "LOSS", loss)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


ENDINGS = {
    "linear": "",
    "softmax": "  - {type: softmax}\n",
    "softmax_axis1_reshaped": "  - {type: reshape, target_shape: [2, 5]}\n"
                              "  - {type: softmax, axis: 1}\n  - {type: flatten}\n",
    "sigmoid": "  - {type: sigmoid}\n",
    "hard_sigmoid": "  - {type: hard_sigmoid}\n",
    "tanh": "  - {type: tanh}\n",
}
# (ending, loss) -> the form, or the words of the error.
TABLE = [
    ("softmax", "sparse_categorical_crossentropy", SOFTMAX_LOGITS),
    ("softmax", "categorical_crossentropy", SOFTMAX_LOGITS),
    ("linear", "sparse_categorical_crossentropy", LOGITS),
    ("linear", "categorical_crossentropy", LOGITS),
    ("tanh", "sparse_categorical_crossentropy", LOGITS),
    ("softmax_axis1_reshaped", "sparse_categorical_crossentropy", PROBABILITIES),
    ("sigmoid", "sparse_categorical_crossentropy", "independent yes/no probabilities"),
    ("hard_sigmoid", "categorical_crossentropy", "independent yes/no probabilities"),
    ("sigmoid", "binary_crossentropy", SIGMOID_LOGITS),
    ("linear", "binary_crossentropy", LOGITS),
    ("hard_sigmoid", "binary_crossentropy", PROBABILITIES),
    ("softmax_axis1_reshaped", "binary_crossentropy", PROBABILITIES),
    ("softmax", "binary_crossentropy", "sum to 1"),
    ("softmax", "mse", VALUES),
    ("linear", "huber", VALUES),
]


@pytest.mark.parametrize(("ending", "loss", "expected"), TABLE)
def test_loss_form_table(tmp_path, ending, loss, expected):
    loaded, graph = check_spec(_spec(tmp_path, ENDINGS[ending], loss))
    out = next(iter(graph.outputs))
    if expected in (SOFTMAX_LOGITS, SIGMOID_LOGITS, LOGITS, PROBABILITIES, VALUES):
        assert loss_form(graph, out, loss) == expected
        assert resolve_heads(loaded, graph)[0].form == expected
    else:
        with pytest.raises(ValueError, match=expected):
            loss_form(graph, out, loss)


def test_single_unit_categorical_is_an_error(tmp_path):
    _, graph = check_spec(_spec(tmp_path, "", "sparse_categorical_crossentropy", units=1))
    with pytest.raises(ValueError, match="single unit is always 0"):
        loss_form(graph, next(iter(graph.outputs)), "sparse_categorical_crossentropy")


def test_mismatch_is_a_located_error_exit_2(tmp_path):
    path = _spec(tmp_path, ENDINGS["softmax"], "binary_crossentropy")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "loss:" in t)
    for verb in ("validate", "train"):
        result = run_cli(verb, str(path), *(["--out", str(tmp_path / "r")] if verb == "train"
                                            else []))
        assert result.returncode == 2, result.stderr
        assert f"{path}:{line}:" in result.stderr and "sum to 1" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "r" / "model.onnx").exists()


def test_validate_and_summary_name_the_form(tmp_path):
    path = _spec(tmp_path, "", "sparse_categorical_crossentropy")
    for verb in ("validate", "summary"):
        result = run_cli(verb, str(path))
        assert result.returncode == 0, result.stderr
        assert "loss: sparse categorical cross-entropy from logits (the output itself" in (
            result.stdout)
    soft = _spec(tmp_path, ENDINGS["softmax"], "categorical_crossentropy", name="soft")
    assert "from logits (the softmax's input)" in run_cli("validate", str(soft)).stdout


def _fit(path):
    from nnspec.compiler.data.dataset import make_dataset
    from nnspec.compiler.train.engine import Trainer

    loaded, graph = check_spec(path)
    spec = loaded.spec
    heads = resolve_heads(loaded, graph)
    data = make_dataset(spec.data, spec.inputs, list(graph.outputs), loaded.folder)
    result = Trainer(graph, spec.train, heads, len(data.train)).fit(data)
    return result


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy"])
def test_logits_classifier_trains_like_the_softmax_one(tmp_path, loss):
    """The defect of issue 11: `dense(10)` with no softmax learned nothing (its raw scores were
    read as probabilities and clipped). Now it is trained from logits, to the same accuracy."""
    soft = _fit(_spec(tmp_path, ENDINGS["softmax"], loss, name="soft"))
    raw = _fit(_spec(tmp_path, "", loss, name="raw"))
    a_soft, a_raw = soft.metrics["test"]["accuracy"], raw.metrics["test"]["accuracy"]
    assert a_soft > 0.9 and abs(a_soft - a_raw) <= 0.02, (a_soft, a_raw)
    # The same function up to the final softmax: the losses agree as closely.
    assert raw.history[-1]["loss"] < 0.2 * raw.history[0]["loss"]
    assert abs(soft.metrics["test"]["loss"] - raw.metrics["test"]["loss"]) < 0.05
    # The raw model's outputs are the logits (not probabilities); their argmax is the class.
    logits = raw.predictions["test"]["output"] if "output" in raw.predictions["test"] else (
        next(iter(raw.predictions["test"].values())))
    assert logits.min() < 0 or logits.max() > 1
    assert np.all(np.isfinite(logits))


TWO_HEADS = """\
version: 1
name: logits_export
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, name: fc1, units: 32, activation: relu}
  - {type: dense, name: digit_scores, units: 10, inputs: fc1}
  - {type: dense, name: big_score, units: 1, inputs: fc1}
outputs:
  digit: {from: digit_scores, loss: sparse_categorical_crossentropy, metrics: [accuracy],
          argmax: true}
  big: {from: big_score, loss: binary_crossentropy, metrics: [accuracy, auc]}
data: {source: npz, path: d.npz, test_split: 0.25}
train:
  epochs: 10
  batch_size: 32
  optimizer: {name: adam, learning_rate: 0.003}
  seed: 0
"""


def test_a_logits_model_exports_logits_and_evaluates_as_trained(tmp_path, capsys):
    """Exported as trained (raw scores), with `NAME_class` their argmax; `nnspec evaluate`
    reads them as the probabilities the loss implied (a binary logit's class is > 0, not
    > 0.5), so its numbers are training's own."""
    import json

    from nnspec.compiler.data.dataset import load_digits
    from nnspec.main import main
    from nnspec.runtime import load

    digits = load_digits()
    np.savez(tmp_path / "d.npz", pixels=digits["x"][:800], digit=digits["y"][:800],
             big=(digits["y"][:800] >= 5).astype(np.float32))
    (tmp_path / "s.yaml").write_text(TWO_HEADS)
    result = run_cli("train", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 0, result.stderr
    expected = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert expected["digit_accuracy"] > 0.85 and expected["big_accuracy"] > 0.85
    model = load(tmp_path / "run" / "model.onnx")
    out = model.predict({"pixels": digits["x"][:50]})
    assert out["digit"].min() < 0 and out["big"].min() < 0 < out["big"].max()  # raw scores
    assert np.array_equal(out["digit_class"], out["digit"].argmax(-1))
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for head, metric in (("digit", "accuracy"), ("big", "accuracy"), ("big", "auc")):
        assert report[head][metric] == pytest.approx(expected[f"{head}_{metric}"], abs=1e-6)
    for head in ("digit", "big"):
        assert report[head]["loss"] == pytest.approx(expected[f"{head}_loss"], rel=1e-3)


@pytest.mark.parametrize(("units", "ending", "loss", "refused"), [
    (10, "softmax", "sparse_categorical_crossentropy", True),
    (3, "sigmoid", "binary_crossentropy", True),   # three independent labels
    (2, "softmax", "sparse_categorical_crossentropy", False),
    (1, "sigmoid", "binary_crossentropy", False),
])
def test_a_binary_only_metric_on_a_multi_class_output_is_refused_at_validate(
        tmp_path, units, ending, loss, refused):
    """auc is defined for one binary output: on ten classes it used to fail after training."""
    path = _spec(tmp_path, ENDINGS[ending], loss, units=units)
    path.write_text(path.read_text().replace("metrics: [accuracy]", "metrics: [accuracy, auc]"))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "metrics:" in t)
    result = run_cli("validate", str(path))
    assert result.returncode == (2 if refused else 0), result.stderr
    if refused:
        assert f"{path}:{line}:" in result.stderr and "metric 'auc' needs a binary output" in (
            result.stderr) and f"has {units} units" in result.stderr
        assert "Traceback" not in result.stderr

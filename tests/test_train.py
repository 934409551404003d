"""End-to-end training runs through the CLI: real training, real ONNX files, real onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml
from conftest import EXAMPLES, SMALL, run_cli


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quickstart"
    result = run_cli("train", str(EXAMPLES / "quickstart.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def _weights(path):
    model = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_quickstart_reaches_accuracy_and_parity(quickstart):
    out, result = quickstart
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.95, metrics
    assert set(metrics) >= {"train", "validation", "test", "training"}
    assert metrics["training"]["samples_per_second"] > 0
    assert metrics["training"]["compile_seconds"] > 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-5
    assert parity["argmax_agreement"] == 1.0
    assert parity["samples"] == 256
    summary = json.loads(result.stdout)
    assert summary["metrics"]["test"] == metrics["test"]


def test_run_directory_contents(quickstart):
    out, _ = quickstart
    names = sorted(p.name for p in out.iterdir())
    assert names == ["MODEL_CARD.md", "SHA256SUMS", "checkpoints", "confusion.png",
                     "curves.png", "history.json", "metrics.csv", "metrics.json",
                     "metrics.jsonl", "model.onnx", "parity.json", "reference_io.npz",
                     "resolved_spec.yaml", "spec.yaml", "weights.msgpack"]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert history[-1]["loss"] < history[0]["loss"] / 5
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert (out / "spec.yaml").read_bytes() == (EXAMPLES / "quickstart.yaml").read_bytes()


def test_export_is_named_and_self_describing(quickstart):
    out, _ = quickstart
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name for t in model.graph.initializer}
    assert {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias", "logits/kernel"} <= inits
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["digit", "digit_class"]
    from nnspec.runtime import load

    x = np.random.default_rng(0).integers(0, 17, (20, 8, 8)).astype(np.uint8)
    outs = load(out / "model.onnx").predict(x)
    assert np.array_equal(outs["digit_class"], outs["digit"].argmax(-1))
    assert {"opset", "onnx_version", "flax_version", "inputs", "outputs"} <= {
        p.key for p in model.metadata_props}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 21 and model.ir_version == 10
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["labels"]) == {"digit": [str(i) for i in range(10)]}
    assert json.loads(props["parity"])["passed"] is True
    import hashlib
    assert props["spec_sha256"] == hashlib.sha256(
        (EXAMPLES / "quickstart.yaml").read_bytes()).hexdigest()


def test_resolved_spec_validates_and_builds_the_same_graph(quickstart, tmp_path):
    out, _ = quickstart
    from nnspec.compiler.graph.ir import check_spec

    resolved = yaml.safe_load((out / "resolved_spec.yaml").read_text())
    assert [layer["name"] for layer in resolved["layers"]] == [
        "flatten_1", "rescale_1", "fc1", "fc2", "logits", "probabilities"]
    _, a = check_spec(out / "resolved_spec.yaml")
    _, b = check_spec(EXAMPLES / "quickstart.yaml")
    assert [(n.name, n.type, n.inputs, n.shape) for n in a.nodes] == [
        (n.name, n.type, n.inputs, n.shape) for n in b.nodes]


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = run_cli("train", str(spec), "--out", str(tmp_path / name), "-q",
                         "--set", f"train.seed={seed}")
        assert result.returncode == 0, result.stderr
        runs[name] = _weights(tmp_path / name / "model.onnx")
    assert runs["a"].keys() == runs["b"].keys()
    assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not np.array_equal(runs["a"]["dense_1/kernel"], runs["c"]["dense_1/kernel"])


def test_inference_graph_has_no_dropout_and_ships_preprocessing(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Dropout" not in ops
    assert ops[:3] == ["Flatten", "Cast", "Mul"]  # raw 0..16 pixels in, scaled inside
    parity = json.loads((tmp_path / "run" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-5


def test_sgd_and_mse_train(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL.replace("{name: adam, learning_rate: 0.003}",
                                  "{name: sgd, learning_rate: 0.5, momentum: 0.9}")
                    .replace("categorical_crossentropy", "mse"))
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q",
                     "--set", "train.epochs=6")
    assert result.returncode == 0, result.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"] * 0.8
    assert history[-1]["val_accuracy"] > 0.5


def test_set_override_changes_the_run(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q",
                     "--set", "train.epochs=1", "--set", "layers.2.units=8")
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    resolved = yaml.safe_load((tmp_path / "run" / "resolved_spec.yaml").read_text())
    assert resolved["train"]["epochs"] == 1
    assert resolved["layers"][2]["units"] == 8


def test_failed_cross_check_fails_the_command(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL + "export:\n  parity: {atol: 1.0e-30, rtol: 0}\n")
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q",
                     "--set", "train.epochs=1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the exported model differs from the trained one" in result.stderr
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "model.onnx" not in names and "model.rejected.onnx" in names
    assert json.loads((tmp_path / "run" / "parity.json").read_text())["passed"] is False
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left


@pytest.mark.parametrize(("override", "message"), [
    ("data.source=npz", "data: `path` is required when source is 'npz'"),
    ("inputs.pixels.shape=[7]", "input 'pixels' expects samples of shape (7,)"),
    ("layers.4.units=5", "class labels range over [0, 9] but output 'output' has 5 classes"),
    ("layers.0.type=relu", "output 'output' has shape (8, 10) but the labels have shape ()"),
])
def test_bad_data_is_bad_input(tmp_path, override, message):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q",
                     "--set", override)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_npz_data_relative_to_the_spec(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    spec = tmp_path / "blobs.yaml"
    spec.write_text(SMALL.replace("[8, 8]", "[4]").replace("{source: digits, limit: 600}",
                                                           "{source: npz, path: blobs.npz}")
                    .replace("units: 10", "units: 2"))
    result = run_cli("train", "blobs.yaml", "--out", "run", "-q", "--set", "train.epochs=20",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9

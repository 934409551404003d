"""Deployment: int8/float16 copies gated on accuracy, the ORT format, the model card, the golden
bundle and the checksums, from real runs on the shipped digits."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import EXAMPLES, run_cli

from nnspec.compiler.data.dataset import load_digits
from nnspec.compiler.export.quantize import (
    default_output,
    evaluate_accuracy,
    gate,
    load_model_data,
    quantize_and_gate,
    rejected_path,
)
from nnspec.spec.errors import DataError

MAX_DROP = 0.01  # one point of accuracy


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The quickstart MLP and the example CNN, trained on the digits: {name: run directory}."""
    folder = tmp_path_factory.mktemp("deploy")
    out = {}
    # The quickstart with 256 units in fc1: int8 shrinks the weights fourfold, but ~6 KB of
    # metadata and graph do not shrink, which puts the 72 KB quickstart itself right at 0.35.
    for name, spec, extra in (("mlp", "quickstart.yaml", ["--set", "layers.2.units=256"]),
                              ("cnn", "cnn.yaml", [])):
        result = run_cli("train", str(EXAMPLES / spec), "--out", str(folder / name), "-q",
                         "--set", "train.epochs=20", *extra)
        assert result.returncode == 0, result.stderr
        out[name] = folder / name
    return out


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# ------------------------------------------------------------------ quantization


def test_dynamic_int8_mlp_is_a_third_of_the_size_and_as_accurate(runs, tmp_path):
    run = _copy_run(runs["mlp"], tmp_path / "mlp")
    result = run_cli("quantize", str(run), "--method", "dynamic")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = run / "model.dynamic.onnx"
    assert report["output"] == str(out) and out.is_file()
    assert report["size"]["after_bytes"] == out.stat().st_size
    assert report["size"]["ratio"] <= 0.35, report["size"]
    assert report["accuracy_after"] >= report["accuracy_before"] - MAX_DROP, report
    assert report["passed"] and report["split"] == "validation" and report["samples"] > 100
    assert report["change_points"] == pytest.approx(
        100 * (report["accuracy_after"] - report["accuracy_before"]))
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= _ops(out)
    assert "gate passed" in result.stderr
    # The source's metadata travels along, with the settings added.
    source, copy = _props(run / "model.onnx"), _props(out)
    assert {k: v for k, v in copy.items() if k != "quantization"} == source
    assert json.loads(copy["quantization"])["method"] == "dynamic"
    assert json.loads((run / "quantization.json").read_text())["model.dynamic.onnx"] == report
    # The copy runs in plain onnxruntime and gives the same accuracy the report states.
    data = load_model_data(run / "model.onnx")
    assert evaluate_accuracy(out, data.validation)["digit"]["accuracy"] == pytest.approx(
        report["accuracy_after"])


def test_static_qdq_cnn_is_a_third_of_the_size_and_as_accurate(runs, tmp_path):
    run = _copy_run(runs["cnn"], tmp_path / "cnn")
    report = quantize_and_gate(run, "static", MAX_DROP)
    out = Path(report["output"])
    assert out == run / "model.static.onnx" and out.is_file()
    assert report["size"]["ratio"] <= 0.35, report["size"]
    assert report["accuracy_after"] >= report["accuracy_before"] - MAX_DROP, report
    assert report["passed"]
    settings = report["settings"]
    assert settings["format"] == "QDQ" and settings["per_channel"]
    assert settings["calibration_samples"] == 256
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops(out)
    # Per-channel: each convolution's kernel is dequantized with one scale per filter.
    inits = {t.name: t for t in model.graph.initializer}
    kernels = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and inits.get(n.input[0]) is not None and len(inits[n.input[0]].dims) == 4]
    assert len(kernels) == 2
    for node in kernels:
        filters = inits[node.input[0]].dims[0]
        assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
        assert list(inits[node.input[1]].dims) == [filters]


def test_dynamic_leaves_convolutions_in_float(runs, tmp_path):
    """Dynamic Conv would become ConvInteger, which onnxruntime < 1.24 cannot load."""
    report = quantize_and_gate(runs["cnn"], "dynamic", MAX_DROP,
                               out=tmp_path / "cnn.dynamic.onnx")
    ops = _ops(report["output"])
    assert "ConvInteger" not in ops and "Conv" in ops and "MatMulInteger" in ops
    assert report["passed"] and 0.35 < report["size"]["ratio"] < 0.75


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_float16_halves_the_size(runs, tmp_path, name):
    report = quantize_and_gate(runs[name], "float16", MAX_DROP,
                               out=tmp_path / f"{name}.float16.onnx")
    assert 0.45 <= report["size"]["ratio"] <= 0.6, report["size"]
    assert report["passed"] and report["top1_agreement"] >= 0.99
    session = ort.InferenceSession(report["output"], providers=["CPUExecutionProvider"])
    # keep_io_types: the interface is the float model's (probabilities float32, an argmax
    # class output int64, raw uint8 pixels in).
    source = ort.InferenceSession(str(runs[name] / "model.onnx"),
                                  providers=["CPUExecutionProvider"])
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        (o.name, o.type) for o in source.get_outputs()]
    assert "tensor(float)" in {o.type for o in session.get_outputs()}
    assert session.get_inputs()[0].type == "tensor(uint8)"


def test_quantize_needs_no_jax(runs, tmp_path):
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'):\n"
        "            raise ImportError(name + ' is not installed on this device')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from nnspec.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "mlp.float16.onnx"
    result = subprocess.run([sys.executable, "-c", blocker, "quantize", str(runs["mlp"]),
                             "--method", "float16", "--out", str(out), "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] and out.is_file()


def test_gate_rejects_a_lossy_copy(runs, tmp_path):
    """Static int8 calibrated on a single sample clips the activations of the CNN; with no
    loss allowed, any lost point fails the gate: exit 1, the copy kept as *.rejected.onnx."""
    out = tmp_path / "cnn.static.onnx"
    result = run_cli("quantize", str(runs["cnn"] / "model.onnx"), "--method", "static",
                     "--calibration-samples", "1", "--max-drop", "0", "--out", str(out))
    report = json.loads(result.stdout)
    assert report["settings"]["calibration_samples"] == 1
    if report["drop"] > 0:  # what the digits give (1.4 points lost on 143 samples)
        assert result.returncode == 1, result.stderr
        assert not report["passed"] and "more than --max-drop" in result.stderr
        assert report["output"] == rejected_path(str(out)) == str(tmp_path /
                                                                    "cnn.static.rejected.onnx")
        assert Path(report["output"]).is_file() and not out.exists()
    else:  # another platform's training lost nothing: the gate must then pass
        assert result.returncode == 0 and report["passed"] and out.is_file()
    recorded = json.loads((tmp_path / "quantization.json").read_text())
    assert recorded[Path(report["output"]).name] == report
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".candidate")] == []


def test_gate_verdicts():
    before = {"digit": {"accuracy": 0.95}}
    assert gate(before, {"digit": {"accuracy": 0.95}}, 0.0) == (0.0, True)
    drop, passed = gate(before, {"digit": {"accuracy": 0.93}}, 0.01)
    assert drop == pytest.approx(0.02) and not passed
    assert gate(before, {"digit": {"accuracy": 0.945}}, 0.01)[1]
    assert gate(before, {"digit": {"accuracy": 0.97}}, 0.0)[1]  # a gain passes
    # Several outputs: the worst decides; a regressor's drop is its MAE's relative increase.
    two = {"digit": {"accuracy": 0.9}, "size": {"mae": 0.10, "rmse": 0.2}}
    drop, passed = gate(two, {"digit": {"accuracy": 0.9}, "size": {"mae": 0.12, "rmse": 0.2}},
                        0.1)
    assert drop == pytest.approx(0.2) and not passed
    with pytest.raises(ValueError, match="at least 0"):
        gate(before, before, -0.01)


def test_bad_arguments_exit_2(small_run, tmp_path):
    run, _ = small_run
    result = run_cli("quantize", str(run), "--method", "dynamic", "--max-drop", "-0.1")
    assert result.returncode == 2 and "--max-drop" in result.stderr
    result = run_cli("quantize", str(tmp_path / "nothing.onnx"), "--method", "dynamic")
    assert result.returncode == 2 and "no model file" in result.stderr
    assert default_output("runs/x/model.onnx", "static") == "runs/x/model.static.onnx"


def test_relative_npz_data_resolves_against_the_data_folder(tmp_path, monkeypatch):
    digits = load_digits()
    data_dir = tmp_path / "project"
    data_dir.mkdir()
    np.savez(data_dir / "digits.npz", x=digits["x"][:200], y=digits["y"][:200])
    resolved = {"inputs": {"pixels": {"shape": [8, 8], "dtype": "uint8"}},
                "outputs": {"digit": {"from": "probabilities"}},
                "data": {"source": "npz", "path": "digits.npz", "validation_split": 0.1,
                         "test_split": 0.2, "seed": 0}}
    model = tmp_path / "elsewhere" / "model.onnx"  # never opened: the spec is given
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="--data-folder"):
        load_model_data(model, None, resolved)
    data = load_model_data(model, str(data_dir), resolved)
    assert len(data.validation) + len(data.test) + len(data.train) == 200
    monkeypatch.chdir(data_dir)  # then the current directory
    assert len(load_model_data(model, None, resolved).train) == len(data.train)


# ------------------------------------------------------------------ ORT format


def test_ort_format_round_trip(small_run, tmp_path):
    run, _ = small_run
    result = run_cli("export", str(run), "--format", "ort", "--out", str(tmp_path / "ort"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ort_file = tmp_path / "ort" / "model.ort"
    assert report["ort"] == str(ort_file) and ort_file.is_file()
    assert report["check"]["passed"]
    config = (tmp_path / "ort" / "model.required_operators.config").read_text()
    assert "ai.onnx;" in config and report["operators"]
    assert sorted(p.name for p in (tmp_path / "ort").iterdir()) == [
        "model.ort", "model.required_operators.config"]
    # onnxruntime loads the .ort file and gives the .onnx model's outputs, metadata included.
    x = load_digits()["x"][:64].reshape(-1, 8, 8).astype(np.float32)
    onnx_session = ort.InferenceSession(str(run / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    ort_session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    expected, got = onnx_session.run(None, {"pixels": x}), ort_session.run(None, {"pixels": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
    assert "resolved_spec" in ort_session.get_modelmeta().custom_metadata_map


# ------------------------------------------------------------------ card, bundle, checksums


@pytest.fixture(scope="module")
def documented(small_run, tmp_path_factory):
    """A copy of the small run with the golden bundle, model card and SHA256SUMS written as
    `train_run` writes them."""
    import yaml

    from nnspec.compiler.export.bundle import write_manifest, write_reference_bundle
    from nnspec.compiler.export.model_card import write_model_card
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.graph.summary import summarize

    source, spec_path = small_run
    run = _copy_run(source, tmp_path_factory.mktemp("card") / "run")
    data = load_model_data(run / "model.onnx")
    golden = {k: v[:16] for k, v in data.test.x.items()}
    write_reference_bundle(run, golden)
    _, graph = check_spec(str(spec_path), ["train.epochs=15"])
    resolved = yaml.safe_load((run / "resolved_spec.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    parity = json.loads((run / "parity.json").read_text())
    write_model_card(run, resolved, metrics, parity, summary_rows=summarize(graph),
                     sample_inputs=golden)
    write_manifest(run, ["model.onnx", "reference_io.npz", "MODEL_CARD.md", "metrics.json",
                         "parity.json", "resolved_spec.yaml", "spec.yaml"])
    return run, metrics, parity, golden


def test_model_card(documented):
    run, metrics, parity, _ = documented
    card = (run / "MODEL_CARD.md").read_text()
    for section in ("# Model card: small", "## Files", "## Inputs", "## Outputs", "## Layers",
                    "## Metrics", "## Export cross-check", "## Speed", "## How to run"):
        assert section in card, section
    lines = card.splitlines()
    for split in ("train", "validation", "test"):
        row = next(line for line in lines if line.startswith(f"| {split} |"))
        assert row == (f"| {split} | {metrics[split]['loss']:.4f} | "
                       f"{metrics[split]['accuracy']:.4f} |")
    assert "**PASSED**" in card and f"{parity['samples']} held-out samples" in card
    assert f"| {parity['max_abs_diff']:.3g} | {parity['max_rel_diff']:.3g} |" in card
    model = run / "model.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"| `model.onnx` | {model.stat().st_size:,} | `{digest}` |" in card
    assert "| `pixels` | (batch, 8, 8) | float32 |" in card
    assert "× 0.0625 + 0" in card  # the rescale inside the graph
    assert "| `output` | (batch, 10) | float32 | `dense_2` |" in card
    speed = next(line for line in lines if line.startswith("| 1 |"))
    assert float(speed.split("|")[2]) > 0
    assert next(line for line in lines if line.startswith("| 32 |"))
    assert "nnspec predict model.onnx --input samples.npy" in card
    assert 'ort.InferenceSession("model.onnx"' in card


def test_model_card_snippet_runs(documented):
    """The card's plain-onnxruntime example, run as written in the run directory."""
    run, *_ = documented
    card = (run / "MODEL_CARD.md").read_text()
    blocks = card.split("```python\n")[1:]
    code = "\n".join(block.split("```")[0] for block in blocks)
    result = subprocess.run([sys.executable, "-c", code], cwd=run, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_reference_bundle_reproduces(documented):
    run, _, _, golden = documented
    with np.load(run / "reference_io.npz") as bundle:
        arrays = {k: bundle[k] for k in bundle.files}
    assert sorted(arrays) == ["input:pixels", "output:output"]
    np.testing.assert_array_equal(arrays["input:pixels"], golden["pixels"])
    assert arrays["input:pixels"].shape == (16, 8, 8)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": arrays["input:pixels"]})
    np.testing.assert_allclose(got, arrays["output:output"], rtol=0, atol=1e-6)


def test_sha256sums_verify(documented, tmp_path):
    run, *_ = documented
    lines = (run / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "model.onnx", "reference_io.npz", "MODEL_CARD.md", "metrics.json", "parity.json",
        "resolved_spec.yaml", "spec.yaml"]
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((run / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=run, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        tampered = _copy_run(run, tmp_path / "tampered")
        (tampered / "metrics.json").write_text("{}\n")
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tampered,
                               capture_output=True, text=True)
        assert check.returncode != 0 and "metrics.json: FAILED" in check.stdout


def test_the_gate_reads_a_binary_logit_output_as_its_loss_did(tmp_path):
    """A binary classifier trained from logits (no sigmoid ends it) predicts the positive class
    for a score above 0; read as a probability (above 0.5) a score of 0.3 would be wrong."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from nnspec.compiler.data.dataset import Split

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="y")], "logit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    spec = {"outputs": {"y": {"loss": {"name": "binary_crossentropy"}}}}
    helper.set_model_props(model, {
        "resolved_spec": json.dumps(spec),
        "loss_forms": json.dumps({"y": {"loss": "binary_crossentropy", "form": "logits"}})})
    path = tmp_path / "logit.onnx"
    onnx.save(model, str(path))
    scores = np.array([[0.3], [2.0], [-0.2], [-3.0]], np.float32)
    labels = np.array([[1], [1], [0], [0]], np.float32)
    assert evaluate_accuracy(path, Split({"x": scores}, {"y": labels})) == {
        "y": {"accuracy": 1.0}}

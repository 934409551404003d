"""Deployment: unsafe ONNX files are refused before any runtime opens them; `nnspec check`
proves a model on every runtime; `nnspec bench` times it; predict reads CSV and images."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EMBED, run_cli
from onnx import TensorProto, helper, numpy_helper

from nnspec.compiler.data.dataset import load_digits
from nnspec.runtime import InputError, Model, load, runners
from nnspec.runtime.inputs import random_inputs, read_inputs, write_predictions
from nnspec.runtime.safety import UnsafeModelError, check_model_file, external_tensors

# Runs `nnspec ARGS` with the named modules unimportable (None in sys.modules is what Python
# does for a module that is absent: `import` fails and `importlib.util.find_spec` says None).
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from nnspec.main import main
code = main(sys.argv[2:])
heavy = sorted(m for m, v in sys.modules.items() if v is not None
               and m.split(".")[0] in ("jax", "flax", "optax"))
assert not heavy or "jax" not in sys.argv[1], heavy
sys.exit(code)
"""
TRAINING_STACK = "jax,jaxlib,flax,optax,orbax,nnspec.compiler"


def run_without(modules: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, modules, *args], capture_output=True,
                          text=True, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "ONNXRuntimeError" not in result.stderr


# --- crafted models -------------------------------------------------------------------------

W = np.arange(1, 5, dtype=np.float32).reshape(1, 4)


def _external(name: str, location: str, offset: int = 0, length: int = 16) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1, 4],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _model(nodes, initializers=(), sparse=(), functions=(), inputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["batch", 4])],
                              initializer=list(initializers), sparse_initializer=list(sparse))
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("local", 1)]
                                              if functions else [])
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def in_initializer(location: str, **kw) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [_external("w", location, **kw)])


def in_constant(location: str) -> onnx.ModelProto:
    return _model([helper.make_node("Constant", [], ["w"], name="c",
                                    value=_external("w", location)),
                   helper.make_node("Add", ["x", "w"], ["y"])])


def in_sparse_initializer(location: str) -> onnx.ModelProto:
    sparse = onnx.SparseTensorProto(values=_external("w", location),
                                    indices=numpy_helper.from_array(np.arange(4, dtype=np.int64),
                                                                    "w_idx"), dims=[1, 4])
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], sparse=[sparse])


def in_subgraph(location: str) -> onnx.ModelProto:
    def branch(name, tensor):
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_w"], value=tensor),
             helper.make_node("Add", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([helper.make_node("If", ["cond"], ["y"], name="if",
                                    then_branch=branch("then", _external("w", location)),
                                    else_branch=branch("else", numpy_helper.from_array(W)))],
                  [cond])


def in_function(location: str) -> onnx.ModelProto:
    function = helper.make_function(
        "local", "AddW", ["a"], ["b"],
        [helper.make_node("Constant", [], ["w"], value=_external("w", location)),
         helper.make_node("Add", ["a", "w"], ["b"])], [helper.make_opsetid("", 21)])
    return _model([helper.make_node("AddW", ["x"], ["y"], domain="local")],
                  functions=[function])


BUILDERS = [in_initializer, in_constant, in_sparse_initializer, in_subgraph, in_function]


@pytest.fixture
def folders(tmp_path):
    """(model folder, a 16-byte file outside it that an attack would read)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    W.tofile(tmp_path / "outside" / "secret.bin")
    return tmp_path / "model", tmp_path / "outside" / "secret.bin"


def save(model: onnx.ModelProto, folder: Path) -> str:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


# --- runtime/safety.py ------------------------------------------------------------------------

@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize(("attack", "message"), [
    ("../../etc/passwd", "whose '..' escapes the model's folder"),
    ("../outside/secret.bin", "whose '..' escapes the model's folder"),
    ("/etc/passwd", "at the absolute path '/etc/passwd'"),
    ("symlink", "a link that resolves to"),
])
def test_external_data_outside_the_folder_is_refused(folders, build, attack, message):
    folder, secret = folders
    if attack == "symlink":
        os.symlink(secret, folder / "link.bin")
        attack = "link.bin"
    path = save(build(attack), folder)
    with pytest.raises(UnsafeModelError) as err:
        check_model_file(path)
    text = str(err.value)
    assert text.startswith(f"{path}: refused: tensor 'w' (")
    assert message in text and "only files inside the model's folder are allowed" in text
    where = {"in_initializer": "initializer of graph 'g'",
             "in_constant": "attribute 'value' of node 'c' (Constant) in graph 'g'",
             "in_sparse_initializer": "values of a sparse initializer of graph 'g'",
             "in_subgraph": "attribute 'value' of Constant node in subgraph 'then' "
                            "(attribute 'then_branch' of node 'if' (If) in graph 'g')",
             "in_function": "Constant node in function 'AddW'"}[build.__name__]
    assert where in text
    # The runtime's loader refuses it too, before onnxruntime sees the file.
    with pytest.raises(UnsafeModelError):
        load(path)


def test_unsafe_model_is_a_clear_cli_error(folders, tmp_path):
    folder, _ = folders
    path = save(in_initializer("../../etc/passwd"), folder)
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    for result in (run_cli("predict", path, "--input", str(tmp_path / "x.npy")),
                   run_cli("check", path)):
        assert_clean_error(result, 2, f"error: {path}: refused: tensor 'w'", "escapes")
    result = run_cli("check", path, "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["passed"] is False and report["file"]["safe"] is False
    assert "escapes the model's folder" in report["file"]["error"]


def test_external_data_inside_the_folder_is_accepted(folders, tmp_path):
    folder, _ = folders
    (folder / "data").mkdir()
    np.concatenate([np.zeros(2, np.float32), W.ravel()]).tofile(folder / "data" / "w.bin")
    os.symlink("data", folder / "alias")  # a link that stays inside the folder is fine
    for location in ("data/w.bin", "alias/w.bin"):
        path = save(in_initializer(location, offset=8), folder)
        check_model_file(path)
        assert [t.name for t in external_tensors(path)] == ["w"]
        x = np.ones((3, 4), np.float32)
        np.testing.assert_array_equal(load(path).predict(x)["y"], x + W)
    result = run_cli("check", path, "--runtimes", "onnxruntime", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file"] == {"safe": True, "external_data_tensors": 1,
                                                 "checker": "passed"}


@pytest.mark.parametrize(("location", "setup", "message"), [
    ("sub/../w.bin", None, "whose '..' escapes"),
    ("*/_ORT_MEM_ADDR_/*", None, "onnxruntime's raw memory address marker"),
    ("missing.bin", None, "'missing.bin', which does not exist"),
    ("w.bin", "hardlink", "a file with 2 hard links"),
    ("w.bin", "short", "reading bytes [0, 16) of a 8-byte file"),
    ("C:\\secrets\\w.bin", None, "at the absolute path"),
    ("", None, "but gives no location"),
])
def test_other_external_data_tricks_are_refused(folders, location, setup, message):
    folder, secret = folders
    if setup == "hardlink":
        os.link(secret, folder / "w.bin")
    elif setup == "short":
        np.zeros(2, np.float32).tofile(folder / "w.bin")
    path = save(in_initializer(location), folder)
    with pytest.raises(UnsafeModelError, match="refused") as err:
        check_model_file(path)
    assert message in str(err.value)


def test_checker_and_malformed_files_are_refused(tmp_path):
    path = save(_model([helper.make_node("NoSuchOp", ["x"], ["y"])]), tmp_path)
    with pytest.raises(UnsafeModelError, match=r"onnx.checker rejects the model: .*NoSuchOp"):
        check_model_file(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 10)
    with pytest.raises(UnsafeModelError, match="garbage.onnx: not a valid ONNX file"):
        check_model_file(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UnsafeModelError, match="the file is empty"):
        check_model_file(empty)
    assert issubclass(UnsafeModelError, InputError) and issubclass(UnsafeModelError, ValueError)


def test_scan_runs_without_onnx_and_the_checker_is_skipped(folders):
    folder, _ = folders
    W.tofile(folder / "w.bin")
    good = save(in_initializer("w.bin"), folder)
    code = ("import sys\nsys.modules['onnx'] = None\n"
            "from nnspec.runtime.safety import check_model_file, UnsafeModelError\n"
            f"check_model_file({good!r})\n"
            f"open({good!r}, 'wb').write(bytes.fromhex({in_initializer('../x').SerializeToString().hex()!r}))\n"  # noqa: E501
            "try:\n"
            f"    check_model_file({good!r})\n"
            "except UnsafeModelError as err:\n"
            "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning: the onnx package is not installed: skipped onnx.checker" in result.stderr
    assert result.stderr.count("warning") == 1
    assert "whose '..' escapes the model's folder" in result.stdout


def test_scanner_agrees_with_onnx_on_real_models(small_run):
    run, _ = small_run
    model = onnx.load(run / "model.onnx")
    assert external_tensors(run / "model.onnx") == []
    # The same weights saved as external data: every one found, each inside the folder.
    folder = run.parent / "external"
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    found = external_tensors(folder / "model.onnx")
    assert sorted(t.name for t in found) == sorted(i.name for i in model.graph.initializer)
    check_model_file(folder / "model.onnx")
    x = load_digits()["x"][:5].astype(np.float32)
    np.testing.assert_array_equal(load(folder / "model.onnx").predict(x)["output"],
                                  load(run / "model.onnx").predict(x)["output"])


# --- nnspec check ------------------------------------------------------------------------------

def _copy_model(run: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "model.onnx", folder / "model.onnx")
    return folder / "model.onnx"


def test_check_runs_every_installed_runtime(small_run, tmp_path):
    run, _ = small_run
    result = run_cli("check", str(run / "model.onnx"))  # with the run's bundle, if it has one
    assert result.returncode == 0, result.stdout + result.stderr
    for name in runners.available():
        assert name in result.stdout
    assert "FAIL" not in result.stdout and "ok: " in result.stdout
    if (run / "reference_io.npz").exists():
        report = json.loads(run_cli("check", str(run / "model.onnx"), "--json").stdout)
        assert report["passed"] and report["expected"]["source"] == str(
            run / "reference_io.npz")
    alone = _copy_model(run, tmp_path / "alone")  # no bundle: random inputs, vs onnxruntime
    report = json.loads(run_cli("check", str(alone), "--json").stdout)
    assert report["passed"] is True
    assert [r["name"] for r in report["runtimes"]] == runners.available()
    assert report["file"] == {"safe": True, "external_data_tensors": 0, "checker": "passed"}
    assert report["expected"] == {"source": "onnxruntime", "random_seed": 0, "samples": 16,
                                  "outputs": ["output"]}
    for row in report["runtimes"]:
        assert row["passed"] and row["error"] is None and row["max_abs_diff"] < 1e-4
        assert row["outputs"]["output"]["shape"] == [16, 10]


def test_check_against_the_golden_bundle(small_run, tmp_path):
    run, _ = small_run
    path = _copy_model(run, tmp_path / "good")
    x = load_digits()["x"][:40].astype(np.float32)
    y = Model(path).predict(x)["output"]
    np.savez(tmp_path / "good" / "reference_io.npz", **{"input:pixels": x, "output:output": y})
    result = run_cli("check", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["expected"] == {"source": str(tmp_path / "good" / "reference_io.npz"),
                                  "samples": 40, "outputs": ["output"]}
    assert all(r["passed"] for r in report["runtimes"])

    bad = _copy_model(run, tmp_path / "bad")
    np.savez(tmp_path / "bad" / "reference_io.npz",
             **{"input:pixels": x, "output:output": y + np.float32(1e-3)})
    result = run_cli("check", str(bad))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "FAILED: onnxruntime" in result.stderr
    assert "Traceback" not in result.stderr
    rows = json.loads(run_cli("check", str(bad), "--json").stdout)["runtimes"]
    assert [r["error"] for r in rows] == ["output 'output' differs by 0.001 > atol 0.0001"
                                          ] * len(rows)
    assert run_cli("check", str(bad), "--atol", "2e-3").returncode == 0

    np.savez(tmp_path / "bad" / "odd.npz", x=x)
    result = run_cli("check", str(bad), "--bundle", str(tmp_path / "bad" / "odd.npz"))
    assert_clean_error(result, 2, "needs arrays named input:NAME and output:NAME")
    result = run_cli("check", str(bad), "--bundle", str(tmp_path / "none.npz"))
    assert_clean_error(result, 2, "--bundle: no such file")


def test_check_reports_a_failing_runtime_without_a_traceback(small_run, monkeypatch, capsys):
    from nnspec.main import main

    run, _ = small_run

    def broken(model, feeds):
        raise RuntimeError("cannot load\n  the model:   unsupported op")

    monkeypatch.setitem(runners.RUNNERS, "tract", broken)
    monkeypatch.setattr(runners, "available", lambda: ["onnxruntime", "tract"])
    assert main(["check", str(run / "model.onnx"), "--runtimes",
                 "onnxruntime,tract,reference", "--json"]) == 1
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["runtimes"]}
    assert rows["onnxruntime"]["passed"] is True
    assert rows["tract"] == {**rows["tract"], "passed": False, "max_abs_diff": None,
                             "error": "RuntimeError: cannot load the model: unsupported op"}
    assert rows["reference"]["error"] == "not installed (pip install onnx)"
    assert main(["check", str(run / "model.onnx"), "--runtimes", "tract"]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "RuntimeError" in out.out
    assert "Traceback" not in out.out + out.err


def test_check_usage_errors(small_run, tmp_path):
    run, _ = small_run
    assert_clean_error(run_cli("check", str(run / "model.onnx"), "--runtimes", "tflite"), 2,
                       "--runtimes: unknown runtime(s) ['tflite']")
    assert_clean_error(run_cli("check", str(tmp_path / "none.onnx")), 2, "no model file")


def test_check_needs_neither_jax_nor_onnx(small_run):
    run, _ = small_run
    result = run_without(TRAINING_STACK, "check", str(run / "model.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    result = run_without(f"{TRAINING_STACK},onnx", "check", str(run / "model.onnx"),
                         "--runtimes", "onnxruntime", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["file"]["checker"] == "skipped: onnx not installed"
    assert "skipped onnx.checker" in result.stderr
    assert report["passed"] is True


def test_check_tract_without_onnx(small_run):
    if "tract" not in runners.available():
        pytest.skip("tract is not installed")
    run, _ = small_run
    result = run_without("onnx", "check", str(run / "model.onnx"), "--json")
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["runtimes"]] == ["onnxruntime", "tract"]
    assert result.returncode == 0, result.stdout  # tract's outputs matched by position




@pytest.fixture(scope="module")
def tokens_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    ids = np.random.default_rng(0).integers(0, 20, size=(200, 6)).astype(np.int32)
    np.savez(folder / "d.npz", x=ids, y=(ids[:, 0] > 9).astype(np.int64))
    (folder / "tokens.yaml").write_text(EMBED)
    result = run_cli("train", "tokens.yaml", "--out", "run", "-q", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def test_random_inputs_respect_input_ranges(tokens_run):
    model = Model(tokens_run / "model.onnx")
    feeds = random_inputs(model, 500, seed=1)
    ids = feeds["ids"]
    assert ids.dtype == np.int32 and ids.shape == (500, 6)
    assert ids.min() == 0 and ids.max() == 19  # the whole table, nothing outside
    result = run_cli("check", str(tokens_run / "model.onnx"), "--samples", "64", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(r["passed"] for r in json.loads(result.stdout)["runtimes"])


# --- nnspec bench ------------------------------------------------------------------------------

def test_bench_against_jax(small_run):
    run, _ = small_run
    result = run_cli("bench", str(run / "model.onnx"), "--runs", "30", "--warmup", "3",
                     "--batch", "8", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size_bytes"] == os.path.getsize(run / "model.onnx")
    assert report["batch"] == 8 and report["threads"] == 1
    for system in ("onnxruntime", "jax"):
        latency = report[system]["latency_ms"]
        assert latency["runs"] == 30 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert report[system]["throughput"]["batch"] == 8
        assert report[system]["throughput"]["samples_per_second"] > 0
    assert report["onnxruntime"]["threads"] == 1
    assert report["jax"]["backend"] == "cpu" and report["jax"]["compile_seconds"] > 0


def test_bench_without_jax_and_outside_a_run(small_run, tmp_path):
    run, _ = small_run
    result = run_without(TRAINING_STACK, "bench", str(run / "model.onnx"), "--runs", "20",
                         "--warmup", "2")
    assert result.returncode == 0, result.stderr
    assert "latency p50 (batch 1), ms" in result.stdout
    assert "throughput (batch 32), samples/s" in result.stdout
    assert "jax: skipped (JAX/Flax not installed)" in result.stdout
    alone = _copy_model(run, tmp_path / "alone")
    result = run_cli("bench", str(alone), "--runs", "10", "--warmup", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jax"] == {
        "skipped": "no run directory beside the model (no weights.msgpack, resolved_spec.yaml)"}
    assert_clean_error(run_cli("bench", str(alone), "--batch", "0"), 2,
                       "--batch: expected a positive count")


def test_bench_integer_inputs_in_jax(tokens_run):
    result = run_cli("bench", str(tokens_run / "model.onnx"), "--runs", "10", "--warmup", "1",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert "latency_ms" in json.loads(result.stdout)["jax"], result.stdout


# --- runtime/inputs.py -------------------------------------------------------------------------

def test_read_npy_npz_and_several_files(small_run, tmp_path):
    run, _ = small_run
    model = Model(run / "model.onnx")
    x = load_digits()["x"][:5].astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    np.savez(tmp_path / "named.npz", pixels=x)
    np.savez(tmp_path / "other.npz", whatever=x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    np.testing.assert_array_equal(read_inputs(tmp_path / "batch.npy", model), x)
    np.testing.assert_array_equal(read_inputs(str(tmp_path / "named.npz"), model), x)
    np.testing.assert_array_equal(read_inputs(tmp_path / "other.npz", model), x)
    both = read_inputs([tmp_path / "one.npy", tmp_path / "batch.npy"], model)
    np.testing.assert_array_equal(both, np.concatenate([x[:1], x]))
    with pytest.raises(InputError, match=r"holds \['a', 'b'\]; the model's input is 'pixels'"):
        read_inputs(tmp_path / "two.npz", model)
    with pytest.raises(InputError, match="no such file"):
        read_inputs(tmp_path / "none.npy", model)
    (tmp_path / "junk.npy").write_text("junk")
    with pytest.raises(InputError, match="cannot read .*junk.npy"):
        read_inputs(tmp_path / "junk.npy", model)


def test_read_csv(small_run, tmp_path):
    run, _ = small_run
    model = Model(run / "model.onnx")
    x = load_digits()["x"][:4].astype(np.float32)
    flat = x.reshape(4, 64)
    with open(tmp_path / "header.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"p{i}" for i in range(64)])
        writer.writerows(flat.tolist())
        fh.write("\n")  # trailing blank line
    np.savetxt(tmp_path / "plain.csv", flat, delimiter=",", fmt="%g")
    for name in ("header.csv", "plain.csv"):
        got = read_inputs(tmp_path / name, model)
        assert got.shape == (4, 8, 8)
        np.testing.assert_array_equal(got, x)
    (tmp_path / "bad.csv").write_text("1,2\n3,abc\n")
    with pytest.raises(InputError, match=r"bad.csv:2: not a number: 'abc'"):
        read_inputs(tmp_path / "bad.csv", model)
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(InputError, match=r"ragged.csv:2: 2 values, the rows before hold 3"):
        read_inputs(tmp_path / "ragged.csv", model)
    (tmp_path / "narrow.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="hold 3 values; input 'pixels' takes 8x8 per sample"):
        read_inputs(tmp_path / "narrow.csv", model)
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="holds no data rows"):
        read_inputs(tmp_path / "empty.csv", model)


def _image_model(folder: Path, shape: list[int], dtype: int, metadata: dict | None = None
                 ) -> Model:
    """A model that returns its input as float: what read_inputs produced is what it gets."""
    node = helper.make_node("Cast", ["image"], ["y"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", dtype,
                                                                         ["n", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["n", *shape])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    helper.set_model_props(model, metadata or {})
    path = folder / f"image_{len(list(folder.glob('image_*.onnx')))}.onnx"
    onnx.save(model, path)
    return Model(path)


def test_read_images(tmp_path):
    from PIL import Image as image
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    image.fromarray(rgb).save(tmp_path / "a.png")
    image.fromarray(rgb[::-1]).save(tmp_path / "b.jpg", quality=95)
    gray8 = np.asarray(image.fromarray(rgb).convert("L").resize((8, 8),
                                                                image.Resampling.BILINEAR))

    raw = _image_model(tmp_path, [8, 8], TensorProto.UINT8)
    got = read_inputs(tmp_path / "a.png", raw)
    assert got.dtype == np.uint8 and got.shape == (1, 8, 8)
    np.testing.assert_array_equal(got[0], gray8)
    np.testing.assert_array_equal(raw.predict(got)["y"], got.astype(np.float32))
    two = read_inputs([tmp_path / "a.png", tmp_path / "b.jpg"], raw)
    assert two.shape == (2, 8, 8) and two.dtype == np.uint8

    channels_last = _image_model(tmp_path, [16, 12, 3], TensorProto.FLOAT)
    got = read_inputs(tmp_path / "a.png", channels_last)
    assert got.dtype == np.float32 and got.shape == (1, 16, 12, 3)
    np.testing.assert_array_equal(got[0], rgb.astype(np.float32))  # raw 0..255, no resize

    channels_first = _image_model(tmp_path, [1, 8, 8], TensorProto.FLOAT,
                                  {"Image.NominalPixelRange": "Normalized_0_1"})
    got = read_inputs(tmp_path / "a.png", channels_first)
    assert got.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(got[0, 0], gray8 / 255.0, rtol=1e-6)

    flat = _image_model(tmp_path, [64], TensorProto.FLOAT)
    with pytest.raises(InputError, match=r"input 'image' of shape \(64\) is not an image"):
        read_inputs(tmp_path / "a.png", flat)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read .*broken.png' as an image"):
        read_inputs(tmp_path / "broken.png", raw)


def test_json_predictions_are_predicts_report(small_run, tmp_path):
    run, _ = small_run
    x = load_digits()["x"][:3].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model = Model(run / "model.onnx")
    stream = io.StringIO()
    write_predictions(model.predict(x), model.labels, "json", stream,
                      model=str(run / "model.onnx"))
    cli = run_cli("predict", str(run / "model.onnx"), "--input", str(tmp_path / "x.npy"))
    assert json.loads(stream.getvalue()) == json.loads(cli.stdout)


def test_csv_predictions():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    stream = io.StringIO()
    write_predictions({"animal": probs}, {"animal": ["cat", "dog", "cow"]}, "csv", stream)
    rows = list(csv.reader(io.StringIO(stream.getvalue())))
    assert rows == [["class", "label", "p_cat", "p_dog", "p_cow"],
                    ["1", "dog", "0.1", "0.7", "0.2"],
                    ["0", "cat", "0.5", "0.25", "0.25"]]
    assert np.float32(rows[1][2]) == probs[0, 0]  # float32 text reads back exactly
    stream = io.StringIO()
    write_predictions({"animal": probs, "score": np.array([[1.5], [-2.0]], np.float32)}, {},
                      "csv", stream)
    assert stream.getvalue().splitlines() == [
        "animal.class,animal.p_0,animal.p_1,animal.p_2,score",
        "1,0.1,0.7,0.2,1.5", "0,0.5,0.25,0.25,-2.0"]
    with pytest.raises(ValueError, match="unknown prediction format 'xml'"):
        write_predictions({"animal": probs}, {}, "xml", io.StringIO())


# --- nnspec predict with the formats of runtime/inputs.py ----------------------------------

def test_predict_csv_in_csv_out_without_jax(small_run, tmp_path):
    run, _ = small_run
    digits = load_digits()
    x, y = digits["x"][:50].astype(np.float32), digits["y"][:50]
    np.savetxt(tmp_path / "a.csv", x[:20].reshape(20, 64), delimiter=",", fmt="%g",
               header=",".join(f"p{i}" for i in range(64)), comments="")
    np.save(tmp_path / "b.npy", x[20:])
    result = run_without(TRAINING_STACK, "predict", str(run / "model.onnx"), "--input",
                         str(tmp_path / "a.csv"), str(tmp_path / "b.npy"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["class", *(f"p_{i}" for i in range(10))]
    classes = np.array([int(r[0]) for r in rows[1:]])
    assert len(classes) == 50 and np.mean(classes == y) > 0.85
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs, Model(run / "model.onnx").predict(x)["output"], rtol=1e-6)
    repeated = run_cli("predict", str(run / "model.onnx"), "--input", str(tmp_path / "a.csv"),
                       "--input", str(tmp_path / "b.npy"), "--format", "csv")
    assert repeated.stdout == result.stdout


def test_predict_images_and_bad_files(tmp_path):
    from PIL import Image as image
    raw = _image_model(tmp_path, [8, 8], TensorProto.UINT8)
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    image.fromarray(pixels).save(tmp_path / "a.png")
    result = run_cli("predict", raw.path, "--input", str(tmp_path / "a.png"),
                     str(tmp_path / "a.png"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]["y"]
    assert out["shape"] == [2, 8, 8] and out["values"][1] == pixels.tolist()
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    assert_clean_error(run_cli("predict", raw.path, "--input", str(tmp_path / "bad.csv")), 2,
                       "bad.csv:2: not a number: 'x'")
    assert_clean_error(run_cli("predict", raw.path, "--input", str(tmp_path / "a.png"),
                               "--format", "xml"), 2, "invalid choice: 'xml'")

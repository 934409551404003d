"""The runtime needs only numpy and onnxruntime: `nnspec predict` runs with JAX unimportable."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import EMBED

from nnspec.compiler.data.dataset import load_digits

# Makes every import of the training stack fail, as on a device that has only the runtime.
BLOCK = """
import sys
BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "nnspec.compiler")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ImportError(f"{name} is not installed on this device")
sys.meta_path.insert(0, Block())
from nnspec.main import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax"))
assert not leaked, leaked
sys.exit(code)
"""


def predict_without_jax(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, "predict", *args], capture_output=True,
                          text=True, timeout=120)


def test_blocker_really_blocks():
    result = subprocess.run([sys.executable, "-c", BLOCK.replace("from nnspec.main", "import jax"
                                                                 "\nfrom nnspec.main")],
                            capture_output=True, text=True)
    assert "jax is not installed on this device" in result.stderr


def test_predict_without_jax_matches_labels(small_run, tmp_path):
    run, _ = small_run
    digits = load_digits()
    x, y = digits["x"][:200].astype(np.float32), digits["y"][:200]
    np.save(tmp_path / "x.npy", x)
    result = predict_without_jax(str(run / "model.onnx"), "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = report["outputs"]["output"]
    assert out["shape"] == [200, 10]
    probs = np.array(out["values"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert out["class"] == probs.argmax(-1).tolist()
    assert np.mean(np.array(out["class"]) == y) > 0.85  # chance is 0.1


def test_predict_one_sample_and_npz(small_run, tmp_path):
    run, _ = small_run
    x = load_digits()["x"][:1].astype(np.float32)
    np.save(tmp_path / "one.npy", x[0])
    np.savez(tmp_path / "batch.npz", pixels=x)
    one = predict_without_jax(str(run / "model.onnx"), "--input", str(tmp_path / "one.npy"))
    batch = predict_without_jax(str(run / "model.onnx"), "--input", str(tmp_path / "batch.npz"))
    assert one.returncode == 0 and batch.returncode == 0, one.stderr + batch.stderr
    assert json.loads(one.stdout)["outputs"] == json.loads(batch.stdout)["outputs"]


def test_wrong_input_is_a_clear_error(small_run, tmp_path):
    run, _ = small_run
    np.save(tmp_path / "bad.npy", np.zeros((4, 7), np.float32))
    result = predict_without_jax(str(run / "model.onnx"), "--input", str(tmp_path / "bad.npy"))
    assert result.returncode == 2
    assert "input 'pixels' expects shape (batch, 8, 8), got (4, 7)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_files_are_bad_input(small_run, tmp_path):
    run, _ = small_run
    result = predict_without_jax(str(tmp_path / "none.onnx"), "--input", "x.npy")
    assert result.returncode == 2 and "no model file" in result.stderr
    result = predict_without_jax(str(run / "model.onnx"), "--input", str(tmp_path / "no.npy"))
    assert result.returncode == 2 and "no such file" in result.stderr




def test_out_of_range_ids_are_refused_at_the_boundary(tmp_path):
    from conftest import run_cli

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=(200, 6)).astype(np.int32)
    np.savez(tmp_path / "d.npz", x=ids, y=(ids[:, 0] > 9).astype(np.int64))
    (tmp_path / "tokens.yaml").write_text(EMBED)
    result = run_cli("train", "tokens.yaml", "--out", "run", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    np.save(tmp_path / "bad.npy", np.array([[0, 1, 2, 3, 4, 20]], np.int32))
    result = predict_without_jax(str(tmp_path / "run" / "model.onnx"), "--input",
                                 str(tmp_path / "bad.npy"))
    assert result.returncode == 2
    assert "input 'ids' holds ids outside [0, 20) (the embedding's table): got [0, 20]" in (
        result.stderr)


def test_embedding_needs_an_integer_input(tmp_path):
    from nnspec.main import main

    (tmp_path / "tokens.yaml").write_text(EMBED.replace("dtype: int32", "dtype: float32"))
    assert main(["validate", str(tmp_path / "tokens.yaml")]) == 2

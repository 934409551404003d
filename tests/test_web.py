"""`nnspec web`: the page runs the model in headless Chromium (Debian's package, driven by
Playwright; no browser download) and gives the Python onnxruntime outputs within 1e-5 on the
samples of each run's reference_io.npz, for an MLP, a CNN and an LSTM; a digit drawn on its
canvas with the mouse is downsampled into the model's own input range and predicted."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
from conftest import EXAMPLES, run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TOLERANCE = 1e-5
# Tiny versions of the examples: a few epochs on 300 digits (parity, not accuracy, is tested).
TINY = ("--set", "data.limit=300", "--set", "train.epochs=1", "-q")


def _skip_reason() -> str | None:
    from nnspec.runtime.web import ORT_FILES, cache_dir

    if not os.path.isfile(CHROMIUM):
        return "chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    cached = any(all((d / "node_modules/onnxruntime-web/dist" / f).is_file() for f in ORT_FILES)
                 for d in (cache_dir() / "onnxruntime-web").glob("*"))
    if shutil.which("npm") is None and not cached:
        return "npm is not installed and onnxruntime-web is not in the cache (apt-get install npm)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def runs(small_run, tmp_path_factory):
    """Run directories by kind: the shared SMALL MLP, and tiny CNN and LSTM examples trained
    side by side."""
    folder = tmp_path_factory.mktemp("web-runs")
    procs = {kind: subprocess.Popen(
        [sys.executable, "-m", "nnspec", "train", str(EXAMPLES / f"{kind}.yaml"),
         "--out", str(folder / kind), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for kind in ("cnn", "lstm")}
    for kind, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{kind}: {err}"
    return {"mlp": small_run[0], "cnn": folder / "cnn", "lstm": folder / "lstm"}


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory):
    """The base URL of a loopback HTTP server over one page per run (`nnspec web`)."""
    root = tmp_path_factory.mktemp("site")
    for kind, run in runs.items():
        result = run_cli("web", str(run), "--out", str(root / kind))
        assert result.returncode == 0, result.stderr
        assert f"wrote {root / kind}/index.html" in result.stdout
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _open(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.evaluate("window.nnspec.ready")
    assert not errors, errors
    return page


def _onnxruntime(model, feeds: dict) -> dict[str, np.ndarray]:
    """Python onnxruntime's outputs for a model file or a run directory."""
    path = model / "model.onnx" if model.is_dir() else model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lstm"])
def test_page_outputs_equal_onnxruntime(kind, runs, site, browser):
    url, root = site
    config = json.loads((root / kind / "nnspec.json").read_text())
    assert config["inputs"][0]["widget"] == "canvas" and config["inputs"][0]["range"] == [0, 16]
    with np.load(runs[kind] / "reference_io.npz") as bundle:
        feeds = {k.split(":", 1)[1]: bundle[k] for k in bundle.files if k.startswith("input:")}
    page = _open(browser, f"{url}/{kind}/")
    assert page.evaluate("window.nnspec.ep") == "wasm"  # no GPU adapter here (--disable-gpu)
    got = page.evaluate("feeds => window.nnspec.run(feeds)",
                        {k: {"data": v.ravel().tolist(), "shape": list(v.shape)}
                         for k, v in feeds.items()})
    want = _onnxruntime(runs[kind], feeds)
    assert set(got["outputs"]) == set(want)
    for name, expected in want.items():
        out = got["outputs"][name]
        assert out["shape"] == list(expected.shape)
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(expected.shape), expected,
                                   rtol=0, atol=TOLERANCE, err_msg=f"{kind}: {name}")
    assert got["latency_ms"] > 0
    page.close()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw polylines on the page's canvas with the mouse; points in 0..1 of its size."""
    box = page.locator("canvas.draw").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=12)
        page.mouse.up()


def test_drawn_digit_is_downsampled_and_predicted(runs, site, browser):
    url, _ = site
    page = _open(browser, f"{url}/mlp/")
    draw(page, [[(0.5, 0.12), (0.5, 0.88)]])  # a "1"
    page.wait_for_selector("#top-output")
    last = page.evaluate("window.nnspec.last")
    pixels = np.asarray(last["feeds"]["pixels"]["data"], np.float32).reshape(1, 8, 8)
    assert 0 <= pixels.min() and 4 <= pixels.max() <= 16
    ink = pixels[0].sum(axis=0)
    assert ink[3:5].sum() > 0.8 * ink.sum()  # a centred vertical stroke: the middle columns
    probabilities = _onnxruntime(runs["mlp"], {"pixels": pixels})["output"][0]
    np.testing.assert_allclose(last["outputs"]["output"]["data"], probabilities,
                               atol=TOLERANCE)
    assert page.inner_text("#top-output") == str(int(np.argmax(probabilities)))
    status = page.inner_text("#status")
    assert "execution provider: wasm" in status and "latency" in status
    page.close()


def test_web_refuses_a_folder_it_did_not_write(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("web", str(runs["mlp"]), "--out", str(tmp_path))
    assert result.returncode == 2 and "is not a page `nnspec web` wrote" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    result = run_cli("web", str(tmp_path / "missing"), "--out", str(tmp_path / "page"))
    assert result.returncode == 2 and "no model file at" in result.stderr
    assert not (tmp_path / "page").exists()
    # No npm and an empty cache: a clear message, nothing written.
    result = run_cli("web", str(runs["mlp"]), "--out", str(tmp_path / "page"),
                     env={"PATH": str(tmp_path / "no-bin"), "NNSPEC_CACHE": str(tmp_path / "c")})
    assert result.returncode == 2 and "npm is not on PATH" in result.stderr, result.stderr
    assert not (tmp_path / "page").exists() and "Traceback" not in result.stderr


def _handmade(path, input_shape: list[int], elem_type: int, labels: list[str]) -> None:
    """A one-node ONNX model (mean over the features, then a fixed linear map to len(labels)
    scores) with nnspec's metadata: no training needed to test the page's widgets."""
    from onnx import TensorProto, helper, numpy_helper

    features = int(np.prod(input_shape))
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(features, len(labels))).astype(np.float32), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["xf"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["scores"])]
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("x", elem_type, ["batch", *input_shape])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(labels)])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # what opset 21 needs; onnxruntime-web reads up to IR 13
    helper.set_model_props(model, {"spec_name": "handmade", "labels": json.dumps(
        {"scores": labels}), "resolved_spec": json.dumps({"layers": []})})
    path.write_bytes(model.SerializeToString())


def test_form_and_image_inputs(site, browser, tmp_path):
    from onnx import TensorProto
    from PIL import Image

    url, root = site
    _handmade(tmp_path / "table.onnx", [4], TensorProto.FLOAT, ["a", "b", "c"])
    _handmade(tmp_path / "photo.onnx", [16, 16, 3], TensorProto.UINT8, ["cat", "dog"])
    for name in ("table", "photo"):
        result = run_cli("web", str(tmp_path / f"{name}.onnx"), "--out", str(root / name))
        assert result.returncode == 0, result.stderr

    page = _open(browser, f"{url}/table/")  # a form of 4 numbers
    values = [0.5, -1.25, 3.0, 2.0]
    for i, v in enumerate(values):
        page.fill(f"input[name=x-{i}]", str(v))
    page.click("#run")
    page.wait_for_selector("#top-scores")
    scores = _onnxruntime(tmp_path / "table.onnx", {"x": np.float32([values])})["scores"]
    assert page.inner_text("#top-scores") == "abc"[int(np.argmax(scores))]
    np.testing.assert_allclose(page.evaluate("window.nnspec.last")["outputs"]["scores"]["data"],
                               scores[0], atol=TOLERANCE)
    page.close()

    rgb = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    page = _open(browser, f"{url}/photo/")  # uint8 RGB: a file picker, 0..255 pixels
    assert page.evaluate("window.nnspec.config")["inputs"][0]["widget"] == "image"
    page.set_input_files("input[type=file]", str(tmp_path / "photo.png"))
    page.wait_for_selector("#top-scores")
    last = page.evaluate("window.nnspec.last")
    fed = np.asarray(last["feeds"]["x"]["data"]).reshape(1, 16, 16, 3)
    np.testing.assert_array_equal(fed, rgb[None])  # same size: the pixels themselves
    scores = _onnxruntime(tmp_path / "photo.onnx", {"x": rgb[None]})["scores"]
    # 768 float32 products of up to 255 each: summation order moves the last digits
    np.testing.assert_allclose(last["outputs"]["scores"]["data"], scores[0], rtol=1e-5)
    page.close()

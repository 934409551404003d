"""Image folders (`data.source: images`): the shipped digits written as PNG files in one folder
per class train, export with a passing cross-check, and `nnspec predict` on the image files
gives the outputs of the arrays training evaluated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from nnspec.compiler.data.dataset import load_digits, make_dataset
from nnspec.spec.validate import load_spec

SPEC = """\
version: 1
name: digit_folders
inputs:
  image: {shape: [8, 8, 1], dtype: uint8}
layers:
  - {type: rescale, scale: 0.0625}
  - {type: conv2d, filters: 8, kernel_size: 3, padding: same, activation: relu}
  - {type: flatten}
  - {type: dense, units: 10}
  - {type: softmax, name: probabilities}
outputs:
  digit: {from: probabilities, argmax: true}
data: {source: images, path: digits}
train:
  epochs: 8
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.01}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
"""
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_folders(root, count=None):
    """The shipped digits as 8-bit grayscale PNGs (values 0..16 kept), a folder per class."""
    from PIL import Image

    digits = load_digits()
    for i, (x, y) in enumerate(zip(digits["x"][:count], digits["y"][:count])):
        folder = root / NAMES[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_folders(root / "digits")
    (root / "spec.yaml").write_text(SPEC)
    result = run_cli("train", str(root / "spec.yaml"), "--out", str(root / "run"), "-q")
    assert result.returncode == 0, result.stderr
    return root


def test_image_folders_train_export_and_predict(image_run):
    from nnspec.runtime import load

    run = image_run / "run"
    assert json.loads((run / "parity.json").read_text())["passed"]
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] > 0.85
    loaded = load_spec(image_run / "spec.yaml")
    data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["digit"], loaded.folder)
    model = load(run / "model.onnx")
    assert model.labels["digit"] == sorted(NAMES)  # folder names, sorted
    files = data.sources["test"][:12]
    result = run_cli("predict", str(run / "model.onnx"), "--input", *files)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]["digit"]
    expected = model.predict(data.test.x["image"][:12])["digit"]
    assert np.array_equal(np.array(out["values"], np.float32), expected)
    truth = [f.split("/")[-2] for f in files]
    assert np.mean([p == t for p, t in zip(out["label"], truth)]) > 0.7


def test_formats_and_a_path_label_csv_read_the_same_pixels(tmp_path):
    from PIL import Image

    digits = load_digits()
    rows = ["path,label"]
    for i in range(40):
        fmt = ("png", "bmp", "webp", "png")[i % 4]
        name = f"img{i}.{fmt}"
        image = Image.fromarray(digits["x"][i].astype(np.uint8) * 15, mode="L")
        image.save(tmp_path / name, **({"lossless": True} if fmt == "webp" else {}))
        rows.append(f"{name},{NAMES[int(digits['y'][i])]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text(SPEC.replace("path: digits", "path: labels.csv, "
                                                     "test_split: 0, validation_split: 0"))
    loaded = load_spec(tmp_path / "spec.yaml")
    data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["digit"], loaded.folder)
    order = [int(f.rsplit("img", 1)[1].split(".")[0]) for f in data.sources["train"]]
    assert np.array_equal(data.train.x["image"][..., 0], digits["x"][order] * 15)
    classes = sorted({NAMES[int(y)] for y in digits["y"][:40]})
    assert [classes[c] for c in data.train.y["digit"]] == [NAMES[int(digits["y"][i])]
                                                           for i in order]


def test_confusion_plot_names_the_folder_classes(tmp_path, monkeypatch):
    """No labels in the spec: the confusion matrix's rows are the class folders' names."""
    from types import SimpleNamespace

    from nnspec.compiler import run
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.train import plots

    write_folders(tmp_path / "digits", count=100)
    (tmp_path / "spec.yaml").write_text(SPEC)
    loaded, _ = check_spec(tmp_path / "spec.yaml")
    graph, heads, data = run._prepare(loaded)
    y = data.test.y["digit"]
    result = SimpleNamespace(history=[{"epoch": 1, "loss": 1.0}],
                             predictions={"test": {"digit": np.eye(10)[y]}},
                             targets={"test": {"digit": y}})
    seen, real = [], plots.plot_confusion
    monkeypatch.setattr(plots, "plot_confusion",
                        lambda matrix, names, path, **kw: (seen.append((names, matrix)),
                                                           real(matrix, names, path, **kw)))
    run._plots(str(tmp_path), graph, loaded, result, heads, data.labels)
    assert seen[0][0] == sorted(NAMES) and (tmp_path / "confusion.png").stat().st_size > 0
    assert np.trace(seen[0][1]) == len(y)  # the predictions given: all right

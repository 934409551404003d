"""Bad data gets a clear, located message (a DataError: exit code 2, no traceback), every
problem at once; `data.on_error: skip` trains without the bad samples and says which."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from nnspec.compiler.data.dataset import make_dataset
from nnspec.spec.errors import DataError
from nnspec.spec.validate import load_spec

TABLE = """\
version: 1
name: table
inputs:
  x: {shape: [2]}
layers:
  - {type: dense, units: 2}
  - {type: softmax, name: p}
outputs:
  kind: {from: p, labels: [cat, dog]}
data:
  source: csv
  path: rows.csv
  columns: {x: [height, weight], kind: kind}
  test_split: 0
  validation_split: 0
train: {epochs: 1, loss: sparse_categorical_crossentropy}
"""
GOOD = "height,weight,kind\n" + "".join(f"{i},{i * 2},{'cat' if i % 2 else 'dog'}\n"
                                        for i in range(10))


def _load(tmp_path, rows: str, spec: str = TABLE):
    (tmp_path / "rows.csv").write_text(rows)
    (tmp_path / "spec.yaml").write_text(spec)
    loaded = load_spec(tmp_path / "spec.yaml")
    labels = {k: o.labels for k, o in (loaded.spec.outputs or {}).items() if o.labels}
    return make_dataset(loaded.spec.data, loaded.spec.inputs, ["kind"], loaded.folder,
                        labels=labels)


def _error(tmp_path, rows: str, spec: str = TABLE) -> str:
    with pytest.raises(DataError) as err:
        _load(tmp_path, rows, spec)
    return str(err.value)


def test_a_good_table_loads(tmp_path):
    data = _load(tmp_path, GOOD)
    assert data.train.x["x"].shape == (10, 2) and data.labels == {"kind": ["cat", "dog"]}


def test_a_column_missing_in_the_file_says_did_you_mean(tmp_path):
    message = _error(tmp_path, GOOD.replace("weight", "weigth", 1))
    assert "rows.csv has no column 'weight' (did you mean 'weigth'?)" in message
    assert "its columns are height, weigth, kind" in message


def test_a_columns_key_that_is_no_input_or_output(tmp_path):
    message = _error(tmp_path, GOOD, TABLE.replace("{x: [height", "{xx: [height"))
    assert "data.columns.xx: not an input or output of the model; did you mean 'x'?" in message
    assert "data.columns has no entry for input 'x'" in message


def test_cells_that_do_not_parse_are_located_all_at_once(tmp_path):
    rows = GOOD.replace("3,6,cat", "3,six,cat").replace("7,14,cat", "seven,14,cat")
    message = _error(tmp_path, rows)
    assert "2 bad rows" in message
    assert "rows.csv:5: column 'weight': not a number: 'six'" in message
    assert "rows.csv:9: column 'height': not a number: 'seven'" in message


def test_a_malformed_row_is_located(tmp_path):
    message = _error(tmp_path, GOOD.replace("4,8,dog", "4,8"))
    assert "rows.csv:6: 2 fields, the header has 3" in message


def test_missing_values_fail_unless_a_policy_fills_them(tmp_path):
    rows = GOOD.replace("5,10,cat", "5,NA,cat").replace("6,12,dog", "6,,dog")
    message = _error(tmp_path, rows)
    assert "rows.csv:7: column 'weight' is missing (set data.columns.x.missing" in message
    assert "rows.csv:8: column 'weight' is missing" in message
    spec = TABLE.replace("{x: [height, weight],", "{x: {columns: [height, weight], "
                         "missing: constant, fill_value: -1},")
    data = _load(tmp_path, rows, spec)
    order = np.argsort(data.sources["train"])
    assert data.train.x["x"][order][5:7, 1].tolist() == [-1.0, -1.0]
    spec = spec.replace("missing: constant, fill_value: -1", "missing: mean")
    data = _load(tmp_path, rows, spec)
    weights = [i * 2 for i in range(10) if i not in (5, 6)]
    assert data.train.x["x"][order][5, 1] == pytest.approx(np.mean(weights))
    assert data.table["inputs"]["x"]["columns"][1]["fill"] == pytest.approx(np.mean(weights))


def test_a_label_outside_the_declared_classes(tmp_path):
    message = _error(tmp_path, GOOD.replace("8,16,dog", "8,16,cow"))
    assert ("rows.csv:10: label 'cow' of column 'kind' is not one of outputs.kind.labels "
            "['cat', 'dog']") in message


def test_on_error_skip_trains_without_bad_rows_and_says_which(tmp_path):
    rows = GOOD.replace("8,16,dog", "8,16,cow").replace("3,6,cat", "3,six,cat")
    data = _load(tmp_path, rows, TABLE.replace("validation_split: 0",
                                               "validation_split: 0\n  on_error: skip"))
    assert len(data.train) == 8 and sorted(data.sources["train"]) == [0, 1, 2, 4, 5, 6, 7, 9]
    assert len(data.skipped) == 2 and "rows.csv:5" in data.skipped[0]


def test_train_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "rows.csv").write_text(GOOD.replace("weight", "wieght"))
    (tmp_path / "spec.yaml").write_text(TABLE)
    result = run_cli("train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "did you mean 'wieght'?" in result.stderr and "Traceback" not in result.stderr


# -- images ----------------------------------------------------------------------------------

IMAGES = """\
version: 1
name: images
inputs:
  image: {shape: [8, 8, 1], dtype: uint8}
layers:
  - {type: flatten}
  - {type: dense, units: 2}
  - {type: softmax, name: p}
outputs:
  kind: {from: p, labels: [cat, dog]}
data: {source: images, path: folders, test_split: 0, validation_split: 0}
train: {epochs: 1, loss: sparse_categorical_crossentropy}
"""


def _folders(tmp_path, sizes=None):
    from PIL import Image

    for i in range(6):
        folder = tmp_path / "folders" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        size = (sizes or {}).get(i, 8)
        Image.fromarray(np.full((size, size), i * 10, np.uint8), mode="L").save(
            folder / f"{i}.png")
    return tmp_path / "folders"


def test_a_truncated_image_is_named(tmp_path):
    root = _folders(tmp_path)
    data = (root / "cat" / "1.png").read_bytes()
    (root / "cat" / "1.png").write_bytes(data[: len(data) // 2])
    (root / "dog" / "2.png").write_bytes(b"not an image")
    message = _error(tmp_path, "", IMAGES)
    assert "2 bad images" in message
    assert f"{root / 'cat' / '1.png'}: cannot read it as an image" in message
    assert f"{root / 'dog' / '2.png'}: cannot read it as an image" in message


def test_image_sizes_that_do_not_fit_without_resize(tmp_path):
    root = _folders(tmp_path, sizes={3: 10})
    message = _error(tmp_path, "", IMAGES)
    assert (f"{root / 'cat' / '3.png'}: 10x10 pixels, input 'image' takes 8x8 (set "
            "data.resize: resize)") in message
    data = _load(tmp_path, "", IMAGES.replace("validation_split: 0", "validation_split: 0, "
                                              "resize: resize"))
    assert data.train.x["image"].shape == (6, 8, 8, 1)
    free = IMAGES.replace("shape: [8, 8, 1]", "shape: [null, null, 1]").replace(
        "- {type: flatten}", "- {type: global_average_pool}")
    message = _error(tmp_path, "", free)
    assert "images of mixed sizes" in message and "set data.resize: resize" in message


def test_an_image_folder_outside_the_declared_classes(tmp_path):
    root = _folders(tmp_path)
    (root / "dog").rename(root / "bird")
    message = _error(tmp_path, "", IMAGES)
    assert f"{root / 'bird' / '0.png'}: label 'bird' is not one of outputs.kind.labels" in message
    data = _load(tmp_path, "", IMAGES.replace("validation_split: 0", "validation_split: 0, "
                                              "on_error: skip"))
    assert len(data.train) == 3 and len(data.skipped) == 3


def test_images_train_exits_2_without_a_traceback(tmp_path):
    root = _folders(tmp_path)
    (root / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "spec.yaml").write_text(IMAGES)
    result = run_cli("train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "1.png: cannot read it as an image" in result.stderr
    assert "Traceback" not in result.stderr

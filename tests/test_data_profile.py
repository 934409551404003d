"""`nnspec data SPEC`: what the data section resolves to, before any training, and every
problem at once (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, run_cli


def test_data_reports_a_table(tmp_path):
    result = run_cli("data", str(EXAMPLES / "penguins.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == {"train": 248, "validation": 27, "test": 69}
    assert sum(report["class_balance"]["species"]["test"].values()) == 69
    columns = {c["column"]: c for c in report["columns"]}
    assert columns["sex"]["missing"] == 11 and columns["sex"]["vocabulary_size"] == 2
    assert columns["body_mass_g"]["missing"] == 2
    assert columns["body_mass_g"]["min"] == 2700 and columns["body_mass_g"]["max"] == 6300
    assert report["inputs"]["measurements"] == {"shape": [4], "dtype": "float32"}
    assert report["first_samples"][0]["species"] in ("Adelie", "Chinstrap", "Gentoo")
    assert report["problems"] == []
    text = run_cli("data", str(EXAMPLES / "penguins.yaml")).stdout  # the same, as text
    assert "column sex: categorical 2 distinct, vocabulary 2" in text and "0 problem(s)" in text


def test_data_lists_every_problem_and_draws_a_contact_sheet(tmp_path):
    from PIL import Image

    for i in range(8):
        folder = tmp_path / "folders" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i * 30, np.uint8), mode="L").save(folder / f"{i}.png")
    (tmp_path / "folders" / "cat" / "1.png").write_bytes(b"broken")
    (tmp_path / "folders" / "dog" / "2.png").unlink()
    Image.fromarray(np.zeros((9, 9), np.uint8), mode="L").save(tmp_path / "folders" / "dog"
                                                               / "2.png")
    (tmp_path / "spec.yaml").write_text("""\
version: 1
name: images
inputs:
  image: {shape: [8, 8, 1], dtype: uint8}
layers:
  - {type: flatten}
  - {type: dense, units: 2}
outputs:
  kind: {from: dense_1}
data: {source: images, path: folders, test_split: 0, validation_split: 0}
train: {epochs: 1, loss: sparse_categorical_crossentropy}
""")
    sheet = tmp_path / "sheet.png"
    result = run_cli("data", str(tmp_path / "spec.yaml"), "--out", str(sheet))
    assert result.returncode == 2, result.stderr
    assert "2 problem(s)" in result.stdout
    assert "1.png: cannot read it as an image" in result.stdout
    assert "2.png: 9x9 pixels, input 'image' takes 8x8" in result.stdout
    assert "samples: train 6" in result.stdout and "Traceback" not in result.stderr
    with Image.open(sheet) as image:
        assert image.width > 0 and image.format == "PNG"


def test_a_parquet_file_is_profiled_block_by_block_as_the_same_csv(tmp_path, monkeypatch):
    """The column report of a Parquet file, read a record batch at a time, equals the one of
    the same rows as a CSV read whole: counts, ranges, exact means, vocabularies."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import yaml

    from nnspec.compiler.data import parquet, profile
    from nnspec.spec.validate import load_spec

    pq.write_table(pacsv.read_csv(EXAMPLES / "data" / "penguins.csv"),
                   tmp_path / "penguins.parquet", row_group_size=50)
    spec = yaml.safe_load((EXAMPLES / "penguins.yaml").read_text())
    spec["data"].update(source="parquet", path="penguins.parquet")
    (tmp_path / "penguins.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(parquet, "BLOCK_BYTES", 1)  # the smallest blocks: 256 rows
    blocks = [len(b.cells["island"]) for b in parquet.ParquetRows(
        str(tmp_path / "penguins.parquet"), ["island"]).blocks()]
    assert len(blocks) > 1, blocks  # the file is read in more than one block
    reports = [profile.profile(load_spec(str(path)), ["species"]) for path in
               (EXAMPLES / "penguins.yaml", tmp_path / "penguins.yaml")]
    csv, columns = ({c["column"]: c for c in r["columns"]} for r in reports)
    assert csv == columns
    assert columns["species"] == {"column": "species", "missing": 0, "type": "categorical",
                                  "distinct": 3}
    assert columns["bill_length_mm"]["mean"] == pytest.approx(43.92193, abs=1e-5)

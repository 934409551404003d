"""Tables (`data.source: csv`/`parquet`): the penguins example trains to the published accuracy,
and `nnspec predict` on raw CSV rows of its test split (strings, missing values) reproduces the
evaluation's predictions exactly, with numpy and onnxruntime only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, run_cli

from nnspec.compiler.data.dataset import make_dataset
from nnspec.spec.validate import load_spec

PENGUINS = EXAMPLES / "penguins.yaml"
CSV = EXAMPLES / "data" / "penguins.csv"


def _test_rows(tmp_path, edit=None):
    loaded = load_spec(PENGUINS)
    data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["species"], loaded.folder)
    lines = CSV.read_text().splitlines()
    rows = [lines[i + 1] for i in data.sources["test"]]  # data row i is line i + 2
    if edit:
        rows = [edit(r) for r in rows]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    return data, path, rows


@pytest.fixture(scope="module")
def penguins_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("penguins") / "run"
    result = run_cli("train", str(PENGUINS), "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return out


def test_penguins_reaches_the_published_accuracy(penguins_run):
    metrics = json.loads((penguins_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.97, metrics["test"]
    assert json.loads((penguins_run / "parity.json").read_text())["passed"]


def test_predict_on_raw_rows_reproduces_the_evaluation(penguins_run, tmp_path):
    from nnspec.runtime import load

    data, rows_csv, rows = _test_rows(tmp_path)
    assert sum("NA" in r.split(",") for r in rows) >= 1  # missing values among the raw rows
    result = run_cli("predict", str(penguins_run / "model.onnx"), "--input", str(rows_csv))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]
    model = load(penguins_run / "model.onnx")
    evaluated = model.predict(data.test.x)  # the arrays training evaluated on
    assert np.array_equal(np.array(out["species"]["values"], np.float32),
                          evaluated["species"])
    # The labels come from the CSV's species strings; accuracy on the raw rows is the test's.
    assert model.labels["species"] == ["Adelie", "Chinstrap", "Gentoo"]
    truth = [r.split(",")[0] for r in rows]
    accuracy = np.mean([p == t for p, t in zip(out["species"]["label"], truth)])
    metrics = json.loads((penguins_run / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
    table = json.loads(model.metadata["table"])
    island = table["inputs"]["island"]["columns"][0]
    assert island["vocabulary"] == ["Biscoe", "Dream", "Torgersen"]
    assert all(c["fill"] is not None for c in table["inputs"]["measurements"]["columns"])


def test_unseen_and_missing_categories_map_to_the_oov_id(penguins_run, tmp_path):
    from nnspec.runtime import load
    from nnspec.runtime.inputs import read_inputs

    model = load(penguins_run / "model.onnx")
    _, rows_csv, _ = _test_rows(tmp_path, edit=lambda r: ",".join(
        [c if i not in (1, 6) else ("Atlantis" if i == 1 else "") for i, c in
         enumerate(r.split(","))]))
    x = read_inputs(str(rows_csv), model)
    assert np.all(x["island"] == 0) and np.all(x["sex"] == 0)
    assert np.isfinite(model.predict(x)["species"]).all()


def test_parquet_gives_the_same_samples_as_csv(tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    pq.write_table(pacsv.read_csv(CSV), tmp_path / "penguins.parquet")
    loaded = load_spec(PENGUINS)
    csv_data = make_dataset(loaded.spec.data, loaded.spec.inputs, ["species"], loaded.folder)
    spec = loaded.spec.data.model_copy(update={"source": "parquet",
                                               "path": str(tmp_path / "penguins.parquet")})
    pq_data = make_dataset(spec, loaded.spec.inputs, ["species"], loaded.folder)
    for split in ("train", "validation", "test"):
        a, b = getattr(csv_data, split), getattr(pq_data, split)
        for k in a.x:
            assert np.array_equal(a.x[k], b.x[k]), (split, k)
        assert np.array_equal(a.y["species"], b.y["species"])
    assert pq_data.table["inputs"] == csv_data.table["inputs"]


def test_predict_names_a_missing_column(penguins_run, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("species,island,bill_length,bill_depth_mm,flipper_length_mm,body_mass_g,"
                    "sex\nAdelie,Dream,39,18,190,3500,male\n")
    result = run_cli("predict", str(penguins_run / "model.onnx"), "--input", str(rows))
    assert result.returncode == 2
    assert "has no column 'bill_length_mm' (did you mean 'bill_length'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_rereads_the_table(penguins_run):
    result = run_cli("evaluate", str(penguins_run), "--data-folder", str(EXAMPLES), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = json.loads((penguins_run / "metrics.json").read_text())
    assert report["samples"] == 69
    assert report["species"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_predict_on_parquet_rows_reproduces_the_evaluation(penguins_run, tmp_path):
    """The same test rows as a Parquet file (numbers typed, strings and nulls as Parquet holds
    them): the evaluation's predictions exactly."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from nnspec.runtime import load

    data, rows_csv, _ = _test_rows(tmp_path)
    table = pcsv.read_csv(rows_csv, convert_options=pcsv.ConvertOptions(
        null_values=["NA", ""], strings_can_be_null=True))
    pq.write_table(table, tmp_path / "rows.parquet")
    result = run_cli("predict", str(penguins_run / "model.onnx"), "--input",
                     str(tmp_path / "rows.parquet"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]["species"]
    evaluated = load(penguins_run / "model.onnx").predict(data.test.x)["species"]
    assert np.array_equal(np.array(out["values"], np.float32), evaluated)


def test_evaluate_encodes_with_the_preprocessing_the_model_ships(penguins_run, tmp_path):
    """The training rows' island names changed since training (so the vocabulary re-learned
    from the file would map the test rows' "Dream" to the out-of-vocabulary id): evaluate
    encodes the test rows with the model's shipped vocabulary, the arrays training evaluated."""
    import shutil

    from nnspec.compiler.export.evaluate import _split_of, model_spec
    from nnspec.runtime import load

    data, _, _ = _test_rows(tmp_path)
    (tmp_path / "data").mkdir()
    lines = CSV.read_text().splitlines()
    for i in data.sources["train"]:
        lines[i + 1] = lines[i + 1].replace(",Dream,", ",Dreamland,")
    (tmp_path / "data" / "penguins.csv").write_text("\n".join(lines) + "\n")
    shutil.copy(PENGUINS, tmp_path / "penguins.yaml")
    model = load(penguins_run / "model.onnx")
    spec = model_spec(model)
    relearned = make_dataset(spec.data, spec.inputs, ["species"], str(tmp_path)).test
    assert not np.array_equal(relearned.x["island"], data.test.x["island"])
    samples, _ = _split_of(model, spec, ["species"], "test", None, str(tmp_path))
    for name in data.test.x:
        np.testing.assert_array_equal(samples.x[name], data.test.x[name])
    np.testing.assert_array_equal(samples.y["species"], data.test.y["species"])


def test_a_missing_parquet_column_is_named_with_a_suggestion(tmp_path):
    """Training reads Parquet through the runtime's reader, so both say the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnspec.compiler.data import tables
    from nnspec.spec.errors import DataError

    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"bill_length": [1.0, 2.0], "species": ["a", "b"]}), path)
    with pytest.raises(DataError, match=r"^data\.columns: .*bill_lenght.*bill_length"):
        tables.read_parquet(path, ["bill_lenght", "species"])
    table = tables.read_parquet(path, ["bill_length", "species"])
    assert table.cells["species"] == ["a", "b"] and list(table.cells["bill_length"]) == [1, 2]

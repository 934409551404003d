"""A Parquet table read lazily, by row group: the penguins written with several row groups and
streamed (encoding learned over record batches, batches read by row group in a Grain worker,
validation and test evaluated through the file) train the same weights, bit for bit, as the
same file read into memory; a bad cell in a later row group is still `file: row N`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import EXAMPLES

from nnspec.compiler.data.dataset import make_dataset
from nnspec.compiler.data.parquet import TableColumn
from nnspec.compiler.graph.ir import check_spec
from nnspec.compiler.run import _prepare
from nnspec.compiler.train.engine import Trainer
from nnspec.spec.errors import DataError
from nnspec.spec.validate import load_spec

GROUP = 40  # rows a row group: the 344 penguins in 9 groups


def _write(tmp_path, edit=None):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(EXAMPLES / "data" / "penguins.csv")
    if edit:
        table = edit(table)
    path = tmp_path / "penguins.parquet"
    pq.write_table(table, path, row_group_size=GROUP)
    assert pq.ParquetFile(path).metadata.num_row_groups == 9
    spec = (EXAMPLES / "penguins.yaml").read_text().replace(
        "source: csv", "source: parquet").replace("data/penguins.csv", str(path)).replace(
        "epochs: 60", "epochs: 3")
    (tmp_path / "p.yaml").write_text(spec)
    return tmp_path / "p.yaml"


def _fit(path, *overrides, workers="auto"):
    loaded, _ = check_spec(path, list(overrides))
    graph, heads, data = _prepare(loaded)
    trainer = Trainer(graph, loaded.spec.train, heads, len(data.train))
    trainer.workers = workers
    return trainer, data, trainer.fit(data)


def test_streamed_parquet_trains_and_evaluates_as_in_memory(tmp_path):
    """Streamed (the splits read by row group, training batches decoded in a Grain worker,
    validation and test evaluated a chunk at a time through the file): the in-memory run's
    weights, per-epoch losses, validation and final metrics and predictions, bit for bit."""
    path = _write(tmp_path)
    _, eager_data, eager = _fit(path, "train.pipeline=device")
    trainer, data, streamed = _fit(path, "train.pipeline=stream", workers=1)
    assert trainer.pipeline == "stream"
    for split in (data.train, data.validation, data.test):
        assert all(isinstance(v, TableColumn) for v in split.x.values())
    assert data.table == eager_data.table  # vocabularies, fills, classes: learned the same
    for a, b in zip(jax.tree.leaves(streamed.variables), jax.tree.leaves(eager.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert streamed.history[-1]["val_loss"] == eager.history[-1]["val_loss"]
    assert [(r["loss"], r["val_accuracy"]) for r in streamed.history] == [
        (r["loss"], r["val_accuracy"]) for r in eager.history]
    assert streamed.metrics == eager.metrics
    for split in ("validation", "test"):
        np.testing.assert_array_equal(streamed.predictions[split]["species"],
                                      eager.predictions[split]["species"])
    # A checkpoint of one route is resumable on the other: the data hashes the same.
    from nnspec.compiler.train.checkpoint import data_sha256

    assert data_sha256(data.splits()) == data_sha256(eager_data.splits())
    changed = eager_data.splits()["train"].fingerprints
    assert changed and all(len(v) == 32 for v in changed.values())


def test_lazy_reads_equal_the_file_in_memory_and_bad_cells_are_located(tmp_path):
    """Rows read by row group in any order equal the in-memory encoding; a cell that does not
    parse in the eighth row group is reported as file: row, as in memory, and `on_error:
    skip` drops that row on both routes."""
    import pyarrow as pa

    path = _write(tmp_path)
    loaded = load_spec(path)
    spec = loaded.spec
    lazy = make_dataset(spec.data, spec.inputs, ["species"], loaded.folder, stream="stream")
    eager = make_dataset(spec.data, spec.inputs, ["species"], loaded.folder, stream="device")
    rows = np.array([[5, 0, 5], [len(lazy.train) - 1, 17, 2]])  # repeats, several groups
    for name, column in lazy.train.x.items():
        np.testing.assert_array_equal(column.take(rows), eager.train.x[name][rows])
        np.testing.assert_array_equal(np.asarray(lazy.test.x[name]), eager.test.x[name])

    # Grain calls the element from several threads of a process: reads racing on the shared
    # row-group cache give each thread its own rows.
    from concurrent.futures import ThreadPoolExecutor

    import nnspec.compiler.data.parquet as parquet_module

    column = lazy.train.x["measurements"]
    blocks = [np.random.default_rng(i).permutation(len(column))[:100] for i in range(16)]
    old, parquet_module.CACHE_BYTES = parquet_module.CACHE_BYTES, 1  # evict on every read
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(column.take, blocks))
    finally:
        parquet_module.CACHE_BYTES = old
    for rows, values in zip(blocks, got, strict=True):
        np.testing.assert_array_equal(values, eager.train.x["measurements"][rows])

    def bad(table):  # data row 301 (row group 8 of 9): a bill depth that is not a number
        depth = table.column("bill_depth_mm").cast(pa.string()).to_pylist()
        depth[300] = "deep"
        at = table.schema.get_field_index("bill_depth_mm")
        return table.set_column(at, "bill_depth_mm", pa.array(depth, pa.string()))

    path = _write(tmp_path, bad)
    loaded = load_spec(path)
    spec = loaded.spec
    messages = []
    for stream in ("stream", "device"):
        with pytest.raises(DataError) as err:
            make_dataset(spec.data, spec.inputs, ["species"], loaded.folder, stream=stream)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert (f"{tmp_path / 'penguins.parquet'}: row 301: column 'bill_depth_mm': not a number: "
            "'deep'") in messages[0]
    skip = spec.data.model_copy(update={"on_error": "skip"})
    kept = [make_dataset(skip, spec.inputs, ["species"], loaded.folder, stream=s)
            for s in ("stream", "device")]
    assert kept[0].skipped == kept[1].skipped and len(kept[0].skipped) == 1
    for k in kept:
        assert 300 not in [*k.sources["train"], *k.sources["validation"], *k.sources["test"]]
    assert all(np.array_equal(kept[0].sources[s], kept[1].sources[s]) for s in kept[1].sources)
    np.testing.assert_array_equal(np.asarray(kept[0].train.x["measurements"]),
                                  kept[1].train.x["measurements"])

"""`data.source: array_record`: ArrayRecord files, one sample a record, read lazily by index
through Grain's `ArrayRecordDataSource` and streamed (larger than memory is fine).

A record is the bytes of an uncompressed `.npz` (`np.savez`) holding that sample's arrays,
named after the spec's inputs and outputs (`x`/`y` also do for one input and one output):
self-describing, written by any numpy (`write_records` below does it). `path` is one
`.array_record` file or a folder of them (read in name order as one sequence); files named
`*_test.array_record` in the folder form the test split, else the last `test_split` of the
records do, with the validation split the block before it. Store the samples shuffled.

The inputs stay on disk (`RecordColumn`: reads and decodes records when indexed, so Grain's
worker processes do the decoding); the targets, small, are read once when the set opens.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.compiler.data.buffers import empty_aligned
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec

GROUP_SIZE = "group_size:1"
"""Writer option: one record a chunk, so reading a record decodes only that record."""


def write_records(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write samples as an ArrayRecord file: record i is `np.savez` of `{name: arrays[name][i]}`.
    Written to a temporary name and renamed, so a failed write leaves nothing behind."""
    from array_record.python.array_record_module import ArrayRecordWriter

    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"write_records: arrays of different lengths {counts}")
    temporary = f"{path}.partial"
    writer = ArrayRecordWriter(temporary, GROUP_SIZE)
    try:
        for i in range(next(iter(counts.values()))):
            buffer = io.BytesIO()
            np.savez(buffer, **{k: np.asarray(v[i]) for k, v in arrays.items()})
            writer.write(buffer.getvalue())
    finally:
        writer.close()
    os.replace(temporary, path)


def decode(record: bytes, where: str) -> dict[str, np.ndarray]:
    """A record's arrays; a DataError naming the record when it is not `.npz` bytes."""
    try:
        with np.load(io.BytesIO(record), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{where}: not an .npz record ({err})") from None


class RecordColumn:
    """One named array of every record of a block, read on demand: indexing returns numpy
    arrays (`take` reads a block of rows in ascending record order). Pickles as its paths,
    so Grain's worker processes open their own readers."""

    decodes = True
    """Reading decodes records: the streamed route gives it Grain worker processes."""

    def __init__(self, paths: Sequence[str], key: str, lo: int, hi: int,
                 shape: tuple[int, ...], dtype: np.dtype):
        self.paths, self.key, self.lo, self.hi = list(paths), key, lo, hi
        self.shape, self.dtype = (hi - lo, *shape), np.dtype(dtype)
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        flat = rows.reshape(-1)
        out = empty_aligned((flat.size, *self.shape[1:]), self.dtype)
        if not flat.size:
            return out.reshape((*rows.shape, *self.shape[1:]))
        order = np.argsort(flat, kind="stable")
        records = self._source.__getitems__((flat[order] + self.lo).tolist())
        for i, record, r in zip(order.tolist(), records, flat[order].tolist()):
            out[i] = decode(record, f"{self.paths[0]}: record {r + self.lo}")[self.key]
        return out.reshape((*rows.shape, *self.shape[1:]))

    def take(self, indices: Any, axis: int = 0, out: Any = None, mode: str = "raise"
             ) -> np.ndarray:
        # out/mode: `np.take` passes them; without them it would read every record.
        if axis != 0 or out is not None:
            raise ValueError("RecordColumn.take reads along axis 0 only")
        rows = np.asarray(indices, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max())} is out of bounds for {len(self)} records")
        return self._read(rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                column = RecordColumn(self.paths, self.key, self.lo + start,
                                      self.lo + max(start, stop), self.shape[1:], self.dtype)
                return column._read(np.arange(len(column))) if len(column) <= 1 else column
            return self._read(np.arange(start, stop, step))
        if isinstance(index, (int, np.integer)):
            return self._read(np.asarray([int(index) % len(self)]))[0]
        return self.take(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._read(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


def _files(path: str) -> tuple[list[str], list[str]]:
    if os.path.isfile(path):
        return [path], []
    if not os.path.isdir(path):
        raise DataError(f"data.path: no such file or folder {path!r} (source array_record)")
    found = sorted(glob.glob(os.path.join(path, "*.array_record")))
    test = [f for f in found if f.endswith("_test.array_record")]
    train = [f for f in found if f not in test]
    if not train:
        raise DataError(f"data.path: {path} holds no .array_record files")
    return train, test


def _block(paths: list[str], inputs: Mapping[str, InputSpec], outputs: Sequence[str]
           ) -> tuple[dict[str, RecordColumn], dict[str, np.ndarray]]:
    """Lazy inputs and loaded targets of the records in `paths`."""
    import grain

    try:
        source = grain.sources.ArrayRecordDataSource(paths)
        count = len(source)
    except Exception as err:  # array_record raises bare RuntimeErrors/ValueErrors
        raise DataError(f"{paths[0]}: cannot read it as ArrayRecord: {err}") from None
    if not count:
        raise DataError(f"{paths[0]}: no records")
    first = decode(source[0], f"{paths[0]}: record 0")
    alias = ({next(iter(inputs)): "x", outputs[0]: "y"} if len(inputs) == len(outputs) == 1
             else {})
    keys = {n: n if n in first else alias.get(n, n) for n in [*inputs, *outputs]}
    absent = [n for n, k in keys.items() if k not in first]
    if absent:
        raise DataError(f"{paths[0]}: record 0 holds arrays {sorted(first)}, not "
                        f"{absent} (records are np.savez of the inputs and outputs by name)")
    x = {}
    for name, spec in inputs.items():
        sample = first[keys[name]]
        want = tuple(spec.shape)
        if len(want) != sample.ndim or any(w not in (None, g) for w, g in zip(want, sample.shape)):
            raise DataError(f"{paths[0]}: input {name!r} expects samples of shape {want}, the "
                            f"records hold {sample.shape}")
        if sample.dtype != np.dtype(spec.dtype):
            raise DataError(f"{paths[0]}: input {name!r} is {spec.dtype}, the records hold "
                            f"{sample.dtype} (records are not converted)")
        x[name] = RecordColumn(paths, keys[name], 0, count, sample.shape, sample.dtype)
    y: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
    for i, record in enumerate(source.__getitems__(list(range(count)))):
        arrays = decode(record, f"{paths[0]}: record {i}")
        for n in outputs:
            if keys[n] not in arrays:
                raise DataError(f"{paths[0]}: record {i} has no array {keys[n]!r}")
            y[n].append(arrays[keys[n]])
    return x, {n: np.stack(v) for n, v in y.items()}


def record_dataset(data: DataSpec, inputs: Mapping[str, InputSpec], outputs: Sequence[str],
                   spec_folder: str):  # -> Dataset
    """The Dataset of an `array_record` source: inputs read lazily, targets in memory."""
    from nnspec.compiler.data.dataset import Dataset, Split
    from nnspec.compiler.data.sources import resolve

    train_files, test_files = _files(resolve(data.path or "", spec_folder))
    x, y = _block(train_files, inputs, outputs)
    n = len(next(iter(y.values())))
    if data.limit:
        n = min(n, data.limit)
    test_n = 0 if test_files else int(round(n * data.test_split))
    val_n = int(round((n - test_n) * data.validation_split))
    train_n = n - test_n - val_n

    def block(lo: int, hi: int) -> Split:
        return Split({k: v[lo:hi] for k, v in x.items()}, {k: v[lo:hi] for k, v in y.items()})

    test = Split(*_block(test_files, inputs, outputs)) if test_files else block(
        train_n + val_n, n)
    return Dataset(block(0, train_n), block(train_n, train_n + val_n), test)

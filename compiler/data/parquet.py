"""`source: parquet` read lazily, by row group: a table larger than memory streams as a
memory-mapped `.npy` set does (`train.pipeline: stream`, or `auto` when the encoded inputs would
not fit the device budget, the test the engine makes).

- Opening reads only the file's metadata: row `r` of the file is row `r - starts[g]` of row
  group `g`, `starts` the groups' first rows.
- The encoding (types, vocabularies, fill values, class names) and every bad cell are found in
  passes over `ParquetFile.iter_batches`, a block of rows at a time, by the same functions that
  read a table in memory (`tables.resolve_types`, `check_rows`, `fit`, `targets`): the same
  vocabularies and fills, and a bad cell in any row group is still `file: row N`.
- A split's inputs are `TableColumn`s: reading rows (`take`) sorts them by row group, decodes
  each group needed once (`read_row_group(g, columns=...)`, a few cached per process), keeps
  the rows wanted (`Table.take`, in Arrow), and encodes them with `nnspec.runtime.tables.encode`,
  as `nnspec predict` does. Decoding runs in Grain's worker processes (`decodes`).

The cost of a global shuffle: a chunk of `C` rows drawn at random from `G` row groups touches
about `G (1 - exp(-C / G))` of them, and each touched group is decoded whole, so an epoch decodes
the file about `N / C` times over when `C >= G` (Arrow's C++ decoding of the needed columns only;
the Python encoding is per row wanted). Reading is cheapest with small row groups (or fewer rows
than a chunk); where that is too slow, write the encoded inputs as `.npy` files (`source: npy`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.compiler.data.buffers import empty_aligned
from nnspec.compiler.data.tables import Table
from nnspec.runtime import tables as rt
from nnspec.spec.errors import DataError
from nnspec.spec.schema import InputSpec

BLOCK_BYTES = 16 << 20
"""Cells (as float64) a block of a streaming pass holds, at most 65,536 rows: a record batch
of a wide table is cut shorter. The learned encoding does not depend on it."""
CACHE_BYTES = 64 << 20
"""Decoded row groups a process keeps (at least one): a chunk of batches reads its groups in
order, and the next chunk starts again from the first ones."""


def lazy(stream: str, inputs: Mapping[str, InputSpec], rows: int) -> bool:
    """Whether a Parquet file's splits stay on disk: `train.pipeline: stream`, or `auto` and
    the encoded inputs would not fit the device budget."""
    if stream == "device" or any(None in s.shape for s in inputs.values()):
        return False
    if stream == "stream":
        return True
    from nnspec.compiler.train.pipeline import choose_pipeline

    size = rows * sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
                      for s in inputs.values())
    return choose_pipeline("auto", size) == "stream"


class ParquetRows:
    """One Parquet file read by row index: its row groups, blocks for streaming passes, and
    rows encoded into model inputs (once the encoding is known: `encoding`). Pickles as its
    path and encoding; each process opens the file and keeps its own cache."""

    def __init__(self, path: str, needed: Sequence[str]):
        self.path, self.needed = path, list(needed)
        self.encoding: dict[str, Any] | None = None
        self.inputs: dict[str, InputSpec] = {}
        meta = self._open().metadata
        self.header = list(self._file.schema_arrow.names)
        absent = [c for c in self.needed if c not in self.header]
        if absent:
            raise DataError("data.columns: " + rt.missing_columns_message(absent, self.header,
                                                                          path))
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.rows = int(self.starts[-1])
        self._digest: bytes | None = None

    def _open(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # pre_buffer off: with it, a ParquetFile keeps every range iter_batches read alive
            # until it is closed (the whole file after one pass; measured, pyarrow 26).
            self._file = pq.ParquetFile(self.path, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{self.path}: cannot read it as Parquet: {err}") from None
        # Grain calls the element from several threads of one process: the cache and the
        # memo are shared under a lock, each thread reads through its own file handle.
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._memo: tuple[bytes, dict[str, np.ndarray]] | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_file", "_cache", "_memo", "_lock", "_local")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def where(self, row: int) -> str:
        return f"{self.path}: row {row + 1}"

    def blocks(self) -> Iterator[Table]:
        """One pass over the file, a record batch at a time (never the file whole)."""
        first = 0
        rows = int(max(256, min(65_536, BLOCK_BYTES // (8 * len(self.needed)))))
        for batch in self._file.iter_batches(batch_size=rows, columns=self.needed):
            yield Table(self.path, rt.arrow_cells(batch, self.needed), batch.num_rows,
                        self.where, self.header, first)
            first += batch.num_rows

    def _group(self, g: int) -> Any:
        with self._lock:
            table = self._cache.get(g)
            if table is not None:
                self._cache.move_to_end(g)
                return table
        handle = getattr(self._local, "file", None)
        if handle is None:
            import pyarrow.parquet as pq

            # The parsed footer is shared: each handle would hold its own (about 120 KB a row
            # group of 256 columns, measured).
            handle = self._local.file = pq.ParquetFile(self.path, pre_buffer=False,
                                                       metadata=self._file.metadata)
        # On the calling thread (Grain's), not Arrow's pool: for groups of a few thousand rows
        # the hand-offs cost more than they gain (benchmarks/stream_parquet.py: 1,458 against
        # 1,058 samples/s; resident set 1,219 against 1,126 MiB, within the runs' spread).
        table = handle.read_row_group(g, columns=self.needed, use_threads=False)
        with self._lock:
            self._cache[g] = table
            held = sum(t.nbytes for t in self._cache.values())
            while len(self._cache) > 1 and held > CACHE_BYTES:
                held -= self._cache.popitem(last=False)[1].nbytes
        return table

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs of file rows `rows` (any order, repeats allowed), each input in its
        spec's shape and dtype. The inputs of one file share a read: the last one is kept, so
        a chunk of batches is decoded once for all its inputs."""
        import pyarrow as pa

        from nnspec.compiler.data.dataset import fit_input

        flat = np.asarray(rows, np.int64).reshape(-1)
        key = flat.tobytes()
        memo = self._memo  # one read: another thread may replace it meanwhile
        if memo is not None and memo[0] == key:
            return memo[1]
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        groups = np.searchsorted(self.starts, ordered, side="right") - 1
        edges = np.flatnonzero(np.diff(groups)) + 1
        parts = [self._group(int(groups[lo])).take(pa.array(ordered[lo:hi]
                                                            - self.starts[groups[lo]]))
                 for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(ordered)])
                 if hi > lo]
        cells = rt.arrow_cells(pa.concat_tables(parts) if parts else
                               self._file.schema_arrow.empty_table().select(self.needed),
                               self.needed)
        try:
            encoded = rt.encode(self.encoding, cells, lambda i: self.where(int(ordered[i])))
        except rt.TableError as err:  # checked up front: the file changed since
            raise DataError(str(err)) from None
        out = {}
        for name, values in encoded.items():
            values = fit_input(values, self.inputs[name], name)
            placed = empty_aligned(values.shape, values.dtype)
            placed[order] = values
            out[name] = placed
        self._memo = (key, out)
        # A chunk decodes many row groups; hand the freed ones back to the system now, not
        # when the allocator gets round to it (the resident set is what streaming bounds).
        pa.default_memory_pool().release_unused()
        return out

    def digest(self) -> bytes:
        """SHA-256 of the file's bytes (read in blocks, once a process)."""
        if self._digest is None:
            self._digest = file_digest(self.path)
        return self._digest


def file_digest(path: str) -> bytes:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(64 << 20), b""):
            h.update(block)
    return h.digest()


def column_fingerprint(digest: bytes, encoding: Any, name: str, rows: np.ndarray) -> bytes:
    """What the checkpoint's data hash takes for input `name` of a split of a Parquet file,
    instead of its values: the file's bytes (`digest`), the encoding, the input and the file
    rows of the split. The same whether the split is read lazily (`TableColumn`) or encoded in
    memory, so a `--resume` that takes the other route knows the data for the same."""
    import json

    h = hashlib.sha256(digest)
    h.update(json.dumps(encoding, sort_keys=True).encode())
    h.update(name.encode())
    h.update(np.asarray(rows, np.int64).tobytes())
    return h.digest()


class TableColumn:
    """One input of a split of a Parquet file, read when indexed: file rows `rows`, encoded by
    their `ParquetRows`. Pickles as the file's path, encoding and rows."""

    decodes = True
    """Reading decodes row groups: the streamed route gives it Grain worker processes."""

    def __init__(self, source: ParquetRows, rows: np.ndarray, name: str):
        self.source, self.rows, self.name = source, np.asarray(rows, np.int64), name
        spec = source.inputs[name]
        self.dtype = np.dtype(spec.dtype)
        self.shape = (len(self.rows), *spec.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: Any, axis: int = 0, out: Any = None, mode: str = "raise"
             ) -> np.ndarray:
        if axis != 0 or out is not None:
            raise ValueError("TableColumn.take reads along axis 0 only")
        at = np.asarray(indices, np.int64)
        if at.size and (at.min() < -len(self) or at.max() >= len(self)):
            raise IndexError(f"row {int(at.max())} is out of bounds for {len(self)} rows")
        values = self.source.read(self.rows[at.reshape(-1)])[self.name]
        return values.reshape((*at.shape, *self.shape[1:]))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return TableColumn(self.source, self.rows[index], self.name)
        if isinstance(index, (int, np.integer)):
            return self.take([int(index)])[0]
        return self.take(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def fingerprint(self) -> bytes:
        """What the checkpoint's data hash takes instead of reading the column in the order of
        its rows (a decode of the whole file per block): `column_fingerprint`."""
        return column_fingerprint(self.source.digest(), self.source.encoding, self.name,
                                  self.rows)


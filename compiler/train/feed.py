"""The streamed route's loader, on Grain: a stateless map from a position to the chunk of
batches the train call consumes there, so a checkpoint is a position.

Grain is built for random-access sources read by index (`MapDataset`), which is what nnspec's
data order already is: each epoch's permutation is a function of the seed and the epoch
(`np.random.default_rng([seed, epoch])`, the same one the in-memory route uses), so the rows
of every step are known in advance and the element at position `i` is a pure function of
`(seed, i)`. Position `i` is chunk `i % per_epoch` of epoch `1 + i // per_epoch`, and the
element is that chunk's `(steps, batch)` block of samples, gathered from the training arrays
(memory-mapped `.npy` files, ArrayRecord records, arrays in memory) with the rows sorted for
locality. One element per chunk, not per sample: a Grain element costs Python time (~10 us),
negligible per batch, not per sample.

Grain reads ahead (`ReadOptions`: threads and a buffer of a few chunks); sources that must
decode their records run the reading in Grain's worker processes (`mp_prefetch`, spawned,
so an element carries only file paths and small arrays: the files reopen in each worker).
Under `jax.distributed` each process gathers only the columns of each global batch that its
own devices hold (`local_columns`), so each host reads only its shard.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from nnspec.compiler.data.buffers import take_rows

DEPTH = 2
"""Chunks Grain reads ahead of the one training (per worker when it has workers)."""


def epoch_rows(seed: int, epoch: int, n: int, idx0: np.ndarray) -> np.ndarray:
    """The (steps, width) sample indices of an epoch: the engine's permutation of 0..n-1 for
    `(seed, epoch)` laid out by the padded batch layout `idx0`."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)[idx0]


def gather(arrays: Mapping[str, Any], rows: np.ndarray) -> dict[str, np.ndarray]:
    """arrays[rows] for a block of row indices, each source read in ascending row order (one
    pass over the file instead of random seeks; `take` puts each row where it belongs)."""
    return {k: take_rows(v, rows) for k, v in arrays.items()}


class ChunkAt:
    """The Grain element function: global position -> `(epoch, start, x, y)`, the chunk of
    `chunk` steps starting at step `start` of `epoch`, for the columns `columns` of each
    batch (this process's shard). Picklable: Grain's workers receive a copy."""

    def __init__(self, x: Mapping[str, Any], y: Mapping[str, Any], seed: int, n: int,
                 idx0: np.ndarray, chunk: int, columns: tuple[int, int]):
        self.x, self.y, self.seed, self.n = dict(x), dict(y), seed, n
        self.idx0, self.chunk, self.columns = idx0, chunk, columns
        self.steps = len(idx0)
        self.per_epoch = math.ceil(self.steps / chunk)
        self._cached: tuple[int, np.ndarray] | None = None  # one epoch's rows, per process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cached": None}

    def where(self, position: int) -> tuple[int, int]:
        """(epoch, first step) of a position."""
        return 1 + position // self.per_epoch, (position % self.per_epoch) * self.chunk

    def position(self, epoch: int, step: int) -> int:
        """The position of the chunk holding `step` of `epoch` (epochs count from 1)."""
        return (epoch - 1) * self.per_epoch + step // self.chunk

    def rows(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_rows(self.seed, epoch, self.n, self.idx0))
        return self._cached[1]

    def __call__(self, position: int) -> tuple[int, int, dict, dict]:
        epoch, start = self.where(int(position))
        rows = self.rows(epoch)[start:start + self.chunk]
        if len(rows) < self.chunk:  # the epoch's last chunk: pad with copies (their mask is 0)
            rows = np.concatenate([rows, np.repeat(rows[:1], self.chunk - len(rows), 0)])
        lo, hi = self.columns
        rows = np.ascontiguousarray(rows[:, lo:hi])
        return epoch, start, gather(self.x, rows), gather(self.y, rows)


def auto_workers(requested: int | str, decodes: bool) -> int:
    """Grain worker processes: `data.workers`, or for `auto` min(2, cores) when the source
    decodes its records (images, Parquet row groups, ArrayRecord) and 0 when reading a row is
    a copy (`.npy` files, arrays): a worker would only add a copy through shared memory."""
    if requested != "auto":
        return int(requested)
    return min(2, os.cpu_count() or 1) if decodes else 0


def local_columns(sharding: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """The columns of the (steps, batch) axis that this process's devices hold: the rows it
    must read. One contiguous block (the mesh lists each process's devices together)."""
    spans = sorted({(s[1].start or 0, shape[1] if s[1].stop is None else s[1].stop)
                    for s in sharding.addressable_devices_indices_map(shape).values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise RuntimeError(f"this process's devices hold batch columns {spans}, not one block")
    return lo, hi


class GrainLoader:
    """One Grain iterator over positions `first..end-1` of a run, read ahead, closed with the
    run. `next_chunk(epoch, start)` checks that the element arriving is the one expected."""

    def __init__(self, element: ChunkAt, first: int, end: int, workers: int):
        import grain

        dataset = grain.MapDataset.range(first, end).map(element)
        read = grain.ReadOptions(num_threads=max(1, min(4, os.cpu_count() or 1)),
                                 prefetch_buffer_size=DEPTH)
        stream = dataset.to_iter_dataset(read)
        if workers > 0:
            _absl_flags_parsed()
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=DEPTH))
        self.element, self.workers = element, workers
        self.next_position = first
        self._iterator = iter(stream)

    def next_chunk(self, epoch: int, start: int) -> tuple[dict, dict]:
        got_epoch, got_start, x, y = next(self._iterator)
        if (got_epoch, got_start) != (epoch, start):  # a bug, never the user's data
            raise RuntimeError(f"the loader gave epoch {got_epoch} step {got_start}, the "
                               f"training loop expected epoch {epoch} step {start}")
        self.next_position += 1
        return x, y

    def state(self) -> dict[str, Any]:
        return {"loader": "grain", "seed": self.element.seed, "chunk": self.element.chunk,
                "workers": self.workers}

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app nothing parsed them
    (`UnparsedFlagAccessError`), so take their defaults as parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def is_lazy(arrays: Mapping[str, Any]) -> bool:
    """Whether some array is read from disk when indexed (not an array in memory). A mapped
    `.npy` array is an ndarray, but indexing one faults its pages in: read it by chunks too."""
    return any(getattr(v, "on_disk", False) or (not isinstance(v, np.ndarray)
                                                and hasattr(v, "take")) for v in arrays.values())


def eval_batches(x: Mapping[str, Any], y: Mapping[str, Any], idx: np.ndarray, budget: int
                 ) -> Any:
    """`(x[idx[b]], y[idx[b]])` for every batch b of an evaluation, read a chunk of batches at a
    time (about `budget` bytes: one pass over the files per chunk, rows in file order) with the
    next chunk read on a thread while the current one is evaluated. The same arrays, batch
    for batch, as indexing a split in memory."""
    from concurrent.futures import ThreadPoolExecutor

    sample = sum(np.asarray(v[:1]).nbytes for v in (*x.values(), *y.values()))
    per = int(max(1, min(len(idx), budget // max(1, sample * idx.shape[1]))))
    starts = list(range(0, len(idx), per))

    def read(lo: int) -> tuple[dict, dict]:
        rows = idx[lo:lo + per]
        return gather(x, rows), gather(y, rows)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnspec-eval-read") as pool:
        ahead = pool.submit(read, starts[0]) if starts else None
        for i, _ in enumerate(starts):
            xs, ys = ahead.result()
            if i + 1 < len(starts):
                ahead = pool.submit(read, starts[i + 1])
            for j in range(len(next(iter(xs.values())))):
                yield {k: v[j] for k, v in xs.items()}, {k: v[j] for k, v in ys.items()}

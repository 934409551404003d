"""Host buffers the CPU device can take without a copy.

XLA's CPU client aliases a numpy array in `jax.device_put` (no copy) only when its data starts
on a 64-byte boundary; numpy's own allocations start on 16. A streamed chunk (8 MB of rows)
copied at every transfer costs 0.5-2 ms of a 55 ms chunk here, on the same two cores the step
uses, so the readers that make chunks write into aligned buffers instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALIGN = 64
"""Bytes: the alignment XLA's CPU client needs to alias a host buffer."""


def empty_aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """`np.empty(shape, dtype)` whose data starts on an `ALIGN`-byte boundary. The array owns
    its memory through its base (a byte buffer a little larger), so it lives as long as any
    view of it, a device array aliasing it included."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    skip = (-raw.ctypes.data) % ALIGN
    return raw[skip:skip + size].view(dtype).reshape(shape)


def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """`np.take(array, rows, axis=0)`; for an array in memory into an aligned buffer (the same
    rows, negative ones counting from the end, the same IndexError out of bounds). Anything
    else (a mapped file's rows, a lazy column) gathers with its own `take`."""
    if type(array) is not np.ndarray:
        # Its own `take`, called directly: `np.take` passes `out=`/`mode=`, and on the
        # TypeError of a `take` without them it falls back to `np.asarray(column)`, decoding
        # the whole split for every chunk.
        return np.asarray(array.take(rows, axis=0))
    rows = np.asarray(rows)
    n = len(array)
    if rows.size and (rows.min() < -n or rows.max() >= n):
        bad = int(rows.max()) if rows.max() >= n else int(rows.min())
        raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
    if rows.size and rows.min() < 0:
        rows = rows % n
    out = empty_aligned((*rows.shape, *array.shape[1:]), array.dtype)
    # mode="clip" on rows already in bounds: numpy's default "raise" with `out` gathers into a
    # temporary and copies it over (7.6 ms for a 64x128 KiB-row chunk, against 0.7 ms).
    return np.take(array, rows, axis=0, out=out, mode="clip")

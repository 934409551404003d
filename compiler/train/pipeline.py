"""How batches reach the train step: where the training set lives, how many steps one compiled
call runs, and the background thread that streams batches when the set stays on the host.

`train.loop` and `train.pipeline` choose; `auto` decides from the graph, the backend and the
size of the data, never from timing, so a resumed run makes the same choice as the first one
and ends bit-identical to it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from nnspec.compiler.data.buffers import take_rows
from nnspec.compiler.graph.ir import Graph

STREAM_CHUNK_BYTES = 32 << 20
"""Most host bytes gathered per streamed chunk: large enough that one transfer feeds many
steps, small enough that the chunks alive at once (the one training, `depth` queued, one
being gathered) stay cheap, and at glibc's raised mmap threshold (cli/_cpu.py) so most
chunk buffers come from the heap, not fresh pages faulted in on every chunk."""
MAX_STREAM_CHUNK = 128
"""Most steps per streamed chunk. Each chunk costs a fixed few ms (a Grain element, the sort
of its rows, one train call); the streamed MLP of benchmarks/stream_memmap.py (1 KiB
samples) ran 149-160 k samples/s with 64-step chunks and 163-172 k with 128, interleaved."""


def choose_loop(graph: Graph, requested: str, backend: str | None = None) -> str:
    """'fused' (a compiled loop over many steps) or 'step' (one call per step)."""
    if requested != "auto":
        return requested
    backend = backend or jax.default_backend()
    slow = [n.name for n in graph.nodes if getattr(n.layer, "slow_in_cpu_loops", False)]
    return "step" if backend == "cpu" and slow else "fused"


def device_budget() -> int:
    """Bytes of the training set that may live on each device: half its memory, or a quarter
    of the host's RAM where the device does not say (the CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics raise or return None
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    # A lazy column (arrayrecord.RecordColumn) knows its size without being read.
    return int(sum(getattr(a, "nbytes", None) or np.asarray(a).nbytes for a in arrays.values()))


def choose_pipeline(requested: str, data_bytes: int, budget: int | None = None) -> str:
    """'device' (the whole training set on the device) or 'stream' (batches from the host)."""
    if requested != "auto":
        return requested
    return "device" if data_bytes <= (device_budget() if budget is None else budget) else "stream"


def stream_chunk(steps: int, batch: int, sample_bytes: int) -> int:
    """Steps per streamed chunk: as many as fit STREAM_CHUNK_BYTES, at most MAX_STREAM_CHUNK."""
    fit = STREAM_CHUNK_BYTES // max(batch * sample_bytes, 1)
    return int(max(1, min(steps, MAX_STREAM_CHUNK, fit)))


def abstract_rows(arrays: dict[str, Any], lead: tuple[int, ...], sharding: Any = None
                  ) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract arrays with the sample shape of `arrays` behind the leading axes `lead`."""
    return {k: jax.ShapeDtypeStruct((*lead, *v.shape[1:]), v.dtype, sharding=sharding)
            for k, v in arrays.items()}


def gather_chunk(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """arrays[rows] for a (K, B) block of row indices: each array becomes (K, B, ...)."""
    return {k: take_rows(v, rows) for k, v in arrays.items()}


def to_device(arrays: dict[str, np.ndarray], sharding: Any, width: int) -> dict[str, Any]:
    """(steps, batch, ...) host arrays as global arrays split over the batch axis. Under
    `jax.distributed` each process holds only its own columns of the batch (the Grain
    loader read only those), assembled into the global array without copying the rest."""
    if jax.process_count() == 1:
        return jax.device_put(arrays, sharding)
    return {k: jax.make_array_from_process_local_data(
        sharding, v, (v.shape[0], width, *v.shape[2:])) for k, v in arrays.items()}


class Prefetch:
    """Gathers and transfers streamed chunks on a background thread, `depth` ahead of the
    train step, so the device does not wait on Python's indexing or the copy.

    Iterating yields `(start, x, y)` for chunk starts `starts`, in order; `close()` (or leaving
    the `with` block) stops the thread early. An exception in the thread re-raises here.
    """

    def __init__(self, x: dict[str, np.ndarray], y: dict[str, np.ndarray], rows: np.ndarray,
                 starts: list[int], size: int, sharding: Any, depth: int = 2,
                 read: Callable[[int], tuple[dict, dict]] | None = None):
        self._x, self._y, self._rows, self._size = x, y, rows, size
        self._read = read
        """Host chunk at a start (the Grain loader), instead of gathering `rows` here."""
        self._starts, self._sharding = starts, sharding
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.waited = 0.0
        """Seconds the consumer spent waiting for a chunk: the device idle on the input."""
        self._thread = threading.Thread(target=self._work, name="nnspec-prefetch", daemon=True)
        self._thread.start()

    def _chunk(self, start: int) -> tuple[Any, Any]:
        if self._read is not None:
            x, y = self._read(start)
        else:
            rows = self._rows[start:start + self._size]
            if len(rows) < self._size:  # the last chunk: pad with copies (their mask is 0)
                rows = np.concatenate([rows, np.repeat(rows[:1], self._size - len(rows), 0)])
            x, y = gather_chunk(self._x, rows), gather_chunk(self._y, rows)
        width = self._rows.shape[1]
        return to_device(x, self._sharding, width), to_device(y, self._sharding, width)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for start in self._starts:
                if not self._put((start, *self._chunk(start))):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        for _ in self._starts:
            item = self._get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _get(self) -> Any:
        started = time.perf_counter()
        try:
            return self._wait()
        finally:
            self.waited += time.perf_counter() - started

    def _wait(self) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() or not self._thread.is_alive():
                    raise RuntimeError("the prefetch thread has stopped") from None

    def close(self) -> None:
        """Stop the thread and drop the chunks it queued (their device buffers with them)."""
        self._stop.set()
        self._thread.join(timeout=30)
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Route:
    """How one run's batches reach its compiled step: fused or not, streamed or not, and what
    stays the same from epoch to epoch.

    With the data on the device, `x` and `y` are the whole training set there, and each epoch
    puts its (steps, batch) sample indices beside them. Streamed, `x` and `y` stay on the host
    and `Prefetch` brings chunks of `chunk` steps. `mask` holds the sample weights, a row a step
    (padded by a chunk of zeros when streamed, for the last chunk's spare rows).
    """

    fused: bool
    stream: bool
    steps: int
    chunk: int
    mask: np.ndarray
    x: dict[str, Any]
    y: dict[str, Any]
    sharding: Any
    """Of (steps, batch) arrays: the batch axis split over the devices."""
    loader: Any = None
    """Makes the run's `GrainLoader` (nnspec.compiler.train.feed) from a start position; the
    streamed route reads through it."""
    fn: Callable[..., Any] | None = None
    """The compiled train call (`Trainer.train_step`), set once lowered."""
    waited: float = 0.0
    """Seconds the step waited for streamed chunks, over the run."""
    _device_mask: Any = None
    _grain: Any = None

    def example_args(self, carry: Any) -> tuple[Any, ...]:
        """Arguments to lower the train call with: real or abstract, in its signature."""
        span = (np.int32(0), np.int32(1)) if self.fused else (np.int32(0),)
        mask = jax.device_put(self.mask[:self.chunk], self.sharding)
        if not self.stream:
            idx = jax.ShapeDtypeStruct((self.steps, self.mask.shape[1]), np.int32,
                                       sharding=self.sharding)
            return (carry, *span, idx, mask, self.x, self.y)
        lead = (self.chunk, self.mask.shape[1])
        return (carry, *span, None, mask, abstract_rows(self.x, lead, self.sharding),
                abstract_rows(self.y, lead, self.sharding))

    @contextlib.contextmanager
    def epoch(self, rows: np.ndarray, first: int, number: int = 1
              ) -> Iterator[Callable[[int], tuple]]:
        """For epoch `number`, whose step b takes samples `rows[b]`, from step `first` on: a
        function giving, for step b, `(base, idx, mask, xs, ys)`: the train call's data
        arguments and the step its row 0 stands for."""
        if not self.stream:
            if self._device_mask is None:  # the same every epoch: put it there once
                self._device_mask = jax.device_put(self.mask, self.sharding)
            args = (0, jax.device_put(rows, self.sharding), self._device_mask, self.x, self.y)
            yield lambda b: args
            return
        starts = list(range(first - first % self.chunk, self.steps, self.chunk))
        read = None
        if self.loader is not None:
            grain = self._reader(number, starts[0] if starts else first)
            read = lambda start: grain.next_chunk(number, start)  # noqa: E731
        feed = Prefetch(self.x, self.y, rows, starts, self.chunk, self.sharding, read=read)
        chunks, held = iter(feed), [(-self.chunk, None, None, None, None)]

        def data(b: int) -> tuple:
            if b >= held[0][0] + self.chunk:
                base, xs, ys = next(chunks)
                mask = jax.device_put(self.mask[base:base + self.chunk], self.sharding)
                held[0] = (base, None, mask, xs, ys)
            return held[0]

        try:
            yield data
        except BaseException:
            feed.close()
            self.close()  # it may have read ahead of where the run stopped
            raise
        finally:
            feed.close()
            self.waited += feed.waited

    def _reader(self, epoch: int, start: int) -> Any:
        """The Grain loader, at the position of `start` in `epoch` (made there on a run's
        first epoch or after a resume; read on from epoch to epoch)."""
        if self._grain is not None and self._grain.next_position != self._grain.element.position(
                epoch, start):
            self.close()
        if self._grain is None:
            self._grain = self.loader(epoch, start)
        return self._grain

    def loader_state(self) -> dict[str, Any] | None:
        """What a checkpoint records of the loader besides the epoch and step (the position is
        a function of those): None off the Grain route."""
        return None if self._grain is None else self._grain.state()

    def close(self) -> None:
        """Close the Grain loader (its threads, worker processes and shared memory)."""
        if self._grain is not None:
            self._grain.close()
            self._grain = None

    def run(self, carry: Any, b: int, end: int, base: int, *args: Any) -> Any:
        """Steps b..end-1 (all within the data that `base` starts): one call, or one a step."""
        if self.fused:
            return self.fn(carry, np.int32(b - base), np.int32(end - base), *args)
        for s in range(b - base, end - base):
            carry = self.fn(carry, np.int32(s), *args)
        return carry

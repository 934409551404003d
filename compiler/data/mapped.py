"""`source: npy`: a directory of `.npy` files, one per input and output (`NAME.npy`, and
optionally `NAME_test.npy`), memory-mapped instead of loaded, so a training set larger than
memory streams from disk (`train.pipeline: stream`, chosen by `auto` when the set is large).

The arrays are plain numpy arrays over a read-only `mmap`, so the training loop gathers its
batches by index exactly as from arrays in memory (same order, same bits, same `--resume`
position: the data order is a function of the seed and the epoch). Pages a gather touched
stay in the kernel's page cache but are dropped from the process (`madvise(MADV_DONTNEED)`,
harmless for a clean file mapping: the next access faults them back in) whenever it holds more
than `RELEASE_BYTES` of them, checked every `RELEASE_SECONDS`, so the resident set stays
bounded however large the files are.

Splits are contiguous blocks, so none is copied: the test split is the last `test_split` of
the samples (unless `NAME_test.npy` files are given), the validation split the block before
it. Store the samples shuffled.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

import numpy as np

from nnspec.compiler.data.buffers import empty_aligned
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec

RELEASE_SECONDS = 0.05
RELEASE_BYTES = 256 << 20
"""Mapped pages the process may hold before they are released: releasing is cheap but not
free (page-table walks, TLB shootdowns that pause every thread), so it runs only when the
file-backed resident set has grown this much, not at every tick."""
READER_NICE = int(os.environ.get("NNSPEC_READER_NICE", "19"))
"""The nice value of threads that read mapped rows (19: the lowest priority)."""
_maps: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_pager: threading.Thread | None = None


class _Map(mmap.mmap):
    """An mmap that can live in a WeakSet (the pager forgets maps nothing uses)."""


def _file_resident() -> int:
    """Bytes of file-backed and shared pages the process holds (RssFile + RssShmem)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return RELEASE_BYTES + 1  # no /proc: release at every tick


def _release_loop() -> None:
    while True:
        time.sleep(RELEASE_SECONDS)
        if _file_resident() < RELEASE_BYTES:
            continue
        for mm in list(_maps):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (ValueError, OSError):  # closed meanwhile
                continue


_gather: list = []  # the native row gather once looked up: [function or None]


def native_reader(name: str = "nnspec_gather_rows"):  # noqa: ANN201
    """A row gather of `compiler/kernels/gather.cc` bound with ctypes: `nnspec_gather_rows`
    (io_uring where the kernel allows it, else pread) or `nnspec_gather_rows_pread`. Raises
    `KernelUnavailable` where it cannot be built."""
    from nnspec.compiler.kernels.build import load

    fn = getattr(load("gather", plain=True), name)
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return fn


def reader_in_use() -> str:
    """How this process reads mapped rows: `io_uring`, `pread` (C), `python` (the os.preadv
    loop), or `none yet` (no mapped rows read so far)."""
    if not _gather:
        return "none yet"
    if _gather[0] is None:
        return "python"
    from nnspec.compiler.kernels.build import load

    state = load("gather", plain=True).nnspec_gather_reader()
    return {1: "io_uring", 0: "pread"}.get(state, "none yet")


def _native_gather():  # noqa: ANN202
    """`compiler/kernels/gather.cc`'s row gather (built on first use), or None: then rows are
    read by a Python loop of `os.preadv`, the same bytes at 2.5-4.5 times the CPU a row (no
    C++ compiler, not Linux, or `NNSPEC_NATIVE_GATHER=0`)."""
    if not _gather:
        fn = None
        if os.environ.get("NNSPEC_NATIVE_GATHER", "1") != "0":
            from nnspec.compiler.kernels.build import KernelUnavailable

            try:
                fn = native_reader("nnspec_gather_rows")
            except KernelUnavailable:
                fn = None
        _gather.append(fn)
    return _gather[0]


_reniced = threading.local()


def _yield_to_the_step() -> None:
    """Lowers the priority of a reader thread (Grain's, evaluation's read-ahead), once each:
    the reads then fill the gaps the training step's threads leave (waiting on each other
    between operations) instead of preempting one of them and stalling both. The main thread
    is left alone; so is a platform without per-thread priorities."""
    if getattr(_reniced, "done", False) or threading.current_thread() is threading.main_thread():
        return
    _reniced.done = True
    # A nice value, not SCHED_IDLE: an idle-class reader would stop altogether while any
    # other process keeps the cores busy (about as fast here: 148 k against 139-141 k/s).
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


class MappedArray(np.ndarray):
    """An array over a mapped `.npy` file whose `take` along axis 0 (how the streamed route
    gathers a chunk of batches, and evaluation a chunk of a split) reads the rows with `pread`
    instead of faulting their pages in: no page-table churn, no resident growth; the reads are
    a C loop outside the GIL where it could be built (`_native_gather`). Everything else
    (slices, fancy indexing) reads through the mapping as any array does."""

    _fd: int
    _start: int  # file offset of the mapping's row 0
    _origin: int  # address of the mapping's row 0
    _bytes: int  # bytes of the mapped array
    _dtype: np.dtype | None
    _path: str

    def __array_finalize__(self, obj: object) -> None:
        for name, empty in (("_fd", -1), ("_start", 0), ("_origin", 0), ("_bytes", 0),
                            ("_dtype", None), ("_path", "")):
            setattr(self, name, getattr(obj, name, empty))

    def __reduce__(self):  # noqa: ANN204
        # A block of the file's rows pickles as (path, rows), never as its bytes: the Grain
        # worker processes that read a streamed set reopen the file themselves.
        row = self.strides[0] if self.ndim else 0
        if self._on_file() and self._path and row == self.itemsize * int(
                np.prod(self.shape[1:])):
            first = (self.ctypes.data - self._origin) // row if row else 0
            return (_reopen, (self._path, first, len(self)))
        return np.asarray(self).__reduce__()

    @property
    def on_disk(self) -> bool:
        """Whether this array still reads the file (evaluation then reads it by chunks with
        `take`, not by fancy indexing through the mapping: see `feed.is_lazy`)."""
        return self._on_file()

    def _on_file(self) -> bool:
        """Whether this array is still a view of the file (not a converted copy)."""
        return (self._fd >= 0 and self.dtype == self._dtype and self.flags.c_contiguous
                and self._origin <= self.ctypes.data < self._origin + self._bytes)

    def take(self, indices, axis=None, out=None, mode="raise"):  # noqa: ANN001, ANN201
        row = self.strides[0] if self.ndim else 0
        if (axis != 0 or out is not None or not self._on_file()
                or row != self.itemsize * int(np.prod(self.shape[1:]))):
            return np.asarray(self).take(indices, axis=axis, out=out, mode=mode)
        rows = np.asarray(indices)
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < -len(self) or flat.max() >= len(self)):
            raise IndexError(f"index {int(flat.max())} is out of bounds for {len(self)} rows")
        first = (self.ctypes.data - self._origin) // row  # this view's row 0 in the file
        # Aligned, so the device takes the chunk without copying it (`buffers`).
        result = empty_aligned((flat.size, *self.shape[1:]), self.dtype)
        base = self._start + first * row
        flat = (flat % len(self)).astype(np.int64)
        # In ascending file order (one pass over the file, not random seeks), each row
        # written where it belongs.
        order = np.argsort(flat, kind="stable")
        _yield_to_the_step()
        gather = _native_gather()
        if gather is not None and flat.size:
            failed = gather(self._fd, base, row, flat.ctypes.data, order.ctypes.data, flat.size,
                            result.ctypes.data)
            failed = int(flat[order[failed]]) if failed >= 0 else None
        else:
            failed, view = None, memoryview(result.reshape(-1).view(np.uint8))
            for i, r in zip(order.tolist(), flat[order].tolist()):
                if os.preadv(self._fd, [view[i * row:(i + 1) * row]], base + r * row) != row:
                    failed = r
                    break
        if failed is not None:
            raise OSError(f"short read at row {failed} of a mapped .npy file {self._path}")
        return result.reshape((*rows.shape, *self.shape[1:]))


def open_npy(path: str) -> np.ndarray:
    """A read-only array over the `.npy` file at `path`, memory-mapped (never read whole).
    Raises `DataError` naming the file when it is not a plain `.npy` array."""
    global _pager
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
            if fortran or dtype.hasobject:
                raise DataError(f"{path}: a C-ordered array of numbers is needed (got "
                                f"{'Fortran order' if fortran else dtype})")
            size = int(np.prod(shape)) * dtype.itemsize
            if os.fstat(fh.fileno()).st_size < offset + size:
                raise DataError(f"{path}: truncated: {shape} {dtype} needs {offset + size} "
                                f"bytes, the file has {os.fstat(fh.fileno()).st_size}")
            mm = _Map(fh.fileno(), 0, access=mmap.ACCESS_READ)
            # Batches read rows at random: without this hint every fault also maps the 15
            # pages around it ("fault-around"), 16x the resident growth for nothing.
            mm.madvise(mmap.MADV_RANDOM)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as a .npy file: {err}") from None
    with _lock:
        _maps.add(mm)
        if _pager is None:
            _pager = threading.Thread(target=_release_loop, name="nnspec-mmap-release",
                                      daemon=True)
            _pager.start()
    array = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset
                          ).reshape(shape).view(MappedArray)
    array._fd = os.open(path, os.O_RDONLY)  # for pread; closed with the process
    array._start, array._origin, array._bytes = offset, array.ctypes.data, array.nbytes
    array._dtype = array.dtype
    array._path = os.path.abspath(path)
    return array


def _reopen(path: str, first: int, count: int) -> np.ndarray:
    """Rows first..first+count-1 of a mapped `.npy` file (how a `MappedArray` unpickles)."""
    return open_npy(path)[first:first + count]


def _check(name: str, x: np.ndarray, spec: InputSpec | None, path: str) -> None:
    if spec is None:
        return
    want = tuple(spec.shape)
    got = x.shape[1:]
    if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
        raise DataError(f"{path}: input {name!r} expects samples of shape {want}, the file "
                        f"holds {got} (a mapped file is not reshaped)")
    if x.dtype != np.dtype(spec.dtype):
        raise DataError(f"{path}: input {name!r} is {spec.dtype}, the file holds {x.dtype} "
                        "(a mapped file is not converted: save it as the input's dtype)")


def mapped_dataset(data: DataSpec, inputs: Mapping[str, InputSpec], outputs: Sequence[str],
                   spec_folder: str):  # -> Dataset
    """The Dataset of an `npy` directory: inputs memory-mapped, targets loaded (small)."""
    from nnspec.compiler.data.dataset import Dataset, Split
    from nnspec.compiler.data.sources import resolve

    folder = resolve(data.path or "", spec_folder)
    if not os.path.isdir(folder):
        raise DataError(f"data.path: no such folder {folder!r} (source npy: a folder with "
                        "NAME.npy per input and output)")
    names = [*inputs, *outputs]
    absent = [n for n in names if not os.path.isfile(os.path.join(folder, f"{n}.npy"))]
    if absent:
        found = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
        raise DataError(f"data.path: {folder} has no {', '.join(f'{n}.npy' for n in absent)}"
                        f"; it holds {found}")

    def load(suffix: str) -> tuple[dict, dict] | None:
        paths = {n: os.path.join(folder, f"{n}{suffix}.npy") for n in names}
        if suffix and not all(os.path.isfile(p) for p in paths.values()):
            return None
        x = {n: open_npy(paths[n]) for n in inputs}
        y = {n: np.load(paths[n]) for n in outputs}  # targets are small: in memory
        for n, v in x.items():
            _check(n, v, inputs[n], paths[n])
        lengths = {k: len(v) for k, v in {**x, **y}.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"data.path: {folder}: the{suffix} files hold different numbers "
                            f"of samples: {lengths}")
        return x, y

    x, y = load("")
    n = len(next(iter(y.values())))
    if data.limit:
        n = min(n, data.limit)
    given = load("_test")
    test_n = 0 if given else int(round(n * data.test_split))
    val_n = int(round((n - test_n) * data.validation_split))
    train_n = n - test_n - val_n

    def block(lo: int, hi: int) -> Split:
        return Split({k: v[lo:hi] for k, v in x.items()}, {k: v[lo:hi] for k, v in y.items()})

    test = Split(*given) if given else block(train_n + val_n, n)
    return Dataset(block(0, train_n), block(train_n, train_n + val_n), test)

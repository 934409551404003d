"""Read and write the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), then
one big-endian int32 per dimension, then the data in C order, big-endian. The files are often
gzip-compressed; compression is detected from the gzip magic bytes, never from the file name,
because mirrors and distributions rename and recompress them.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DTYPE_CODES", "decode_idx", "encode_idx", "read_idx", "write_idx"]

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype, as in the format's definition (LeCun's MNIST page).
DTYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_HEADER = struct.Struct(">BBBB")
_MAX_DIM = 2**31 - 1  # dimensions are stored as signed int32


def _code_for(dtype: np.dtype) -> int | None:
    """Return the IDX type code for `dtype` (any byte order), or None if IDX cannot hold it."""
    wanted = dtype.newbyteorder(">")
    for code, idx_dtype in DTYPE_CODES.items():
        if idx_dtype == wanted:
            return code
    return None


def decode_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the uncompressed bytes of an IDX file into a native-byte-order array.

    `name` only appears in error messages. Raises ValueError on a bad magic, an unknown dtype
    code, a truncated header, or a data section whose size does not match the header.
    """
    if len(data) < _HEADER.size:
        raise ValueError(f"{name}: file is {len(data)} bytes, too short for the 4-byte IDX magic")
    zero0, zero1, code, ndim = _HEADER.unpack_from(data)
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{name}: bad IDX magic {data[:4].hex()}: expected the first two bytes to be 0000"
        )
    if code not in DTYPE_CODES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPE_CODES)
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02X}, expected one of {known}")
    header_size = _HEADER.size + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{name}: header declares {ndim} dimensions ({header_size} header bytes), "
            f"but the file is only {len(data)} bytes"
        )
    shape = struct.unpack_from(f">{ndim}i", data, _HEADER.size)
    if any(d < 0 for d in shape):
        raise ValueError(f"{name}: negative dimension in shape {shape}")
    dtype = DTYPE_CODES[code]
    expected = dtype.itemsize * int(np.prod(shape, dtype=object))
    found = len(data) - header_size
    if found != expected:
        raise ValueError(
            f"{name}: expected {expected} bytes of data for shape {shape} of {dtype.name}, "
            f"found {found}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=header_size, count=expected // dtype.itemsize)
    # astype copies: the result is writable, native-endian and does not pin `data` in memory.
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def encode_idx(array: np.ndarray, name: str = "<array>") -> bytes:
    """Encode `array` as uncompressed IDX bytes (big-endian header and data).

    Raises ValueError if the dtype has no IDX code or the shape does not fit the header.
    """
    array = np.asarray(array)
    code = _code_for(array.dtype)
    if code is None:
        allowed = ", ".join(d.newbyteorder("=").name for d in DTYPE_CODES.values())
        raise ValueError(f"{name}: IDX cannot store dtype {array.dtype}, expected one of {allowed}")
    if array.ndim > 255:
        raise ValueError(f"{name}: IDX stores at most 255 dimensions, array has {array.ndim}")
    if any(d > _MAX_DIM for d in array.shape):
        raise ValueError(f"{name}: dimension in shape {array.shape} exceeds int32 ({_MAX_DIM})")
    header = _HEADER.pack(0, 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=DTYPE_CODES[code]).tobytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not, and return it as a native-endian array.

    Raises ValueError naming the file if it is not valid IDX (bad magic, truncated data, size
    mismatch, corrupt gzip stream).
    """
    name = os.fspath(path)
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{name}: corrupt or truncated gzip stream ({exc})") from exc
    return decode_idx(raw, name)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` to `path` as IDX, gzip-compressed if `compress` (default: name ends .gz).

    The file is written to a temporary file in the same folder and moved into place with
    os.replace, so readers never see a half-written file.
    """
    path = Path(path)
    if compress is None:
        compress = path.name.endswith(".gz")
    data = encode_idx(array, os.fspath(path))
    if compress:
        # mtime=0 keeps the bytes reproducible, so checksums of written files are stable.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    _atomic_write(path, data)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary sibling and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Refuse ONNX files that would make a runtime read outside the model's folder.

An ONNX tensor may keep its bytes in an external file (`data_location: EXTERNAL`, with
`external_data` entries `location`, `offset`, `length`). Runtimes open that location relative to
the model's folder, and some do so without containment: onnxruntime before 1.24 reads
`../../etc/passwd` or `/etc/passwd` (CVE-2022-25882 and CVE-2024-27318 are the same bug in the
`onnx` package). `check_model_file` runs before any session is created and:

1. scans every tensor of the file (graph initializers, sparse initializers, Constant and other
   node attributes, subgraphs of If/Loop/Scan, functions, training graphs) and refuses external
   data whose location is absolute, holds a `..` component, does not resolve (symlinks
   followed) to a regular file inside the model's folder, has other hard links, or whose
   offset/length reach past the end of that file. The scan reads the protobuf wire format
   directly, so it needs nothing beyond the standard library and runs on devices without the
   `onnx` package;
2. runs `onnx.checker.check_model` on the path (the path form also covers models over 2 GiB).
   The checker needs the `onnx` package: where it is not installed the checker is skipped with
   a warning on stderr (the scan of step 1 still runs).

What remains: a file swapped between this check and the runtime's read (TOCTOU) is not covered;
load models from folders that only trusted users can write.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from nnspec.runtime.model import InputError


class UnsafeModelError(InputError):
    """A model file that must not reach a runtime (a `ValueError`; the CLI exits with 2)."""


# Field numbers of onnx.proto (only those that can lead to a TensorProto).
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_NAME, _GRAPH_INIT, _GRAPH_SPARSE = 1, 2, 5, 15
_NODE_NAME, _NODE_OP, _NODE_ATTR = 3, 4, 5
_FUNC_NAME, _FUNC_NODE, _FUNC_ATTR = 1, 7, 11
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_TS, _ATTR_GS, _ATTR_ST, _ATTR_STS = 1, 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs; deeper is refused rather than recursed into
# onnxruntime reads this "location" as a raw memory address given by `offset`.
_ORT_MEMORY = "*/_ORT_MEM_ADDR_/*"

_warned_no_onnx = False


@dataclass
class ExternalTensor:
    """A tensor that keeps its data outside the model file."""

    name: str
    where: str
    external_location: bool  # data_location == EXTERNAL
    entries: list[tuple[str, str]] = field(default_factory=list)


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed(f"bad varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed(f"field {number} at byte {pos} runs past its message")
            yield number, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Malformed(f"field {number} runs past its message")
        else:
            raise _Malformed(f"unsupported wire type {wire} at byte {pos}")


def _text(buf: memoryview, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


class _Scanner:
    def __init__(self, buf: memoryview):
        self.buf = buf
        self.found: list[ExternalTensor] = []

    def _name(self, start: int, end: int, number: int) -> str:
        for n, wire, a, b in _fields(self.buf, start, end):
            if n == number and wire == 2:
                return _text(self.buf, a, b)
        return ""

    def model(self) -> None:
        for n, wire, a, b in _fields(self.buf, 0, len(self.buf)):
            if wire != 2:
                continue
            if n == _MODEL_GRAPH:
                self.graph(a, b, "graph", 0)
            elif n == _MODEL_TRAINING:
                for m, w, c, d in _fields(self.buf, a, b):
                    if w == 2 and m in _TRAINING_GRAPHS:
                        self.graph(c, d, "training graph", 0)
            elif n == _MODEL_FUNCTIONS:
                self.function(a, b)

    def graph(self, start: int, end: int, kind: str, depth: int, context: str = "") -> None:
        if depth > _MAX_DEPTH:
            raise _Malformed(f"subgraphs nested more than {_MAX_DEPTH} deep")
        name = self._name(start, end, _GRAPH_NAME)
        where = f"{kind} {name!r}" if name else kind
        where = f"{where} ({context})" if context else where
        for n, wire, a, b in _fields(self.buf, start, end):
            if wire != 2:
                continue
            if n == _GRAPH_INIT:
                self.tensor(a, b, f"initializer of {where}")
            elif n == _GRAPH_SPARSE:
                self.sparse(a, b, f"sparse initializer of {where}")
            elif n == _GRAPH_NODE:
                self.node(a, b, where, depth)

    def function(self, start: int, end: int) -> None:
        where = f"function {self._name(start, end, _FUNC_NAME)!r}"
        for n, wire, a, b in _fields(self.buf, start, end):
            if wire == 2 and n == _FUNC_NODE:
                self.node(a, b, where, 0)
            elif wire == 2 and n == _FUNC_ATTR:
                self.attribute(a, b, f"default attribute of {where}", 0)

    def node(self, start: int, end: int, where: str, depth: int) -> None:
        name = op = ""
        attributes = []
        for n, wire, a, b in _fields(self.buf, start, end):
            if wire != 2:
                continue
            if n == _NODE_NAME:
                name = _text(self.buf, a, b)
            elif n == _NODE_OP:
                op = _text(self.buf, a, b)
            elif n == _NODE_ATTR:
                attributes.append((a, b))
        label = f"node {name!r} ({op}) in {where}" if name else f"{op} node in {where}"
        for a, b in attributes:
            self.attribute(a, b, label, depth)

    def attribute(self, start: int, end: int, where: str, depth: int) -> None:
        where = f"attribute {self._name(start, end, _ATTR_NAME)!r} of {where}"
        for n, wire, a, b in _fields(self.buf, start, end):
            if wire != 2:
                continue
            if n in (_ATTR_T, _ATTR_TS):
                self.tensor(a, b, where)
            elif n in (_ATTR_ST, _ATTR_STS):
                self.sparse(a, b, where)
            elif n in (_ATTR_G, _ATTR_GS):
                self.graph(a, b, "subgraph", depth + 1, where)

    def sparse(self, start: int, end: int, where: str) -> None:
        for n, wire, a, b in _fields(self.buf, start, end):
            if wire == 2 and n in (_SPARSE_VALUES, _SPARSE_INDICES):
                part = "values" if n == _SPARSE_VALUES else "indices"
                self.tensor(a, b, f"{part} of a {where}")

    def tensor(self, start: int, end: int, where: str) -> None:
        name, external, entries = "", False, []
        for n, wire, a, b in _fields(self.buf, start, end):
            if n == _TENSOR_NAME and wire == 2:
                name = _text(self.buf, a, b)
            elif n == _TENSOR_LOCATION and wire == 0:
                external = a == _EXTERNAL
            elif n == _TENSOR_EXTERNAL and wire == 2:
                key = value = ""
                for m, w, c, d in _fields(self.buf, a, b):
                    if w == 2 and m == 1:
                        key = _text(self.buf, c, d)
                    elif w == 2 and m == 2:
                        value = _text(self.buf, c, d)
                entries.append((key, value))
        if external or entries:
            self.found.append(ExternalTensor(name, where, external, entries))


def external_tensors(path: str | os.PathLike) -> list[ExternalTensor]:
    """Every tensor of the ONNX file at `path` that declares external data (no `onnx` needed).
    Raises `UnsafeModelError` when the file is not a well-formed protobuf message."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise UnsafeModelError(f"{path}: the file is empty, not an ONNX model")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            scanner = _Scanner(view)
            try:
                scanner.model()
            except _Malformed as err:
                raise UnsafeModelError(f"{path}: not a valid ONNX file ({err})") from None
            finally:
                view.release()
    return scanner.found


def _refuse(path: str, tensor: ExternalTensor, why: str) -> UnsafeModelError:
    name = f"tensor {tensor.name!r}" if tensor.name else "a tensor"
    return UnsafeModelError(f"{path}: refused: {name} ({tensor.where}) keeps its data in an "
                            f"external file {why}; only files inside the model's folder are "
                            "allowed")


def _check_external(path: str, folder: str, tensor: ExternalTensor) -> None:
    keys = [k for k, _ in tensor.entries]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise _refuse(path, tensor, f"with repeated external_data keys {duplicated}")
    info = dict(tensor.entries)
    location = info.get("location", "")
    if not location:
        raise _refuse(path, tensor, "but gives no location")
    if location == _ORT_MEMORY:
        raise _refuse(path, tensor, f"at {location!r}, onnxruntime's raw memory address marker")
    if "\0" in location:
        raise _refuse(path, tensor, f"at {location!r}, which holds a NUL character")
    if (os.path.isabs(location) or location.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", location)):
        raise _refuse(path, tensor, f"at the absolute path {location!r}")
    if ".." in re.split(r"[/\\]", location):
        raise _refuse(path, tensor, f"at {location!r}, whose '..' escapes the model's folder")
    real = os.path.realpath(os.path.join(folder, location))
    try:
        inside = os.path.commonpath([folder, real]) == folder
    except ValueError:  # another drive
        inside = False
    if not inside:
        raise _refuse(path, tensor, f"at {location!r}, a link that resolves to {real!r} outside "
                      f"the model's folder {folder!r}")
    try:
        st = os.stat(real)
    except OSError:
        raise _refuse(path, tensor, f"at {location!r}, which does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, tensor, f"at {location!r}, which is not a regular file")
    if st.st_nlink > 1:
        raise _refuse(path, tensor, f"at {location!r}, a file with {st.st_nlink} hard links "
                      "(a hard link can point anywhere on the file system)")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise _refuse(path, tensor, f"at {location!r} with a non-integer offset or length "
                      f"({info.get('offset')!r}, {info.get('length')!r})") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise _refuse(path, tensor, f"at {location!r}, reading bytes [{offset}, "
                      f"{offset + length}) of a {st.st_size}-byte file")


def check_model_file(path: str | os.PathLike) -> None:
    """Refuse unsafe external data, then run `onnx.checker.check_model` on the path (skipped
    with a warning when `onnx` is not installed). Raises `UnsafeModelError`."""
    global _warned_no_onnx
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    # Runtimes resolve external data against the folder of the path they are given.
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for tensor in external_tensors(path):
        _check_external(path, folder, tensor)
    try:
        import onnx.checker
    except ImportError:
        if not _warned_no_onnx:
            _warned_no_onnx = True
            print(f"warning: the onnx package is not installed: skipped onnx.checker on {path} "
                  "(the external-data scan ran; `pip install onnx` to run the checker)",
                  file=sys.stderr)
        return
    try:
        onnx.checker.check_model(path)
    except Exception as err:  # noqa: BLE001 - ValidationError, DecodeError, OSError...
        message = " ".join(str(err).split()) or type(err).__name__
        raise UnsafeModelError(f"{path}: onnx.checker rejects the model: {message}") from None

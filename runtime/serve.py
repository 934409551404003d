"""`nnspec serve MODEL`: the model behind HTTP, on Starlette and uvicorn (the `serve` extra).

GET /health answers {"status": "ok", "stats": ...}; GET /metadata the inputs, outputs, labels,
the spec's name and sha256; POST /predict takes {"inputs": {NAME: nested lists}} and answers
{"outputs": {NAME: nested lists}}. Each request's inputs are checked against the model's shape
and dtype (nnspec.runtime.model's checks) before onnxruntime sees them: a bad request gets a
4xx with {"error": message} and the server goes on. Concurrent requests are batched: the
`Batcher` gathers those that arrive within `max_wait_ms` of the first, up to `max_batch`
samples, runs them as one onnxruntime call (in a worker thread, so the event loop keeps
accepting) and splits the outputs back. Bound to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import time
from typing import Any

import numpy as np

from nnspec.runtime.model import InputError, Model, UsageError

MAX_BODY = 64 * 1024 * 1024  # bytes of one request
INSTALL_HINT = "pip install 'nnspec[serve]' (or 'nnspec-runtime[serve]')"


class RequestError(InputError):
    """A request the server refuses: its HTTP status and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, model: Model) -> dict[str, np.ndarray]:
    """The checked, batched inputs of a POST /predict body. Raises RequestError (400 for a
    body that is not the expected JSON, 422 for inputs that do not fit the model)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        got = type(doc).__name__ if not isinstance(doc, dict) else f"keys {sorted(doc)}"
        raise RequestError(400, 'expected a JSON object {"inputs": {NAME: nested lists}}; '
                           f"got {got}")
    inputs = doc["inputs"]
    names = [i.name for i in model.inputs]
    unknown = sorted(set(inputs) - set(names))
    missing = [n for n in names if n not in inputs]
    if unknown or missing:
        raise RequestError(422, f"the model takes inputs {names}; missing {missing}, "
                           f"unknown {unknown}")
    feeds = {}
    for info in model.inputs:
        try:
            x = np.asarray(inputs[info.name])
        except ValueError:  # ragged nested lists
            raise RequestError(422, f"input {info.name!r} is a ragged nested list; expected "
                               f"an array of shape {_shape(info.shape)}") from None
        if x.dtype.kind not in "biuf":
            raise RequestError(422, f"input {info.name!r} expects numbers ({info.dtype.name}); "
                               f"got {x.dtype.name} values")
        if x.dtype.kind == "f" and np.issubdtype(info.dtype, np.floating) and x.size and (
                not np.isfinite(x).all()):
            raise RequestError(422, f"input {info.name!r} holds NaN or Inf")
        try:
            feeds[info.name] = model._prepare(info, x)
        except InputError as err:
            raise RequestError(422, str(err)) from None
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) > 1:
        raise RequestError(422, f"the inputs hold different batch sizes: "
                           f"{ {k: len(v) for k, v in feeds.items()} }")
    if sizes == {0}:
        raise RequestError(422, "the request holds no samples (batch of 0)")
    return feeds


def _shape(shape: tuple) -> str:
    return "(batch, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Batcher:
    """Gathers concurrent requests into one onnxruntime call (up to `max_batch` samples,
    waiting at most `max_wait_ms` after the first), runs it in a worker thread, splits it."""

    def __init__(self, model: Model, max_batch: int = 32, max_wait_ms: float = 2.0):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1e3
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.stats = {"requests": 0, "samples": 0, "runs": 0, "merged_requests": 0,
                      "largest_run": 0, "refused": 0}

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for one request's (checked) inputs."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((feeds, future))
        return await future

    async def _loop(self) -> None:
        while True:
            first = await self.queue.get()
            pending, samples = [first], _samples(first[0])
            deadline = time.perf_counter() + self.max_wait
            while samples < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if samples + _samples(item[0]) > self.max_batch:
                    self.queue.put_nowait(item)  # waits for the next run, in order
                    break
                pending.append(item)
                samples += _samples(item[0])
            groups: dict[tuple, list] = {}  # free dims may differ: one run per set of shapes
            for item in pending:
                key = tuple(v.shape[1:] for v in item[0].values())
                groups.setdefault(key, []).append(item)
            for group in groups.values():
                await self._run(group)

    async def _run(self, group: list) -> None:
        names = list(group[0][0])
        feeds = {n: np.concatenate([f[n] for f, _ in group]) if len(group) > 1
                 else group[0][0][n] for n in names}
        try:
            values = await asyncio.to_thread(self.model.session.run, None, feeds)
        except Exception as err:  # noqa: BLE001 - the requests get the error, the loop goes on
            for _, future in group:
                if not future.done():
                    future.set_exception(err)
            return
        n = len(next(iter(feeds.values())))
        self.stats["runs"] += 1
        self.stats["largest_run"] = max(self.stats["largest_run"], n)
        if len(group) > 1:
            self.stats["merged_requests"] += len(group)
        start = 0
        for f, future in group:
            size = _samples(f)
            if not future.done():
                future.set_result({o.name: v[start:start + size]
                                   for o, v in zip(self.model.outputs, values)})
            start += size


def _samples(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def _jsonable(value: np.ndarray) -> Any:
    """Nested lists; non-finite floats (which JSON lacks) become null."""
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        out = value.astype(object)
        out[~np.isfinite(value)] = None
        return out.tolist()
    return value.tolist()


def metadata(model: Model, batcher: Batcher) -> dict[str, Any]:
    """What GET /metadata answers."""
    with open(model.path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    info = [{"name": i.name, "shape": [None, *i.shape], "dtype": i.dtype.name}
            for i in model.inputs]
    outs = [{"name": o.name, "shape": [None, *o.shape], "dtype": o.dtype.name}
            for o in model.outputs]
    return {"spec_name": model.metadata.get("spec_name"),
            "spec_sha256": model.metadata.get("spec_sha256"), "model_sha256": digest,
            "nnspec_version": model.metadata.get("nnspec_version"), "inputs": info,
            "outputs": outs, "labels": model.labels,
            "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1e3}}


def create_app(model: Model, max_batch: int = 32, max_wait_ms: float = 2.0) -> Any:
    """The Starlette application serving `model`."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise UsageError(f"serving needs Starlette and uvicorn: {INSTALL_HINT}") from None
    batcher = Batcher(model, max_batch, max_wait_ms)
    meta = metadata(model, batcher)

    def error(status: int, message: str) -> JSONResponse:
        batcher.stats["refused"] += 1
        return JSONResponse({"error": message}, status_code=status)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "stats": batcher.stats})

    async def get_metadata(request: Request) -> JSONResponse:
        return JSONResponse(meta)

    async def predict(request: Request) -> Response:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_BODY:
            return error(413, f"the body holds {size} bytes; at most {MAX_BODY} are read")
        try:
            feeds = parse_request(await request.body(), model)
        except RequestError as err:
            return error(err.status, str(err))
        batcher.stats["requests"] += 1
        batcher.stats["samples"] += _samples(feeds)
        try:
            outputs = await batcher.submit(feeds)
        except Exception as err:  # noqa: BLE001 - onnxruntime refused: say so, keep serving
            return error(500, f"onnxruntime failed: {type(err).__name__}: {err}")
        body = {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 500)
        return error(status, f"{request.method} {request.url.path}: "
                     f"{getattr(exc, 'detail', 'error')} (routes: GET /health, GET /metadata, "
                     "POST /predict)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/health", health), Route("/metadata", get_metadata),
                            Route("/predict", predict, methods=["POST"])],
                    exception_handlers={404: not_allowed, 405: not_allowed}, lifespan=lifespan)
    app.state.batcher = batcher
    return app


def add_parser(verbs: Any, overrides: dict | None = None) -> None:
    """Add the `serve` verb to an argparse subparsers object."""
    p = verbs.add_parser(
        "serve", help="serve a model over HTTP (/health, /metadata, /predict)",
        description="Serve an exported model over HTTP with Starlette and uvicorn: GET /health, "
        'GET /metadata, POST /predict {"inputs": {NAME: nested lists}}. Concurrent requests '
        "are batched into one onnxruntime call. Needs the serve extra: " + INSTALL_HINT)
    p.add_argument("model", metavar="MODEL", help="an .onnx file, or a run directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="most samples in one onnxruntime call (default 32; 1 turns batching "
                   "off)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long a batch waits for more requests after its first (default 2)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    p.set_defaults(func=cmd_serve)


def _check_address(host: str, port: int) -> None:
    """Fail early, with the address in the message, where uvicorn could not listen."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as err:
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err} (another "
                         "server on that port? choose another with --port)") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run `serve` until interrupted."""
    if args.max_batch < 1 or args.batch_wait_ms < 0 or not 0 <= args.port < 65536:
        raise UsageError(f"--max-batch must be >= 1, --batch-wait-ms >= 0 and --port in "
                         f"[0, 65535]; got {args.max_batch}, {args.batch_wait_ms}, {args.port}")
    try:
        import uvicorn
    except ImportError:
        raise UsageError(f"serving needs Starlette and uvicorn: {INSTALL_HINT}") from None
    model = Model(args.model, threads=args.threads)
    app = create_app(model, args.max_batch, args.batch_wait_ms)
    _check_address(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {args.host} makes the model reachable from the network, "
              "without authentication", file=sys.stderr)
    print(f"serving {model.path} on http://{args.host}:{args.port} (max batch "
          f"{args.max_batch}, wait {args.batch_wait_ms:g} ms)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0

"""Helpers of benchmarks/serve_load.py and tests/test_serve.py: start `nnspec serve` on a free
loopback port in a subprocess, and post JSON to it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | None = None, method: str | None = None,
         timeout: float = 30) -> tuple[int, Any]:
    """(status, decoded JSON) of one request; 4xx/5xx answers are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextmanager
def serving(model: str, *flags: str, python: str = sys.executable) -> Iterator[str]:
    """The base URL of `nnspec serve MODEL FLAGS` on a free loopback port, while it runs."""
    port = free_port()
    process = subprocess.Popen([python, "-m", "nnspec", "serve", model, "--port", str(port),
                                *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(url + "/health", timeout=2)[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nnspec serve did not start: {process.communicate()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

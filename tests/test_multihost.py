"""Several processes, one run: `jax.distributed` on this machine's CPU, two processes of two
devices each, against one process of four devices (the same mesh, so the same numbers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, SMALL, run_cli
from flax import serialization

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spec(tmp_path, epochs):
    path = tmp_path / f"hosts{epochs}.yaml"
    path.write_text(SMALL.replace("epochs: 3", f"epochs: {epochs}")
                    + "  checkpoint: {every_epochs: 1}\n")
    return path


def _launch(spec, out, *extra, port=None):
    """Both processes of one run; process 0 last, so it is the one whose output we read."""
    port = port or _port()
    procs = []
    for pid in (1, 0):
        cmd = [sys.executable, "-m", "nnspec", "train", str(spec), "--out", str(out), "-q",
               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
               str(pid), *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **TWO_DEVICES},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _finish(procs, timeout=300):
    return [(p.wait(timeout=timeout), *p.communicate()) for p in procs]


def _history(run):
    return json.loads((run / "history.json").read_text())


def _weights(run):
    return serialization.msgpack_restore((run / "weights.msgpack").read_bytes())


def test_two_processes_train_as_one_mesh_and_process_0_writes(tmp_path):
    spec = _spec(tmp_path, 4)
    procs = _launch(spec, tmp_path / "two")
    four = run_cli("train", str(spec), "--out", str(tmp_path / "four"), "-q",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    (rc1, out1, err1), (rc0, out0, err0) = _finish(procs)
    assert (rc0, rc1) == (0, 0), err0 + err1
    assert four.returncode == 0, four.stderr
    report = json.loads(out0)
    assert report["parity"]["passed"] and out1.strip() == ""  # process 1 trains in silence
    training = json.loads((tmp_path / "two" / "metrics.json").read_text())["training"]
    assert (training["processes"], training["devices"]) == (2, 4)
    a, b = _history(tmp_path / "two"), _history(tmp_path / "four")
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b],
                               rtol=1e-5)
    assert (tmp_path / "two" / "model.onnx").exists()


@pytest.mark.slow  # ~37 s on 2 cores; the one-process SIGTERM resume stays in the default suite
def test_a_signal_to_one_process_stops_both_and_they_resume(tmp_path):
    spec = _spec(tmp_path, 60)
    run = tmp_path / "stopped"
    procs = _launch(spec, run)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (run / "metrics.jsonl").exists()
            and len((run / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.05)
    procs[0].send_signal(signal.SIGTERM)  # process 1 only
    (rc1, _, err1), (rc0, _, err0) = _finish(procs)
    assert (rc0, rc1) == (130, 130), err0 + err1
    step = lambda err: err.split("step ")[1].split(";")[0]  # noqa: E731
    assert step(err0) == step(err1)  # both stopped after the same step
    whole = _launch(spec, tmp_path / "whole")
    resumed = _launch(spec, run, "--resume")
    for rc, _, err in _finish(whole) + _finish(resumed):
        assert rc == 0, err
    for x, y in zip(*(jax.tree.leaves(_weights(r)) for r in (tmp_path / "whole", run)),
                    strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("args, message", [
    (["--coordinator", "localhost:1"], "go together"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 2). Received: process_id=2"),
    (["--distributed"], "elsewhere give --coordinator, --num-processes and --process-id"),
])
def test_incomplete_process_flags_are_usage_errors(tmp_path, args, message):
    result = run_cli("train", str(_spec(tmp_path, 1)), "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()

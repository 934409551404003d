"""Faults during training, through the real CLI: SIGKILL at random points then --resume, a
full disk, an unwritable output folder, a corrupted checkpoint, data changed between a run and
its resume; and determinism (two runs, the same bytes). docs/faults.md tabulates what the user
sees in each case, naming these tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from nnspec.compiler.data.dataset import load_digits

SPEC = """\
version: 1
name: faults
inputs:
  pixels: {shape: [8, 8], dtype: uint8}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, name: fc1, units: 32, activation: relu}
  - {type: dropout, rate: 0.1}
  - {type: dense, name: head, units: 10}
  - {type: softmax}
data: {source: npz, path: digits.npz, test_split: 0.2}
train:
  epochs: 12
  batch_size: 32
  optimizer: {name: adam, learning_rate: 0.003}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 1
  checkpoint: {every_epochs: 1, every_steps: 7, keep: 2}
"""


def _folder(path: Path) -> Path:
    """A spec and its data file in `path`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "s.yaml").write_text(SPEC)
    digits = load_digits()
    np.savez(path / "digits.npz", x=digits["x"][:600], y=digits["y"][:600])
    return path


def _start(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnspec", "train", str(folder / "s.yaml"),
                             "--out", str(out), "-q", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train(folder: Path, out: Path, *extra: str) -> tuple[int, str]:
    proc = _start(folder, out, *extra)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _epochs(out: Path) -> int:
    jsonl = out / "metrics.jsonl"
    return len(jsonl.read_text().splitlines()) if jsonl.exists() else 0


def _wait_for_epochs(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120
                     ) -> None:
    deadline = time.time() + timeout
    while _epochs(out) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not progress"
        time.sleep(0.01)


def _history(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in json.loads((out / "history.json").read_text())]


def _corrupt(checkpoint: Path) -> None:
    """Flip one byte in the middle of the checkpoint's largest array file."""
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file()]
    big = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF
    big.write_bytes(bytes(data))


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def _clean(err: str) -> None:
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted run: (its folder with spec and data, its run directory)."""
    folder = _folder(tmp_path_factory.mktemp("reference"))
    code, err = _train(folder, folder / "run")
    assert code == 0, err
    return folder, folder / "run"


def _copy(reference: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The reference's spec, data and checkpoints, without its results."""
    folder, run = reference
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    for name in ("weights.msgpack", "model.onnx"):
        (tmp_path / "run" / name).unlink()
    return tmp_path, tmp_path / "run"


def test_two_runs_give_the_same_bytes(reference, tmp_path):
    """Determinism: the same spec, seed and data, two processes, the same weights file."""
    folder = _folder(tmp_path)
    code, err = _train(folder, tmp_path / "again")
    assert code == 0, err
    assert (tmp_path / "again" / "weights.msgpack").read_bytes() == (
        reference[1] / "weights.msgpack").read_bytes()
    assert _history(tmp_path / "again") == _history(reference[1])


def test_sigkill_at_random_points_then_resume_is_bit_identical(reference, tmp_path):
    """Two SIGKILLs at seeded random points (within an epoch, possibly mid-checkpoint), each
    followed by --resume; the last resume ends with the uninterrupted run's bytes."""
    rng = np.random.default_rng(11)
    folder, out = _folder(tmp_path), tmp_path / "run"
    first = int(rng.integers(1, 5))
    for count, extra in ((first, ()), (int(rng.integers(first + 2, 10)), ("--resume",))):
        proc = _start(folder, out, *extra)
        _wait_for_epochs(out, count, proc)
        time.sleep(float(rng.uniform(0.0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    assert not (out / "model.onnx").exists()
    code, err = _train(folder, out, "--resume")
    assert code == 0, err
    assert (out / "weights.msgpack").read_bytes() == (
        reference[1] / "weights.msgpack").read_bytes()
    assert _history(out) == _history(reference[1])


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs (needs root, as CI runs); unmounted after the test."""
    mounts = []

    def mount(name: str, options: str = "size=4m") -> Path:
        path = tmp_path / name
        if not _mount_tmpfs(path, options):
            pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_keeps_the_last_checkpoint_and_resume_finishes(reference, tmpfs):
    """The disk fills up mid-run (the run is paused, a file takes every free byte): a
    one-line error, exit 1, no model; once there is room, --resume ends bit-identical."""
    disk = tmpfs("disk")
    folder, out = _folder(disk), disk / "run"
    proc = _start(folder, out)
    _wait_for_epochs(out, 3, proc)
    proc.send_signal(signal.SIGSTOP)  # fill the disk between two of its writes
    ballast = disk / "ballast"
    with pytest.raises(OSError, match="No space left"), open(ballast, "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    _clean(err)
    assert "No space left on device" in err and "error: OutputError: cannot write" in err
    assert not (out / "model.onnx").exists() and not (out / ".model.onnx.candidate").exists()
    assert not (out / "weights.msgpack").exists()
    ballast.unlink()
    code, err = _train(folder, out, "--resume")
    assert code == 0, err
    assert (out / "weights.msgpack").read_bytes() == (
        reference[1] / "weights.msgpack").read_bytes()


def test_unwritable_output_folder_is_one_clear_error(tmp_path, tmpfs):
    folder = _folder(tmp_path)
    # Root ignores permissions, so: a folder under a regular file, and a read-only mount.
    for out, words in ((folder / "s.yaml" / "run", "Not a directory"),
                       (tmpfs("ro", "ro,size=1m") / "run", "Read-only file system")):
        code, err = _train(folder, out)
        assert code == 1, err
        _clean(err)
        assert f"cannot write the run directory {out}: {words}" in err, err
        assert "no checkpoint had been saved" in err


def test_corrupted_checkpoint_is_refused_and_the_previous_one_used(reference, tmp_path):
    folder, out = _copy(reference, tmp_path)
    newest, previous = _steps(out)[-1], _steps(out)[-2]
    _corrupt(out / "checkpoints" / str(newest))
    code, err = _train(folder, out, "--resume")
    assert code == 0, err
    assert (f"refusing the checkpoint of step {newest} in {out / 'checkpoints'}: its arrays "
            "do not match the checksum saved with them") in err
    assert f"resuming from the checkpoint of step {previous} instead" in err
    assert (out / "checkpoints" / "refused" / str(newest)).is_dir()
    # Replayed from the earlier checkpoint, the last epoch gives the same bytes.
    assert (out / "weights.msgpack").read_bytes() == (
        reference[1] / "weights.msgpack").read_bytes()
    # With every checkpoint corrupted there is nothing to resume from: exit 2, no traceback.
    for step in _steps(out):
        _corrupt(out / "checkpoints" / str(step))
    code, err = _train(folder, out, "--resume")
    assert code == 2, err
    _clean(err)
    assert f"error: no usable checkpoint in {out / 'checkpoints'}" in err
    assert "train again without --resume" in err


def test_data_changed_since_the_checkpoint_is_refused_on_resume(reference, tmp_path):
    folder, out = _copy(reference, tmp_path)
    with np.load(folder / "digits.npz") as npz:
        x, y = npz["x"].copy(), npz["y"]
    x[5, 3, 3] = (x[5, 3, 3] + 1) % 17  # one pixel of one sample
    np.savez(folder / "digits.npz", x=x, y=y)
    code, err = _train(folder, out, "--resume")
    assert code == 2, err
    _clean(err)
    assert "error: --resume: the data file digits.npz changed since the checkpoint" in err
    assert not (out / "model.onnx").exists()
    assert os.path.isdir(out / "checkpoints") and len(_steps(out)) == 2


def test_the_faults_table_names_real_tests():
    """docs/faults.md: every row names a test that exists."""
    import re

    text = (ROOT / "docs" / "faults.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 9
    for path, test in named:
        assert f"def {test}(" in (ROOT / path).read_text(), (path, test)

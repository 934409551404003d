"""Shared test setup: strict JAX numerics and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

SMALL = """\
version: 1
name: small
inputs:
  pixels: {shape: [8, 8]}
layers:
  - {type: flatten}
  - {type: rescale, scale: 0.0625}
  - {type: dense, units: 32, activation: tanh}
  - {type: dropout, rate: 0.2}
  - {type: dense, units: 10, activation: softmax}
data: {source: digits, limit: 600}
train:
  epochs: 3
  batch_size: 64
  optimizer: {name: adam, learning_rate: 0.003}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 3
"""
"""A small, fast spec on the shipped digits, with every spine layer."""

EMBED = """\
version: 1
name: tokens
inputs:
  ids: {shape: [6], dtype: int32}
layers:
  - {type: embedding, input_dim: 20, output_dim: 4}
  - {type: flatten}
  - {type: dense, units: 2}
  - {type: softmax}
data: {source: npz, path: d.npz}
train: {epochs: 2, batch_size: 32, loss: sparse_categorical_crossentropy}
"""
"""A token classifier on integer ids (npz data `d.npz` written by the test)."""

# Silent broadcasting hides shape bugs; fail on it instead.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `nnspec ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "nnspec", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT,
                          timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A trained run of SMALL: (run directory, spec path)."""
    folder = tmp_path_factory.mktemp("small")
    spec = folder / "small.yaml"
    spec.write_text(SMALL)
    result = run_cli("train", str(spec), "--out", str(folder / "run"), "-q",
                     "--set", "train.epochs=15")
    assert result.returncode == 0, result.stderr
    return folder / "run", spec

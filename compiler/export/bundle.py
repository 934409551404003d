"""The golden bundle, the checksums and the speed of an exported model: `reference_io.npz`
(held-out inputs and the outputs the exported model gives for them, so a device can check it
reproduces them), `SHA256SUMS` (checksums in `sha256sum -c` format) and onnxruntime latency and
throughput on the CPU, which the model card reports.

numpy and onnxruntime only (no JAX). Each file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnspec._io import write_bytes, write_text

MODEL = "model.onnx"
BUNDLE = "reference_io.npz"
MANIFEST = "SHA256SUMS"
QUANTIZATION = "quantization.json"
#: Files `write_manifest` lists by default, when present. "MODEL_CARD.md" is `model_card.CARD`,
#: spelled out because model_card imports this module.
RUN_FILES = (MODEL, "MODEL_CARD.md", BUNDLE, "metrics.json", "metrics.csv", "metrics.jsonl",
             "parity.json", "history.json", "spec.yaml", "resolved_spec.yaml", "weights.msgpack",
             QUANTIZATION)
_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 as 64 hex digits, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session(model_path: str, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def synthetic_inputs(session: Any, batch: int = 1, free: int = 8, seed: int = 0
                     ) -> dict[str, np.ndarray]:
    """Seeded inputs of the session's shapes and dtypes (free axes `free` long): standard
    normal floats, integers within `input_ranges` metadata (embedding ids) or [0, 16]."""
    rng = np.random.default_rng(seed)
    ranges = json.loads(session.get_modelmeta().custom_metadata_map.get("input_ranges", "{}"))
    feeds = {}
    for arg in session.get_inputs():
        shape = (batch, *(d if isinstance(d, int) else free for d in arg.shape[1:]))
        dtype = np.dtype(_NP_TYPES.get(arg.type, np.float32))
        if np.issubdtype(dtype, np.integer):
            low, high = ranges.get(arg.name, [0, 17])
            feeds[arg.name] = rng.integers(low, high, size=shape).astype(dtype)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def read_reference_bundle(path: str | os.PathLike
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) by name from a `reference_io.npz`."""
    with np.load(path, allow_pickle=False) as npz:
        inputs = {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith("input:")}
        outputs = {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith("output:")}
    return inputs, outputs


def write_reference_bundle(run_dir: str | os.PathLike, inputs: Mapping[str, np.ndarray],
                           outputs: Mapping[str, np.ndarray] | None = None,
                           model_path: str | os.PathLike | None = None) -> str:
    """Write `reference_io.npz`: arrays `input:NAME` (held-out samples, e.g. 16) and
    `output:NAME` (what the model gives for them). `outputs` default to a run of the model
    (`run_dir/model.onnx`) in onnxruntime, so a device can check it reproduces them."""
    run_dir = os.fspath(run_dir)
    if outputs is None:
        session = _session(os.fspath(model_path or os.path.join(run_dir, MODEL)))
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: np.ascontiguousarray(inputs[i.name]) for i in session.get_inputs()}
        outputs = dict(zip(names, session.run(names, feeds)))
    arrays = {f"input:{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"output:{k}": np.asarray(v) for k, v in outputs.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = os.path.join(run_dir, BUNDLE)
    write_bytes(path, buffer.getvalue())
    return path


def write_manifest(run_dir: str | os.PathLike, files: Sequence[str] | None = None) -> str:
    """Write `SHA256SUMS` (`sha256sum` text format: `HEX  NAME`, names relative to the run
    directory) for `files`, by default those of `RUN_FILES` that exist and every other
    `.onnx`/`.ort` file at the top of the run directory (quantized copies). Verify with
    `sha256sum -c SHA256SUMS` inside the run directory."""
    run_dir = os.fspath(run_dir)
    if files is None:
        files = [f for f in RUN_FILES if os.path.isfile(os.path.join(run_dir, f))]
        files += sorted(f for f in os.listdir(run_dir) if f.endswith((".onnx", ".ort"))
                        and f not in files and os.path.isfile(os.path.join(run_dir, f)))
    lines = []
    for name in files:
        rel = os.path.relpath(os.path.join(run_dir, name), run_dir).replace(os.sep, "/")
        if "\n" in rel or "\\" in rel or rel.startswith("../"):
            raise ValueError(f"cannot list {name!r} in {MANIFEST}")
        lines.append(f"{sha256_file(os.path.join(run_dir, rel))}  {rel}\n")
    path = os.path.join(run_dir, MANIFEST)
    write_text(path, "".join(lines))
    return path


def measure_speed(model_path: str | os.PathLike, inputs: Mapping[str, np.ndarray] | None = None,
                  runs: int = 50, batch: int = 32, threads: int = 1) -> dict[str, Any]:
    """Latency at batch 1 (median and 90th percentile over `runs` runs, after 5 warm-up runs)
    and throughput at batch `batch`, in onnxruntime on the CPU with `threads` threads."""
    import onnxruntime as ort

    session = _session(os.fspath(model_path), threads)
    if inputs is None:
        inputs = synthetic_inputs(session, 1)
    names = [i.name for i in session.get_inputs()]

    def batch_of(n: int) -> dict[str, np.ndarray]:
        feeds = {}
        for name in names:
            x = np.asarray(inputs[name])
            feeds[name] = np.ascontiguousarray(np.concatenate([x] * -(-n // len(x)))[:n])
        return feeds

    def timings(feeds: dict[str, np.ndarray], count: int) -> list[float]:
        for _ in range(5):
            session.run(None, feeds)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        return sorted(times)

    one = timings(batch_of(1), runs)
    many = timings(batch_of(batch), max(10, runs // 5))
    return {
        "latency_ms_p50": 1e3 * statistics.median(one),
        "latency_ms_p90": 1e3 * one[min(len(one) - 1, int(0.9 * len(one)))],
        "runs": runs,
        "batch": batch,
        "throughput_samples_per_second": batch / statistics.median(many),
        "threads": threads,
        "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
    }

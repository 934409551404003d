"""What ships beside a model: `MODEL_CARD.md` (what the model is, how well it does, how fast it
runs, how to run it), `reference_io.npz` (the golden bundle: held-out inputs and the outputs
the exported model gives for them) and `SHA256SUMS` (checksums in `sha256sum -c` format).

Pure functions of a run directory and values `train_run` already holds; numpy, onnx and
onnxruntime only (no JAX). Each file is written atomically.
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
CARD = "MODEL_CARD.md"
BUNDLE = "reference_io.npz"
MANIFEST = "SHA256SUMS"
QUANTIZATION = "quantization.json"
#: Files `write_manifest` lists by default, when present.
RUN_FILES = (MODEL, CARD, BUNDLE, "metrics.json", "metrics.csv", "metrics.jsonl", "parity.json",
             "history.json", "spec.yaml", "resolved_spec.yaml", "weights.msgpack", QUANTIZATION)
_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def sha256_file(path: str | os.PathLike) -> str:
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


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _shape(dims: Sequence[Any]) -> str:
    return "(" + ", ".join("batch" if i == 0 else str(d) if isinstance(d, int) else "?"
                           for i, d in enumerate(dims)) + ")"


def _dtype(onnx_type: str) -> str:
    known = _NP_TYPES.get(onnx_type)
    return np.dtype(known).name if known else onnx_type


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _as_dict(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(spec)


def _count(rows: Any) -> int:
    """Parameters (trained and statistics) from `nnspec summary`'s rows."""
    return sum(r.params + r.non_trainable for r in rows)


def _parameters(model: Any) -> int:
    import math

    return sum(math.prod(t.dims) for t in model.graph.initializer)


def _preprocessing(spec: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, entry in (spec.get("inputs") or {}).items():
        if entry.get("dtype", "float32") not in ("float32", "float64"):
            lines.append(f"- `{name}` is fed as raw `{entry['dtype']}` values and cast to "
                         "float32 inside the model.")
    for layer in spec.get("layers") or []:
        if layer.get("type") == "rescale":
            source = ", ".join(f"`{i}`" for i in layer.get("inputs") or []) or "its input"
            lines.append(f"- `{layer.get('name', 'rescale')}` (inside the model): "
                         f"{source} × {layer.get('scale', 1.0):g} + "
                         f"{layer.get('offset', 0.0):g}.")
    if lines:
        lines.append("- Feed the raw values: the exported model does this preprocessing itself.")
    else:
        lines.append("- None inside the model: feed values as the model was trained on them.")
    return lines


def _example(spec: Mapping[str, Any], session: Any, labels: Mapping[str, list[str]],
             model_file: str) -> list[str]:
    feeds = []
    for arg in session.get_inputs():
        dims = ", ".join(["1", *(str(d) if isinstance(d, int) else "8" for d in arg.shape[1:])])
        dtype = np.dtype(_NP_TYPES.get(arg.type, np.float32)).name
        feeds.append(f'    "{arg.name}": np.zeros(({dims}), dtype=np.{dtype}),')
    first = session.get_outputs()[0].name
    lines = ["```python", "import numpy as np", "import onnxruntime as ort", "",
             f'session = ort.InferenceSession("{model_file}", '
             'providers=["CPUExecutionProvider"])',
             "feeds = {  # a batch of one raw sample per input", *feeds, "}",
             "outputs = dict(zip([o.name for o in session.get_outputs()], "
             "session.run(None, feeds)))"]
    if first in labels:
        lines.append(f"labels = {json.dumps(labels[first])}")
        lines.append(f'print(labels[int(outputs["{first}"].argmax(-1)[0])])')
    else:
        lines.append(f'print(outputs["{first}"])')
    lines.append("```")
    return lines


def write_model_card(run_dir: str | os.PathLike, spec: Any, metrics: Mapping[str, Any],
                     parity: Mapping[str, Any], model_path: str | os.PathLike | None = None,
                     *, summary_rows: Sequence[Any] | None = None,
                     sample_inputs: Mapping[str, np.ndarray] | None = None,
                     runs: int = 50) -> str:
    """Write `MODEL_CARD.md` into the run directory: name and description; inputs (shapes,
    dtypes, preprocessing inside the graph); outputs (shapes, labels); the layers (from
    `summary_rows`, rows of `nnspec.compiler.graph.summary.summarize`, when given); metrics per
    split; the cross-check verdict; file size and sha256; latency at batch 1 and throughput at
    batch 32 in onnxruntime (timed on `sample_inputs`, else on `reference_io.npz` when the run
    has one, else on synthetic inputs); quantized variants from `quantization.json`; and how
    to run it. `spec` is the resolved spec (a dict, or a `Spec`). Returns the card's path."""
    import onnx

    run_dir = os.fspath(run_dir)
    model_path = os.fspath(model_path or os.path.join(run_dir, MODEL))
    spec = _as_dict(spec)
    model = onnx.load(model_path, load_external_data=False)
    session = _session(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    labels: dict[str, list[str]] = json.loads(meta.get("labels", "{}"))
    for name, out in (spec.get("outputs") or {}).items():
        if (out or {}).get("labels"):
            labels.setdefault(name, out["labels"])
    bundle = os.path.join(run_dir, BUNDLE)
    if sample_inputs is None and os.path.isfile(bundle):
        sample_inputs = read_reference_bundle(bundle)[0]
    speed = measure_speed(model_path, sample_inputs, runs=runs)
    model_file = os.path.relpath(model_path, run_dir).replace(os.sep, "/")
    name = spec.get("name") or meta.get("spec_name") or "model"

    lines = [f"# Model card: {name}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    lines += [f"Trained and exported by nnspec {meta.get('nnspec_version', '?')} "
              f"(JAX {meta.get('jax_version', '?')}, Python {meta.get('python', '?')}); "
              f"ONNX opset {max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default='?')}, "  # noqa: E501
              f"{_count(summary_rows) if summary_rows else _parameters(model):,} parameters. "
              f"Spec sha256 "
              f"`{meta.get('spec_sha256', '?')}`.", ""]

    lines += ["## Files", ""]
    rows = [[f"`{model_file}`", f"{os.path.getsize(model_path):,}",
             f"`{sha256_file(model_path)}`"]]
    if os.path.isfile(bundle):
        rows.append([f"`{BUNDLE}`", f"{os.path.getsize(bundle):,}",
                     f"`{sha256_file(bundle)}`"])
    lines += _table(["file", "bytes", "sha256"], rows)
    lines += ["", f"`{MANIFEST}` lists the checksums: `sha256sum -c {MANIFEST}`.", ""]

    lines += ["## Inputs", ""]
    spec_inputs = spec.get("inputs") or {}
    rows = []
    for arg in session.get_inputs():
        dtype = (spec_inputs.get(arg.name) or {}).get("dtype") or _dtype(arg.type)
        rows.append([f"`{arg.name}`", _shape(arg.shape), dtype])
    lines += _table(["input", "shape", "dtype"], rows)
    lines += ["", "Preprocessing:", "", *_preprocessing(spec), ""]

    lines += ["## Outputs", ""]
    spec_outputs = spec.get("outputs") or {}
    rows = []
    for arg in session.get_outputs():
        origin = (spec_outputs.get(arg.name) or {}).get("from", "")
        names = labels.get(arg.name)
        base = arg.name[:-len("_class")] if arg.name.endswith("_class") else None
        if base and not origin and base in spec_outputs:
            origin = f"argmax of {base}"
            names = None
        rows.append([f"`{arg.name}`", _shape(arg.shape), _dtype(arg.type),
                     (origin if origin.startswith("argmax") else f"`{origin}`") if origin
                     else "",
                     ", ".join(names) if names else ""])
    lines += _table(["output", "shape", "dtype", "from layer", "labels (index order)"], rows)
    lines.append("")

    if summary_rows:
        lines += ["## Layers", ""]
        lines += _table(["layer", "type", "output shape", "parameters"],
                        [[f"`{r.name}`", r.type, _shape((None, *r.shape)), f"{r.params:,}"]
                         for r in summary_rows])
        lines.append("")

    lines += ["## Metrics", ""]
    splits = {k: v for k, v in metrics.items() if k != "training" and isinstance(v, Mapping)}
    columns: list[str] = []
    for values in splits.values():
        columns += [c for c in values if c not in columns]
    lines += _table(["split", *columns], [[split, *(_fmt(values.get(c)) for c in columns)]
                                          for split, values in splits.items()])
    training = metrics.get("training") or {}
    if training:
        lines += ["", f"Training: {training.get('epochs', '?')} epochs"
                  + (f" (best epoch {training['best_epoch']})" if training.get("best_epoch")
                     else "")
                  + f", {training.get('samples_per_second') or 0:,.0f} samples/s on "
                  f"{training.get('backend', '?')}."]
    lines.append("")

    verdict = "PASSED" if parity.get("passed") else "FAILED"
    lines += ["## Export cross-check", "",
              f"**{verdict}**: onnxruntime against the trained model on "
              f"{parity.get('samples', '?')} held-out samples.", ""]
    lines += _table(["max abs diff", "max rel diff", "atol", "rtol", "argmax agreement"],
                    [[f"{parity.get('max_abs_diff', float('nan')):.3g}",
                      f"{parity.get('max_rel_diff', float('nan')):.3g}",
                      f"{parity.get('atol', float('nan')):g}",
                      f"{parity.get('rtol', float('nan')):g}",
                      _fmt(parity.get("argmax_agreement"))]])
    if parity.get("reference") or parity.get("runtime"):
        lines += ["", f"Reference: {parity.get('reference', '?')}; runtime: "
                  f"{parity.get('runtime', '?')}."]
    lines.append("")

    lines += ["## Speed", "",
              f"{speed['runtime']}, {speed['threads']} thread, on {speed['machine']}.", ""]
    lines += _table(["batch", "latency p50 (ms)", "latency p90 (ms)", "throughput (samples/s)"],
                    [["1", f"{speed['latency_ms_p50']:.3f}", f"{speed['latency_ms_p90']:.3f}",
                      f"{1e3 / speed['latency_ms_p50']:,.0f}"],
                     [str(speed["batch"]), "", "",
                      f"{speed['throughput_samples_per_second']:,.0f}"]])
    lines += ["", f"Batch 1: median over {speed['runs']} runs after 5 warm-up runs.", ""]

    report_path = os.path.join(run_dir, QUANTIZATION)
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as fh:
            reports = json.load(fh)
        lines += ["## Smaller variants", ""]
        lines += _table(["file", "method", "bytes", "size ratio", "accuracy", "top-1 agreement",
                         "gate"],
                        [[f"`{f}`", r.get("method"), f"{r['size']['after_bytes']:,}",
                          f"{r['size']['ratio']:.3f}",
                          f"{_fmt(r.get('accuracy_before'))} → {_fmt(r.get('accuracy_after'))}"
                          if "accuracy_before" in r else "n/a",
                          _fmt(r.get("top1_agreement")),
                          "passed" if r.get("passed") else "rejected"]
                         for f, r in reports.items()])
        lines.append("")

    first = session.get_inputs()[0]
    sample_dims = ", ".join(["N", *(str(d) if isinstance(d, int) else "L"
                                    for d in first.shape[1:])])
    lines += ["## How to run", "", "With nnspec (needs only numpy and onnxruntime):", "",
              "```bash",
              f"nnspec predict {model_file} --input samples.npy   # samples: ({sample_dims})"
              + (" or .npz with one array per input" if len(session.get_inputs()) > 1 else ""),
              "```", "", "With onnxruntime alone:", "",
              *_example(spec, session, labels, model_file), ""]
    if os.path.isfile(bundle):
        lines += [f"Check a deployment against the golden bundle `{BUNDLE}` (held-out inputs "
                  "`input:NAME`, expected outputs `output:NAME`):", "",
                  "```python",
                  f'bundle = np.load("{BUNDLE}")',
                  'feeds = {k[6:]: bundle[k] for k in bundle.files if k.startswith("input:")}',
                  "for out, value in zip(session.get_outputs(), session.run(None, feeds)):",
                  '    np.testing.assert_allclose(value, bundle["output:" + out.name], '
                  "atol=1e-5)",
                  "```", ""]
    path = os.path.join(run_dir, CARD)
    write_text(path, "\n".join(lines))
    return path

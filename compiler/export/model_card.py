"""`MODEL_CARD.md`, what ships beside a model: what the model is, how well it does, how fast
it runs and how to run it. The golden bundle, `SHA256SUMS` and the speed measurement it reports
live in `nnspec.compiler.export.bundle`.

A pure function of a run directory and values `train_run` already holds; numpy, onnx and
onnxruntime only (no JAX). One function per section of the card, each returning its lines;
the card is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnspec._io import write_text
from nnspec.compiler.export.bundle import (
    _NP_TYPES,
    BUNDLE,
    MANIFEST,
    MODEL,
    QUANTIZATION,
    _session,
    measure_speed,
    read_reference_bundle,
    sha256_file,
)

CARD = "MODEL_CARD.md"


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


def _header(name: str, spec: Mapping[str, Any], meta: Mapping[str, str], model: Any,
            summary_rows: Sequence[Any] | None) -> list[str]:
    lines = [f"# Model card: {name}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default="?")
    lines += [f"Trained and exported by nnspec {meta.get('nnspec_version', '?')} "
              f"(JAX {meta.get('jax_version', '?')}, Python {meta.get('python', '?')}); "
              f"ONNX opset {opset}, "
              f"{_count(summary_rows) if summary_rows else _parameters(model):,} parameters. "
              f"Spec sha256 "
              f"`{meta.get('spec_sha256', '?')}`.", ""]
    return lines


def _files(model_path: str, model_file: str, bundle: str) -> list[str]:
    lines = ["## Files", ""]
    rows = [[f"`{model_file}`", f"{os.path.getsize(model_path):,}",
             f"`{sha256_file(model_path)}`"]]
    if os.path.isfile(bundle):
        rows.append([f"`{BUNDLE}`", f"{os.path.getsize(bundle):,}",
                     f"`{sha256_file(bundle)}`"])
    lines += _table(["file", "bytes", "sha256"], rows)
    lines += ["", f"`{MANIFEST}` lists the checksums: `sha256sum -c {MANIFEST}`.", ""]
    return lines


def _inputs(spec: Mapping[str, Any], session: Any) -> list[str]:
    lines = ["## Inputs", ""]
    spec_inputs = spec.get("inputs") or {}
    rows = []
    for arg in session.get_inputs():
        dtype = (spec_inputs.get(arg.name) or {}).get("dtype") or _dtype(arg.type)
        rows.append([f"`{arg.name}`", _shape(arg.shape), dtype])
    lines += _table(["input", "shape", "dtype"], rows)
    lines += ["", "Preprocessing:", "", *_preprocessing(spec), ""]
    return lines


def _outputs(spec: Mapping[str, Any], session: Any, labels: Mapping[str, list[str]]
             ) -> list[str]:
    lines = ["## Outputs", ""]
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
    return lines


def _layers(summary_rows: Sequence[Any] | None) -> list[str]:
    if not summary_rows:
        return []
    lines = ["## Layers", ""]
    lines += _table(["layer", "type", "output shape", "parameters"],
                    [[f"`{r.name}`", r.type, _shape((None, *r.shape)), f"{r.params:,}"]
                     for r in summary_rows])
    lines.append("")
    return lines


def _metrics(metrics: Mapping[str, Any]) -> list[str]:
    lines = ["## Metrics", ""]
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
    return lines


def _cross_check(parity: Mapping[str, Any]) -> list[str]:
    verdict = "PASSED" if parity.get("passed") else "FAILED"
    lines = ["## Export cross-check", "",
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
    return lines


def _speed(speed: Mapping[str, Any]) -> list[str]:
    lines = ["## Speed", "",
             f"{speed['runtime']}, {speed['threads']} thread, on {speed['machine']}.", ""]
    lines += _table(["batch", "latency p50 (ms)", "latency p90 (ms)", "throughput (samples/s)"],
                    [["1", f"{speed['latency_ms_p50']:.3f}", f"{speed['latency_ms_p90']:.3f}",
                      f"{1e3 / speed['latency_ms_p50']:,.0f}"],
                     [str(speed["batch"]), "", "",
                      f"{speed['throughput_samples_per_second']:,.0f}"]])
    lines += ["", f"Batch 1: median over {speed['runs']} runs after 5 warm-up runs.", ""]
    return lines


def _smaller_variants(run_dir: str) -> list[str]:
    """The quantized copies `quantization.json` reports, if the run has one."""
    report_path = os.path.join(run_dir, QUANTIZATION)
    if not os.path.isfile(report_path):
        return []
    with open(report_path, encoding="utf-8") as fh:
        reports = json.load(fh)
    lines = ["## Smaller variants", ""]
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
    return lines


def _how_to_run(spec: Mapping[str, Any], session: Any, labels: Mapping[str, list[str]],
                model_file: str, bundle: str) -> list[str]:
    first = session.get_inputs()[0]
    sample_dims = ", ".join(["N", *(str(d) if isinstance(d, int) else "L"
                                    for d in first.shape[1:])])
    lines = ["## How to run", "", "With nnspec (needs only numpy and onnxruntime):", "",
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

    lines = [*_header(name, spec, meta, model, summary_rows),
             *_files(model_path, model_file, bundle),
             *_inputs(spec, session),
             *_outputs(spec, session, labels),
             *_layers(summary_rows),
             *_metrics(metrics),
             *_cross_check(parity),
             *_speed(speed),
             *_smaller_variants(run_dir),
             *_how_to_run(spec, session, labels, model_file, bundle)]
    path = os.path.join(run_dir, CARD)
    write_text(path, "\n".join(lines))
    return path

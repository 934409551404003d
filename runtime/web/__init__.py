"""`nnspec web RUN_DIR|MODEL --out DIR`: a static page that runs the model in the browser.

DIR gets index.html, app.mjs (the page's module), the model, nnspec.json (what the page needs
to know of the model, read from its metadata_props: inputs with shape, dtype and pixel range,
outputs with labels) and onnxruntime-web's files, from npm at the version that
package.json/package-lock.json here pin (`npm ci` into a cache folder, once). Nothing is
loaded from elsewhere: serve DIR with any static server (`python -m http.server -d DIR`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from nnspec.runtime.model import Model, TensorInfo, UsageError

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "app.mjs")
# The default build: WebGPU (JSEP) and wasm in one; the page picks webgpu where it works.
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs",
             "ort-wasm-simd-threaded.jsep.wasm")
_SHAPE_ONLY = ("flatten", "reshape", "permute", "transpose")
CANVAS_MAX = 64  # the largest grayscale image side drawn on a canvas


def cache_dir() -> Path:
    """Where `npm ci` installs onnxruntime-web: $NNSPEC_CACHE, else $XDG_CACHE_HOME/nnspec,
    else ~/.cache/nnspec."""
    root = os.environ.get("NNSPEC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nnspec")
    return Path(root)


def ensure_onnxruntime_web() -> Path:
    """onnxruntime-web's dist/ folder, installed with `npm ci` from the pinned lockfile into
    the cache when absent. Raises UsageError when npm is missing or fails."""
    lock = (HERE / "package-lock.json").read_bytes()
    target = cache_dir() / "onnxruntime-web" / hashlib.sha256(lock).hexdigest()[:16]
    dist = target / "node_modules" / "onnxruntime-web" / "dist"
    if all((dist / f).is_file() for f in ORT_FILES):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError("`nnspec web` bundles onnxruntime-web from npm, and npm is not on PATH; "
                         "install Node.js and npm (Debian: apt-get install npm) and run again")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".npm-", dir=target.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, work / name)
        # --ignore-scripts: the page needs the package's files, never its install hooks.
        result = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                                 "--loglevel=error"], cwd=work, capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            tail = " ".join((result.stderr or result.stdout).split())[-400:]
            raise UsageError(f"`npm ci` of onnxruntime-web failed in {work} (exit "
                             f"{result.returncode}): {tail}")
        if target.exists():  # another run finished first
            shutil.rmtree(work)
        else:
            os.replace(work, target)
    finally:
        if work.exists() and work != target:
            shutil.rmtree(work, ignore_errors=True)
    missing = [f for f in ORT_FILES if not (dist / f).is_file()]
    if missing:
        raise UsageError(f"onnxruntime-web in {target} lacks {missing}")
    return dist


def pixel_range(name: str, dtype: str, resolved: dict[str, Any]) -> list[float]:
    """The values an image input takes: undone from the first rescale layer the input meets
    (through shape-only layers), e.g. [0, 16] for `rescale: 0.0625` (the digits); else
    [0, 255] for integers and [0, 1] for floats."""
    source = name
    for layer in resolved.get("layers", []):
        if source not in (layer.get("inputs") or []):
            continue
        if layer.get("type") == "rescale" and layer.get("scale"):
            scale, offset = float(layer["scale"]), float(layer.get("offset") or 0.0)
            low_out = -1.0 if offset < 0 else 0.0  # rescales map pixels to [0, 1] or [-1, 1]
            lo, hi = sorted(((low_out - offset) / scale, (1.0 - offset) / scale))
            return [round(lo, 6), round(hi, 6)]
        if layer.get("type") not in _SHAPE_ONLY:
            break
        source = layer.get("name")
    return [0.0, 255.0] if "int" in dtype else [0.0, 1.0]


def _input_config(info: TensorInfo, resolved: dict[str, Any]) -> dict[str, Any]:
    shape = list(info.shape)
    doc: dict[str, Any] = {"name": info.name, "shape": shape, "dtype": info.dtype.name}
    if None not in shape and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
        height, width = shape[0], shape[1]
        channels = 1 if len(shape) == 2 else shape[2]
        doc.update(height=height, width=width, channels=channels,
                   range=pixel_range(info.name, info.dtype.name, resolved))
        small = channels == 1 and max(height, width) <= CANVAS_MAX
        doc["widget"] = "canvas" if small else "image"
    elif None not in shape and math.prod(shape) <= 64:
        doc["widget"] = "form"
    else:
        doc["widget"] = "json"  # free dimensions or many values: nested lists in a text box
    return doc


def page_config(model: Model, model_file: str) -> dict[str, Any]:
    """What the page reads from nnspec.json: the model's metadata in the page's terms."""
    meta = model.metadata
    resolved = json.loads(meta.get("resolved_spec") or "{}")
    labels = model.labels
    return {
        "model": model_file,
        "name": meta.get("spec_name") or Path(model.path).stem,
        "description": resolved.get("description") or "",
        "spec_sha256": meta.get("spec_sha256"),
        "inputs": [_input_config(i, resolved) for i in model.inputs],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype.name,
                     "labels": labels.get(o.name)} for o in model.outputs],
    }


def build_page(model_arg: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the page for the model (a file or a run directory) into `out`, whole or not at
    all; returns `out`. A previous page there is replaced; any other non-empty folder is
    refused."""
    from nnspec.runtime.safety import external_tensors

    model = Model(model_arg)
    if external_tensors(model.path):
        raise UsageError(f"{model.path} keeps tensors in external data files; the page loads "
                         "one file: export the model without external data")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and
                                              not (out / "nnspec.json").is_file())):
        raise UsageError(f"--out {str(out)!r} exists and is not a page `nnspec web` wrote; "
                         "give a new or empty folder")
    dist = ensure_onnxruntime_web()
    config = page_config(model, "model.onnx")
    version_file = dist.parent / "package.json"
    config["onnxruntime_web"] = json.loads(version_file.read_text())["version"]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copyfile(model.path, work / "model.onnx")
        for name in ORT_FILES:
            shutil.copyfile(dist / name, work / name)
        for name in PAGE_FILES:
            shutil.copyfile(HERE / name, work / name)
        (work / "nnspec.json").write_text(json.dumps(config, indent=2) + "\n")
        os.chmod(work, 0o755)  # mkdtemp's 0700 would hide the page from a web server's user
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out


def add_parser(verbs: Any, overrides: dict | None = None) -> None:
    """Add the `web` verb to an argparse subparsers object."""
    p = verbs.add_parser(
        "web", help="write a static web page that runs the model in the browser",
        description="Write a static page (index.html, a JS module, the model and "
        "onnxruntime-web, no CDN) that runs the model in the browser: a drawing canvas for "
        "small grayscale images, a file picker for images, a form for tabular inputs; it shows "
        "the top classes, the latency and the execution provider (wasm, or webgpu). Needs npm "
        "once, to fetch the pinned onnxruntime-web into a cache.")
    p.add_argument("model", metavar="RUN_DIR|MODEL",
                   help="a run directory holding model.onnx, or an .onnx file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the page into")
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    """Run `web`."""
    out = build_page(args.model, args.out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}/index.html ({len(list(out.iterdir()))} files, {size / 2**20:.1f} MB); "
          f"serve it with: python -m http.server -d {out} 8080, then open "
          "http://127.0.0.1:8080/")
    return 0

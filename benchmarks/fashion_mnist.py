"""Accuracy on real data: nnspec trains the MLP and the two-convolution CNN on Fashion-MNIST
through the real CLI (`nnspec train SPEC --out DIR`) and is checked against published figures.

- MLP: examples/mnist_mlp.yaml with `--set data.source=fashion_mnist` (784-128-64-10, Adam,
  batch 128, 5 epochs). Published: 0.883 (MLP 256-128-100, Fashion-MNIST README); target
  test accuracy >= 0.87.
- CNN: benchmarks/fashion_cnn.yaml (conv 32 3x3, pool 2, conv 64 3x3, pool 2, dense 128,
  dropout 0.5, softmax; Adam; batch 128; 15 epochs). Published: 0.916 ("2 Conv + pooling");
  target >= 0.91.

Each run's exit code, wall time, test accuracy (metrics.json), training throughput and time per
epoch (history.json) and the ONNX cross-check (parity.json) are reported; the script exits 1 when
a run fails, its export fails the cross-check or its accuracy misses the target.

The data come from Debian's package `dataset-fashion-mnist`; when it is missing and this runs
as root with apt-get available, the script installs it (`--no-install` to refuse).

`--quick` trains one epoch on 600 synthetic 28x28 images instead (an .npz written to the output
folder), checks only that every file is produced, and skips the accuracy targets: the smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import BENCHMARKS, EXAMPLES, ROOT, machine, table, tuned_env, write_json

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"spec": EXAMPLES / "mnist_mlp.yaml", "set": ["data.source=fashion_mnist"],
            "target": 0.87, "published": 0.883,
            "published_model": "MLP 256-128-100 (Fashion-MNIST README)"},
    "cnn": {"spec": BENCHMARKS / "fashion_cnn.yaml", "set": [],
            "target": 0.91, "published": 0.916,
            "published_model": "2 Conv + pooling (Fashion-MNIST README)"},
}


def nnspec_command() -> list[str]:
    """`nnspec` as installed beside this interpreter (a user's command), else `python -m`."""
    script = Path(sys.executable).parent / "nnspec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nnspec"]


def ensure_dataset(install: bool) -> str:
    """'present', 'installed', or raise SystemExit with what to do."""
    if all((DEBIAN_DIR / f).exists() for f in DEBIAN_FILES):
        return "present"
    apt = shutil.which("apt-get")
    if not install or apt is None or os.geteuid() != 0:
        raise SystemExit(f"Fashion-MNIST is not installed in {DEBIAN_DIR}: run "
                         "`apt-get update && apt-get install -y dataset-fashion-mnist` as root")
    print("installing dataset-fashion-mnist with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=True, env=env)
    subprocess.run([apt, "install", "-y", "-qq", "dataset-fashion-mnist"], check=True, env=env)
    if not all((DEBIAN_DIR / f).exists() for f in DEBIAN_FILES):
        raise SystemExit(f"dataset-fashion-mnist installed, but {DEBIAN_DIR} lacks its files")
    return "installed"


def synthetic_npz(folder: Path, n: int = 600) -> Path:
    """Random 28x28 uint8 images and labels 0..9 (for --quick: shapes, not accuracy)."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = folder / "synthetic_28x28.npz"
    np.savez(path, x=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
             y=rng.integers(0, 10, n).astype(np.int64))
    return path


def _read(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def run_model(name: str, model: dict[str, Any], out: Path, extra_sets: list[str],
              env: dict[str, str]) -> dict[str, Any]:
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sets = [*model["set"], *extra_sets]
    cmd = [*nnspec_command(), "train", str(model["spec"]), "--out", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    log_path = out / f"{name}.log"
    print(f"[{name}] {' '.join(cmd)}  (log: {log_path})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                              cwd=ROOT)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"model": name, "spec": str(model["spec"].relative_to(ROOT)),
                              "set": sets, "command": cmd, "exit_code": proc.returncode,
                              "wall_seconds": round(wall, 2), "log": str(log_path)}
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        record["error"] = "\n".join(tail)
        return record
    metrics = _read(run_dir / "metrics.json")
    parity = _read(run_dir / "parity.json")
    history = _read(run_dir / "history.json")
    training = metrics["training"]
    seconds = [row["seconds"] for row in history]
    record.update({
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "test_loss": metrics.get("test", {}).get("loss"),
        "validation_accuracy": metrics.get("validation", {}).get("accuracy"),
        "train_accuracy": metrics.get("train", {}).get("accuracy"),
        "epochs": training["epochs"],
        "samples_per_second": round(training["samples_per_second"], 1),
        "train_seconds": round(training["train_seconds"], 2),
        "compile_seconds": round(training["compile_seconds"], 2),
        "seconds_per_epoch": [round(s, 2) for s in seconds],
        "parity_passed": parity["passed"],
        "parity_max_abs_diff": parity["max_abs_diff"],
        "onnx_written": (run_dir / "model.onnx").exists(),
    })
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-fashion"),
                        help="folder for the run directories and logs")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch on synthetic data, no accuracy targets (smoke test)")
    parser.add_argument("--mlp-epochs", type=int, help="override the MLP's epochs (5)")
    parser.add_argument("--cnn-epochs", type=int, help="override the CNN's epochs (15)")
    parser.add_argument("--no-install", action="store_true",
                        help="never apt-get install the data set")
    parser.add_argument("--tuned-env", action="store_true",
                        help="run the CLI with perf-cpu.md's allocator and XLA settings")
    args = parser.parse_args(argv)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = tuned_env() if args.tuned_env else dict(os.environ)

    common: list[str] = []
    if args.quick:
        data = synthetic_npz(out)
        common = ["data.source=npz", f"data.path={data}", "train.epochs=1",
                  "export.parity.samples=32"]
        dataset = "synthetic (quick)"
    else:
        dataset = ensure_dataset(not args.no_install)

    results = []
    for name in names:
        sets = list(common)
        epochs = {"mlp": args.mlp_epochs, "cnn": args.cnn_epochs}[name]
        if epochs and not args.quick:
            sets.append(f"train.epochs={epochs}")
        record = run_model(name, MODELS[name], out, sets, env)
        model = MODELS[name]
        record.update({"target": model["target"], "published": model["published"],
                       "published_model": model["published_model"]})
        acc = record.get("test_accuracy")
        ok = record["exit_code"] == 0 and bool(record.get("parity_passed")) and bool(
            record.get("onnx_written"))
        if not args.quick:
            ok = ok and acc is not None and acc >= model["target"]
        record["passed"] = ok
        results.append(record)
        print(f"[{name}] exit {record['exit_code']}, test accuracy {acc}, "
              f"{record['wall_seconds']} s", file=sys.stderr, flush=True)

    rows = []
    for r in results:
        per_epoch = r.get("seconds_per_epoch") or []
        rows.append([
            r["model"], r.get("epochs", "-"),
            f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "-",
            "-" if args.quick else f">= {r['target']}", r["published"],
            r.get("samples_per_second", "-"),
            f"{sum(per_epoch) / len(per_epoch):.1f}" if per_epoch else "-",
            r["wall_seconds"], r.get("parity_passed", "-"),
            "ok" if r["passed"] else "FAIL"])
    print(table(["model", "epochs", "test acc", "target", "published", "train samples/s",
                 "s/epoch", "wall s", "parity", "verdict"], rows))
    for r in results:
        if "error" in r:
            print(f"{r['model']} failed (exit {r['exit_code']}):\n{r['error']}", file=sys.stderr)
    write_json(args.json, {"benchmark": "fashion_mnist", "quick": args.quick,
                           "dataset": dataset, "tuned_env": args.tuned_env,
                           "machine": machine(), "results": results,
                           "passed": all(r["passed"] for r in results)})
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

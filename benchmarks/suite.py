"""The side-by-side benchmark suite: nnspec against what a user would pick instead.

    python benchmarks/suite.py [--quick] [--sections train,infer,accuracy] [--rounds 5]

Writes benchmarks/RESULTS.md (tables, with the command, date, machine and versions),
benchmarks/results/suite.json and PNG plots in benchmarks/results/. Every contender runs in
its own process (`_suite_train.py`, `_suite_infer.py`) under one environment: the glibc
allocator setting and XLA flags that `nnspec train` gives itself (cli/_cpu.py), and
KERAS_BACKEND=jax. PyTorch is also run once more per round at its defaults (no allocator
setting). Rounds interleave the contenders, rotating who goes first; medians and ranges over
rounds are reported, and each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCHMARKS, machine, median, write_json  # noqa: E402
from _suite_models import MODELS, train_flops  # noqa: E402
from _suite_report import write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN = ("nnspec", "flax_step", "flax_fused", "keras", "torch", "torch_default")
ACCURACY = ("nnspec", "keras", "torch")


def environment(defaults: bool = False) -> dict[str, str]:
    """The contenders' environment: nnspec's own CPU settings, unless `defaults` (PyTorch at
    its defaults: the allocator setting removed)."""
    from nnspec import _cpu  # the very values nnspec applies to itself

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    env["KERAS_BACKEND"] = "jax"
    env["PYTHONWARNINGS"] = "ignore"
    if not defaults:
        env["GLIBC_TUNABLES"] = _cpu.MALLOC_TUNABLES
        flags = _cpu.xla_flags(os.environ.get("XLA_FLAGS", ""))
        env["XLA_FLAGS"] = flags if flags is not None else os.environ.get("XLA_FLAGS", "")
    return env


def worker(script: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([sys.executable, str(HERE / script), *args, "--json", str(out)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode or not out.exists():
            return {"error": (proc.stderr or proc.stdout)[-1500:]}
        return json.loads(out.read_text())


def peak_flops(env: dict[str, str], size: int) -> float:
    """fp32 FLOP/s of a large jitted matmul (best of 5), in a process with the same env."""
    code = f"""
import time, jax, jax.numpy as jnp
n = {size}
a = jnp.ones((n, n), jnp.float32); b = jnp.ones((n, n), jnp.float32)
f = jax.jit(lambda a, b: a @ b); f(a, b).block_until_ready()
best = min((lambda t: (f(a, b).block_until_ready(), time.perf_counter() - t)[1])(
    time.perf_counter()) for _ in range(5))
print(2 * n ** 3 / best)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def per_model(value: str, models: list[str]) -> dict[str, int]:
    """`N` for every model, or `MODEL=N,...` (models not named keep 4,096)."""
    if "=" not in value:
        return {m: int(value) for m in models}
    given = {k.strip(): int(v) for k, v in (p.split("=") for p in value.split(",") if p)}
    return {m: given.get(m, 4096) for m in models}


def run_train(models: list[str], rounds: int, samples: dict[str, int], epochs: int,
              keep: Path, timeout: float) -> dict[str, Any]:
    env, plain = environment(), environment(defaults=True)
    out: dict[str, Any] = {}
    for model in models:
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in TRAIN}
        for r in range(rounds):
            order = TRAIN[r % len(TRAIN):] + TRAIN[: r % len(TRAIN)]
            for c in order:
                args = [c.replace("_default", ""), model, "--n", str(samples[model]), "--epochs",
                        str(epochs)]
                if c == "nnspec" and r == 0:  # its export, for the inference section
                    args += ["--keep", str(keep / model)]
                got = worker("_suite_train.py", args, plain if c == "torch_default" else env,
                             timeout)
                runs[c].append(got)
                rate = got.get("samples_per_second")
                print(f"  train {model} round {r + 1}/{rounds} {c}: "
                      + (f"{rate:,.0f} samples/s" if rate else f"ERROR {got['error'][-300:]}"),
                      file=sys.stderr, flush=True)
        out[model] = {"runs": runs, "summary": summarize(runs, rounds)}
    return out


def summarize(runs: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    rates = {c: [r.get("samples_per_second") for r in v] for c, v in runs.items()}
    summary: dict[str, Any] = {}
    for c, values in rates.items():
        ok = [v for v in values if v]
        firsts = [r["first_step_s"] for r in runs[c] if r.get("first_step_s") is not None]
        summary[c] = {"median": median(ok), "min": min(ok, default=float("nan")),
                      "max": max(ok, default=float("nan")), "first_step_s": median(firsts),
                      "route": next((r["route"] for r in runs[c] if "route" in r), None)}
        if c != "nnspec":
            pairs = [a / b for a, b in zip(rates["nnspec"], values) if a and b]
            summary[c]["nnspec_ratio"] = median(pairs)
            summary[c]["nnspec_ratio_range"] = [min(pairs, default=None),
                                                max(pairs, default=None)]
    flax = [max(a or 0, b or 0) for a, b in zip(rates["flax_step"], rates["flax_fused"])]
    pairs = [a / b for a, b in zip(rates["nnspec"], flax) if a and b]
    summary["faster_flax"] = {"nnspec_ratio": median(pairs),
                              "nnspec_ratio_range": [min(pairs, default=None),
                                                     max(pairs, default=None)]}
    return summary


def run_infer(models: list[str], keep: Path, rounds: int, repeat: int, timeout: float
              ) -> dict[str, Any]:
    env = environment()
    out = {}
    for model in models:
        onnx = keep / model / "model.onnx"
        out[model] = worker("_suite_infer.py", [model, "--onnx", str(onnx), "--rounds",
                                                str(rounds), "--repeat", str(repeat)], env,
                            timeout)
        print(f"  infer {model}: {sorted(out[model].get('onnx', {}))} "
              f"{out[model].get('errors') or out[model].get('error', '')}"[:400],
              file=sys.stderr, flush=True)
    return out


def fashion_npz(path: Path, limit: int | None) -> Path:
    import numpy as np

    from nnspec.compiler.data.mnist import load_mnist

    data = load_mnist("fashion_mnist")
    if limit:
        data = {k: v[:limit] for k, v in data.items()}
    np.savez(path, **data)
    return path


def run_accuracy(models: list[str], epochs: dict[str, int], npz: Path, timeout: float
                 ) -> dict[str, Any]:
    env = environment()
    out: dict[str, Any] = {}
    for model in models:
        out[model] = {"epochs": epochs[model]}
        for c in ACCURACY:
            got = worker("_suite_train.py", [c, model, "--data", str(npz), "--epochs",
                                             str(epochs[model])], env, timeout)
            out[model][c] = got
            print(f"  accuracy {model} {c}: {got.get('test_accuracy', got.get('error'))}",
                  file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round, tiny sizes, nothing compared")
    parser.add_argument("--sections", default="train,infer,accuracy")
    parser.add_argument("--models", default=",".join(MODELS))
    # Five rounds, not three: on a shared 2-core machine one disturbed round moves a median of
    # three; inference rounds are cheap, so they get more.
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--infer-rounds", type=int, default=9)
    # The MLP gets 16x the samples: at 4,096 its measured epochs last ~20 ms, where one
    # scheduler hiccup on a shared machine moves a run by half.
    parser.add_argument("--samples", default="mlp=65536,cnn=4096,lstm=4096",
                        help="synthetic training samples: N, or MODEL=N,... per model")
    parser.add_argument("--epochs", type=int, default=3, help="per training run, first dropped")
    parser.add_argument("--accuracy-epochs", default="mlp=5,cnn=2")
    parser.add_argument("--out", default=str(BENCHMARKS / "RESULTS.md"))
    parser.add_argument("--json", default=str(BENCHMARKS / "results" / "suite.json"))
    parser.add_argument("--plots", default=str(BENCHMARKS / "results"))
    parser.add_argument("--keep-sections", action="store_true",
                        help="keep the sections not run now from the existing --json (a "
                             "section re-run alone; the report names each section's command)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    sections = set(args.sections.split(","))
    acc_epochs = {k: int(v) for k, v in (p.split("=") for p in args.accuracy_epochs.split(","))}
    limit, repeat, peak_n = None, 200, 2048
    if args.quick:
        args.rounds, args.samples, args.epochs, repeat, peak_n = 1, "512", 2, 5, 512
        args.infer_rounds = 1
        acc_epochs, limit = {k: 1 for k in acc_epochs}, 1024
    samples = per_model(args.samples, models)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"command": " ".join(["python", "benchmarks/suite.py",
                                                   *(sys.argv[1:] if argv is None else argv)]),
                              "quick": args.quick, "machine": machine(), "rounds": args.rounds,
                              "infer_rounds": args.infer_rounds,
                              "samples": samples, "epochs": args.epochs}
    env = environment()
    result["env"] = {k: env.get(k) for k in ("GLIBC_TUNABLES", "XLA_FLAGS", "KERAS_BACKEND")}
    result["versions"] = versions()
    result["peak_flops"] = peak_flops(env, peak_n)
    result["train_flops"] = {m: train_flops(m) for m in models}
    timeout = 600 if args.quick else 1800
    if args.keep_sections and Path(args.json).exists():
        prior = json.loads(Path(args.json).read_text())
        for key in ("train", "infer", "accuracy"):
            if key in prior and key not in sections and not (key == "train" and "infer" in
                                                               sections):
                result[key] = prior[key]
                if key == "train":  # its % of peak stays against the peak of its own run
                    result["peak_flops"] = prior["peak_flops"]
                    result["train_flops"] = prior["train_flops"]
                result.setdefault("section_commands", {})[key] = prior.get(
                    "section_commands", {}).get(key, prior["command"])
    for key in ("train", "infer", "accuracy"):
        if key in sections or (key == "train" and "infer" in sections):
            result.setdefault("section_commands", {})[key] = result["command"]

    def save() -> None:  # after every section: a long run stopped late keeps what it measured
        result["suite_seconds"] = time.perf_counter() - t0
        write_json(args.json, result)
        write_report(result, Path(args.out), Path(args.plots))

    with tempfile.TemporaryDirectory(prefix="nnspec-suite-") as tmp:
        keep = Path(tmp)
        if "train" in sections or "infer" in sections:
            result["train"] = run_train(models, args.rounds, samples, args.epochs, keep,
                                        timeout)
            save()
        if "infer" in sections:
            result["infer"] = run_infer(models, keep, args.infer_rounds, repeat, timeout)
            save()
        if "accuracy" in sections:
            npz = fashion_npz(keep / "fashion.npz", limit)
            result["accuracy"] = run_accuracy([m for m in models if m in acc_epochs],
                                              acc_epochs, npz, timeout)
            save()
    print(f"wrote {args.out} ({result['suite_seconds']:.0f} s)", file=sys.stderr)
    return 0


def versions() -> dict[str, str | None]:
    from importlib import metadata

    names = ("jax", "jaxlib", "flax", "optax", "keras", "torch", "onnx", "onnxruntime",
             "jax2onnx", "numpy")
    got = {}
    for n in names:
        try:
            got[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            got[n] = None
    return got


if __name__ == "__main__":
    sys.exit(main())

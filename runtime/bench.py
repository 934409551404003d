"""`nnspec bench MODEL` (and `nnspec-runtime bench`): latency and throughput of an exported
model in onnxruntime, and of the same model in JAX when its run directory is beside it and the
full nnspec package is installed.

Latency is timed at batch 1 (p50/p90/p99 over `--runs` calls after `--warmup`), throughput at
`--batch` (samples per second). Each measurement stops early after `--max-seconds`, so the
default run takes a few seconds. Only the runtime call is timed: inputs are random arrays
already of the model's shapes and dtypes (and, for JAX, already on the device). The JAX
comparison is the full package's (`nnspec.commands.bench` passes it in as `jax_bench`): this
module never imports JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from nnspec.runtime.check import importable, print_table, version


def add_parser(verbs: Any, overrides: dict | None = None,
               jax_bench: Callable[[argparse.Namespace, Any], dict[str, Any]] | None = None
               ) -> None:
    """Add the `bench` verb; `jax_bench(args, model)` times the JAX side when given."""
    p = verbs.add_parser(
        "bench", help="latency and throughput in onnxruntime (and JAX, beside a run)",
        description="Time an exported model in onnxruntime: latency p50/p90/p99 at batch 1 and "
        "throughput at --batch; against the same model in JAX when the run directory "
        "(weights.msgpack, resolved_spec.yaml) is beside the model and JAX is installed.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file, or a run directory")
    p.add_argument("--batch", type=int, default=32, help="batch of the throughput runs (32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--runs", type=int, default=200, help="timed runs per measurement (200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first (20)")
    p.add_argument("--max-seconds", type=float, default=2.0,
                   help="stop a measurement's runs after this long (2.0)")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX comparison")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--json", action="store_true", help="print a JSON report instead")
    p.set_defaults(func=lambda args: cmd_bench(args, jax_bench))


def measure(call: Callable[[], Any], runs: int, warmup: int, max_seconds: float
            ) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then up to `runs` timed ones, each phase
    stopping once it has taken `max_seconds`."""
    start = time.perf_counter()
    for _ in range(warmup):
        call()
        if time.perf_counter() - start > max_seconds:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return times


def summarize(latency: list[float], throughput: list[float], batch: int) -> dict[str, Any]:
    import numpy as np

    ms = np.asarray(latency) * 1e3
    return {
        "latency_ms": {"batch": 1, "runs": len(ms), "p50": float(np.percentile(ms, 50)),
                       "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
                       "mean": float(ms.mean())},
        "throughput": {"batch": batch, "runs": len(throughput),
                       "samples_per_second": batch * len(throughput) / sum(throughput)},
    }


def _bench_onnxruntime(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from nnspec.runtime.inputs import random_inputs
    from nnspec.runtime.model import Model

    model = Model(args.model, threads=args.threads)
    one = random_inputs(model, 1, args.seed)
    many = random_inputs(model, args.batch, args.seed)
    session = model.session
    latency = measure(lambda: session.run(None, one), args.runs, args.warmup, args.max_seconds)
    throughput = measure(lambda: session.run(None, many), args.runs, args.warmup,
                         args.max_seconds)
    result = summarize(latency, throughput, args.batch)
    result["version"] = version(("onnxruntime", "onnxruntime-gpu"))
    result["threads"] = session.get_session_options().intra_op_num_threads or None
    return result, model


def _jax_skipped(args: argparse.Namespace, model: Any, jax_bench: Any) -> str | None:
    """Why the JAX comparison cannot run, or None when it can."""
    run_dir = os.path.dirname(os.path.abspath(args.model))
    if args.no_jax:
        return "--no-jax"
    missing = [f for f in ("weights.msgpack", "resolved_spec.yaml")
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        return f"no run directory beside the model (no {', '.join(missing)})"
    if not (importable("jax") and importable("flax")):
        return "JAX/Flax not installed"
    if jax_bench is None:
        return "nnspec-runtime has no JAX side (the full nnspec package's `nnspec bench` has)"
    spec = os.path.join(run_dir, "spec.yaml")
    want = model.metadata.get("spec_sha256")
    if want and os.path.isfile(spec):
        import hashlib

        with open(spec, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != want:
                return "the run directory's spec.yaml is not the model's (spec_sha256 differs)"
    return None


def cmd_bench(args: argparse.Namespace,
              jax_bench: Callable[[argparse.Namespace, Any], dict[str, Any]] | None = None
              ) -> int:
    """Run `bench`: the onnxruntime figures, and `jax_bench`'s beside a run directory."""
    from nnspec.runtime.model import UsageError, model_path

    for flag, value in (("--batch", args.batch), ("--runs", args.runs)):
        if value < 1:
            raise UsageError(f"{flag}: expected a positive count, got {value}")
    if args.warmup < 0 or args.max_seconds <= 0 or (args.threads is not None and
                                                     args.threads < 1):
        raise UsageError("--warmup must be >= 0, --max-seconds > 0 and --threads >= 1")
    args.model = model_path(args.model)  # the JAX side looks beside the resolved file
    ort, model = _bench_onnxruntime(args)
    doc: dict[str, Any] = {"model": args.model, "size_bytes": os.path.getsize(args.model),
                           "batch": args.batch, "threads": args.threads, "runs": args.runs,
                           "warmup": args.warmup, "onnxruntime": ort}
    skipped = _jax_skipped(args, model, jax_bench)
    if skipped:
        doc["jax"] = {"skipped": skipped}
    else:
        try:
            doc["jax"] = jax_bench(args, model)
        except Exception as err:  # noqa: BLE001 - the onnxruntime numbers stand on their own
            doc["jax"] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_report(doc)
    return 0


def _print_report(doc: dict[str, Any]) -> None:
    size = doc["size_bytes"]
    print(f"model: {doc['model']} ({size} bytes, {size / 1024:.1f} KB)")
    systems = [("onnxruntime", doc["onnxruntime"])]
    jax = doc["jax"]
    if "latency_ms" in jax:
        systems.append(("jax", jax))
    header = ["", *(f"{n} {s['version'] or ''}".strip() for n, s in systems)]
    rows = [[f"latency {p} (batch 1), ms", *(f"{s['latency_ms'][p]:.4g}" for _, s in systems)]
            for p in ("p50", "p90", "p99")]
    rows.append([f"throughput (batch {doc['batch']}), samples/s",
                 *(f"{s['throughput']['samples_per_second']:,.0f}" for _, s in systems)])
    rows.append(["timed runs (latency / throughput)",
                 *(f"{s['latency_ms']['runs']} / {s['throughput']['runs']}" for _, s in systems)])
    threads = doc["onnxruntime"]["threads"]
    print_table(f"onnxruntime intra-op threads: {threads or 'default'}", header, rows)
    if "compile_seconds" in jax:
        print(f"jax: backend {jax['backend']}, compiled in {jax['compile_seconds']:.2f} s "
              "(XLA's own threads)")
    elif "skipped" in jax:
        print(f"jax: skipped ({jax['skipped']})")
    else:
        print(f"jax: failed: {jax['error']}")

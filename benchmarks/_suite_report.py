"""RESULTS.md and the PNG plots from suite.py's results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _common import table
from _suite_models import TITLES

LABELS = {"nnspec": "nnspec train", "flax_step": "Flax+Optax step", "flax_fused":
          "Flax+Optax fused epoch", "keras": "Keras 3 (JAX) fit", "torch":
          "PyTorch eager, same allocator", "torch_default": "PyTorch eager, defaults"}


def _samples(value: Any) -> str:
    """The training set size: one number (older results) or one per model."""
    if isinstance(value, dict):
        return ", ".join(f"{n:,} ({m})" for m, n in value.items())
    return f"{value:,}"


def _n(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def train_section(r: dict[str, Any]) -> list[str]:
    peak = r["peak_flops"]
    lines = ["## Training throughput", "",
             f"samples/s, batch 128, Adam 1e-3, {_samples(r['samples'])} synthetic "
             "MNIST-shaped samples, "
             f"{r['epochs']} epochs per run (the first dropped: compilation and warm-up), "
             f"{r['rounds']} interleaved rounds, one process per run. Median (min-max); "
             f"ratio = nnspec / contender, the median of per-round ratios. % peak = samples/s x "
             f"training FLOPs per sample (3x forward) / the measured fp32 matmul peak "
             f"({peak / 1e9:,.1f} GFLOP/s). First step: seconds from the start of training to "
             f"the end of the first step (compilation included; nnspec: its compile_seconds).",
             ""]
    for model, got in r["train"].items():
        s, flops = got["summary"], r["train_flops"][model]
        rows = []
        for c, label in LABELS.items():
            e = s[c]
            ratio = e.get("nnspec_ratio")
            rng = e.get("nnspec_ratio_range") or [None, None]
            rows.append([label + (f" ({e['route']})" if e.get("route") else ""),
                         f"{_n(e['median'])} ({_n(e['min'])}-{_n(e['max'])})",
                         _n(100 * e["median"] * flops / peak, 1) if e["median"] == e["median"]
                         else "-", _n(e["first_step_s"], 2),
                         "-" if ratio is None else
                         f"**{ratio:.2f}** ({_n(rng[0], 2)}-{_n(rng[1], 2)})"])
        f = s["faster_flax"]
        rows.append(["faster hand-written Flax loop (per round)", "", "", "",
                     f"**{_n(f['nnspec_ratio'], 2)}** ({_n(f['nnspec_ratio_range'][0], 2)}-"
                     f"{_n(f['nnspec_ratio_range'][1], 2)})"])
        lines += [f"### {TITLES[model]}", "", table(["contender", "samples/s", "% peak",
                                                     "first step s", "nnspec / it"], rows), ""]
    return lines


def _ratio(ours: list[float], theirs: list[float], faster: str) -> str:
    """The median (min-max) of per-round ratios, > 1 where nnspec's file is faster: latency
    as theirs / ours, throughput as ours / theirs."""
    pairs = [(b / a if faster == "lower" else a / b) for a, b in zip(ours, theirs) if a and b]
    if not pairs:
        return "-"
    return f"**{_med(pairs):.2f}** ({min(pairs):.2f}-{max(pairs):.2f})"


def infer_section(r: dict[str, Any]) -> list[str]:
    rounds = r.get("infer_rounds", r["rounds"])
    lines = ["## Inference", "", "onnxruntime (CPU provider, default options) on each ONNX "
             "file of the same network, all taking uint8 samples and returning the softmax; "
             "then the frameworks themselves (a jitted Flax apply; PyTorch eager under no_grad). "
             "Latency: median of repeated batch-1 calls; throughput: batch 1024. Median over "
             f"{rounds} rounds; files interleaved in each round, in one process. nnspec / it: "
             "the median (min-max) of per-round ratios, above 1 where nnspec's file is faster. "
             "`nnspec, again` is the same file in a second session: its ratio is the noise "
             "floor of this machine for \"as fast as\" in this run.", ""]
    for model, got in r["infer"].items():
        if "error" in got:
            lines += [f"### {TITLES[model]}", "", f"failed: `{got['error'][-300:]}`", ""]
            continue
        rows = []
        ours = got["onnx"].get("nnspec", {})
        for name, e in got["onnx"].items():
            ops = ", ".join(f"{k} {v}" for k, v in e["ops"].items())
            vs = name != "nnspec" and ours
            rows.append([f"onnxruntime: {name}", e["nodes"], _n(_med(e["latency_ms"]), 3),
                         _n(_med(e["per_s"])),
                         _ratio(ours["latency_ms"], e["latency_ms"], "lower") if vs else "-",
                         _ratio(ours["per_s"], e["per_s"], "higher") if vs else "-", ops])
        for name, e in got["native"].items():
            rows.append([name, "-", _n(_med(e["latency_ms"]), 3), _n(_med(e["per_s"])), "-",
                         "-", ""])
        for name, err in got.get("errors", {}).items():
            rows.append([name, "-", "-", "-", "-", "-",
                         f"failed: {err.splitlines()[0][:160]}"])
        lines += [f"### {TITLES[model]}", "", table(
            ["runs", "nodes", "batch 1 ms", "batch 1024 samples/s", "nnspec / it, batch 1",
             "nnspec / it, batch 1024", "operators"], rows), ""]
    return lines


def accuracy_section(r: dict[str, Any]) -> list[str]:
    lines = ["## Accuracy at equal budget (Fashion-MNIST)", "", "The real Fashion-MNIST "
             "(Debian dataset-fashion-mnist: 60,000 training and 10,000 test images), the same "
             "networks, batch 128, Adam 1e-3, no validation split, the same epochs; test "
             "accuracy of the final weights.", ""]
    rows = []
    for model, got in r["accuracy"].items():
        for c in ("nnspec", "keras", "torch"):
            e = got[c]
            rows.append([TITLES[model], got["epochs"], LABELS[c].split(",")[0],
                         _n(e.get("test_accuracy"), 4) if "error" not in e else "failed",
                         _n(e.get("samples_per_second"))])
    return lines + [table(["model", "epochs", "contender", "test accuracy",
                           "train samples/s"], rows), ""]


def _med(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def plots(r: dict[str, Any], folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if "train" in r:
        models = list(r["train"])
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            s = r["train"][model]["summary"]
            names = list(LABELS)
            med = [s[c]["median"] for c in names]
            err = [[m - s[c]["min"] for c, m in zip(names, med)],
                   [s[c]["max"] - m for c, m in zip(names, med)]]
            ax.barh(range(len(names)), med, xerr=err, color=["C0"] + ["C7"] * (len(names) - 1))
            ax.set_yticks(range(len(names)), [LABELS[c] for c in names], fontsize=8)
            ax.set_title(TITLES[model], fontsize=9)
            ax.set_xlabel("training samples/s")
        fig.tight_layout()
        fig.savefig(folder / "suite_train.png", dpi=110)
        made.append("suite_train.png")
        plt.close(fig)
    if "infer" in r:
        models = [m for m in r["infer"] if "onnx" in r["infer"][m]]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "latency_ms", "batch 1 latency, ms"),
                               (axes[1], "per_s", "batch 1024 samples/s")):
            names = sorted({n for m in models for n in r["infer"][m]["onnx"]})
            width = 0.8 / max(len(names), 1)
            for i, name in enumerate(names):
                vals = [_med(r["infer"][m]["onnx"].get(name, {}).get(key, [])) for m in models]
                ax.bar([j + i * width for j in range(len(models))], vals, width, label=name)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models)
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "suite_infer.png", dpi=110)
        made.append("suite_infer.png")
        plt.close(fig)
    return made


def write_report(r: dict[str, Any], out: Path, folder: Path) -> None:
    m = r["machine"]
    lines = ["# Benchmark results", "",
             "Generated by `benchmarks/suite.py` (see benchmarks/README.md); do not edit by "
             "hand.", "", f"- command: `{r['command']}`" + (" (QUICK: smoke sizes, figures "
                                                           "meaningless)" if r["quick"] else ""),
             f"- date: {m['date']}; suite wall time {r['suite_seconds']:.0f} s",
             f"- machine: {m['platform']}; CPU: {m['cpu']}; cores: {m['cpus']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
             "- environment of every contender (PyTorch 'defaults' drops GLIBC_TUNABLES): "
             + ", ".join(f"`{k}={v}`" for k, v in r["env"].items()),
             f"- fp32 matmul peak measured in this run: {r['peak_flops'] / 1e9:,.1f} GFLOP/s",
             "- the machine is shared with other work: compare ratios within this run, not "
             "absolute figures across runs", ""]
    for key, section in (("train", train_section), ("infer", infer_section),
                         ("accuracy", accuracy_section)):
        if key in r:
            part = section(r)
            command = r.get("section_commands", {}).get(key)
            if command and command != r["command"]:
                part[1:1] = ["", f"(measured by `{command}`)"]
            lines += part
    if "gpu" not in r:  # the suite itself runs on the CPU; the GPU figures come from one
        # prepared script on a lent accelerator, and a run without one says so
        lines += ["## GPU", "", "Not measured in this run: the suite ran on the CPU alone (no "
                  "accelerator was lent to the session that produced it). The last GPU "
                  "figures of nnspec's training routes (an H200, 2026-11-28, "
                  "`bash benchmarks/gpu_routes.sh`) are in benchmarks/README.md.", ""]
    made = plots(r, folder)
    rel = Path(folder).resolve()
    for name in made:
        try:
            link = (rel / name).relative_to(out.resolve().parent)
        except ValueError:
            link = rel / name
        lines += [f"![{name}]({link})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)

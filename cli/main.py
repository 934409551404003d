"""The `nnspec` command.

Exit codes: 0 success; 2 bad input (spec, data, arguments); 3 the loss diverged (NaN/Inf);
130 interrupted by SIGINT/SIGTERM after saving a checkpoint; 1 anything else. Errors are one
line each on stderr (`file:line:col: message` for specs), never a traceback unless
`NNSPEC_DEBUG=1`. Heavy imports happen inside the verbs: `validate` never imports JAX and
`predict` needs only numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from nnspec import __version__

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def cmd_validate(args: argparse.Namespace) -> int:
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.spec.errors import SpecError

    problems = []
    for path in args.specs:
        try:
            _, graph = check_spec(path, args.set)
        except SpecError as err:
            problems += err.problems
            continue
        outs = ", ".join(f"{k} {tuple(graph.node(v).shape)}" for k, v in graph.outputs.items())
        print(f"{path}: ok ({len(graph.nodes)} nodes; outputs: {outs})")
    if problems:
        raise SpecError(problems)
    return EXIT_OK


def _join_processes(args: argparse.Namespace) -> bool | None:
    """Join a multi-process run when asked: None for a run of one process, else whether this
    is the process that reports (process 0)."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in explicit):
        return None
    if not args.distributed and any(v is None for v in explicit):
        raise UsageError("--coordinator, --num-processes and --process-id go together (or use "
                        f"--distributed); received: coordinator={args.coordinator}, "
                        f"num_processes={args.num_processes}, process_id={args.process_id}")
    if args.num_processes is not None and not 0 <= (args.process_id or 0) < args.num_processes:
        raise UsageError(f"--process-id must be in [0, {args.num_processes}). Received: "
                        f"process_id={args.process_id}")
    from nnspec.compiler.train.distributed import initialize, is_primary

    try:
        initialize(args.coordinator, args.num_processes, args.process_id)
    except (RuntimeError, ValueError) as err:
        hint = (" (--distributed reads the address from a SLURM, Open MPI, Kubernetes or Cloud "
                "TPU environment; elsewhere give --coordinator, --num-processes and "
                "--process-id)") if args.distributed else ""
        raise UsageError(f"could not join the other processes: {err}{hint}") from None
    return is_primary()


def cmd_train(args: argparse.Namespace) -> int:
    from nnspec.compiler.graph.ir import check_spec

    loaded, _ = check_spec(args.spec, args.set)  # every spec error before JAX is imported
    out = args.out or os.path.join("runs", loaded.spec.name)
    primary = _join_processes(args)
    from nnspec.compiler.run import train_run

    if primary is None:
        return _train(args, loaded, out, train_run)
    with _stdout_to_stderr():  # gloo (CPU collectives) prints its handshakes on stdout
        if not primary:  # the other processes train in silence; process 0 reports
            train_run(loaded, out, lambda s: None, resume=args.resume)
            return EXIT_OK
        result = train_run(loaded, out, lambda s: None if args.quiet else print(
            s, file=sys.stderr, flush=True), resume=args.resume)
    return _report(out, result)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what native code writes on file descriptor 1 to stderr, so stdout keeps only the
    JSON report."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _train(args: argparse.Namespace, loaded: Any, out: str, train_run: Any) -> int:
    if args.quiet:
        result = train_run(loaded, out, lambda s: None, resume=args.resume)
    elif sys.stderr.isatty():
        with _Progress(loaded.spec.train.epochs if loaded.spec.train else 1) as log:
            result = train_run(loaded, out, log, resume=args.resume, progress=log.step)
    else:  # logs and CI: one plain line per epoch, no bar
        result = train_run(loaded, out, lambda s: print(s, file=sys.stderr, flush=True),
                           resume=args.resume)
    return _report(out, result)


def _report(out: str, result: Any) -> int:
    summary = {split: m for split, m in result.metrics.items() if split != "training"}
    print(json.dumps({"out": out, "metrics": summary,
                      "samples_per_second": round(result.metrics["training"]
                                                  ["samples_per_second"], 1),
                      "parity": {k: result.parity[k] for k in ("passed", "max_abs_diff")}},
                     indent=2))
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.graph.summary import render, summarize

    _, graph = check_spec(args.spec, args.set)
    Console(width=max(130, Console().width)).print(render(graph, summarize(graph)))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from nnspec._io import write_text
    from nnspec.compiler.graph.schema import spec_schema

    text = json.dumps(spec_schema(), indent=2) + "\n"
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from nnspec._io import write_bytes, write_text
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.graph.picture import to_dot

    _, graph = check_spec(args.spec, args.set)
    dot = to_dot(graph)
    if not args.out or args.out.endswith(".dot"):
        if args.out:
            write_text(args.out, dot)
        else:
            sys.stdout.write(dot)
        return EXIT_OK
    fmt = os.path.splitext(args.out)[1].lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise UsageError(f"--out: expected a .dot, .svg, .png or .pdf file. Received: {args.out}")
    if shutil.which("dot") is None:
        raise UsageError(f"rendering {fmt} needs Graphviz's `dot` (apt-get install graphviz); "
                         "write DOT with --out FILE.dot instead")
    rendered = subprocess.run(["dot", f"-T{fmt}"], input=dot.encode(), capture_output=True,
                              check=True).stdout
    write_bytes(args.out, rendered)
    return EXIT_OK


class _Progress:
    """A progress bar over epochs on a terminal (rich), with the latest metrics beside it."""

    def __init__(self, epochs: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("epoch"), MofNCompleteColumn(), BarColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task("", total=epochs)

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, info: dict) -> None:
        """Within an epoch: the step, the running loss and the speed."""
        running = "  ".join(f"{k} {v:.4f}" for k, v in info["metrics"].items())
        self.progress.update(self.task, completed=info["epoch"] - 1, description=(
            f"step {info['step']}/{info['steps']}  {running}  "
            f"{info['samples_per_second']:,.0f} samples/s"))

    def __call__(self, line: str) -> None:
        if line.startswith("epoch ") and "/" in line.split()[1]:
            done = int(line.split()[1].split("/")[0])
            rest = line.split(None, 2)[2] if len(line.split(None, 2)) > 2 else ""
            self.progress.update(self.task, completed=done, description=rest)
        else:
            self.progress.console.print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnspec", description="Describe a neural network in YAML; train it with Flax and "
        "Optax under XLA; export it to ONNX, cross-checked against onnxruntime.")
    parser.add_argument("--version", action="version", version=f"nnspec {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    overrides = dict(action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a spec value, e.g. --set train.epochs=1 (repeatable)")

    p = verbs.add_parser("validate", help="check specs: schema, graph and shapes (no JAX)",
                         description="Check one or more specs without compiling anything: "
                         "schema, layer parameters, references and every shape.")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=cmd_validate)

    p = verbs.add_parser("train", help="train, export to ONNX and cross-check",
                         description="Train a spec, export the trained model to ONNX, "
                         "cross-check the export in onnxruntime and write the run directory "
                         "(model.onnx, metrics.json, parity.json, history.json, specs).")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME)")
    p.add_argument("--set", **overrides)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in DIR/checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    group = p.add_argument_group(
        "several processes (multi-host)", "Run the same command once per process; together "
        "they train one data-parallel model over all their devices. Process 0 writes DIR.")
    group.add_argument("--distributed", action="store_true",
                       help="join the processes the cluster's environment describes (SLURM, "
                       "Open MPI, Kubernetes, Cloud TPU)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, which every process connects to")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process: 0..N-1")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("summary", help="table of layers, shapes, parameters, multiply-adds",
                         description="Print a model summary (layer, type, output shape, "
                         "parameters, estimated multiply-adds) without compiling.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=cmd_summary)

    p = verbs.add_parser("schema", help="JSON Schema of the spec language (for editors)",
                         description="Print the spec language's JSON Schema (draft-07), for "
                         "editors: add `# yaml-language-server: $schema=PATH` to a spec.")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = verbs.add_parser("graph", help="picture of the network (DOT, SVG, PNG)",
                         description="Draw the network: Graphviz DOT on stdout or to FILE.dot; "
                         "SVG, PNG or PDF when Graphviz is installed.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--out", metavar="FILE", help=".dot, .svg, .png or .pdf")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=cmd_graph)

    import importlib
    import pkgutil

    from nnspec import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"nnspec.commands.{info.name}").add_parser(verbs, overrides)
    return parser


def _exit_code(err: BaseException) -> tuple[int, str]:
    """Map an exception to an exit code and a one-line (or located multi-line) message."""
    from nnspec.spec.errors import DataError, SpecError

    if isinstance(err, SpecError):
        return EXIT_BAD_INPUT, str(err)
    if isinstance(err, DataError | UsageError):
        return EXIT_BAD_INPUT, f"error: {err}"
    train = sys.modules.get("nnspec.compiler.train.engine")
    if train and isinstance(err, train.NonFiniteError):
        return EXIT_NONFINITE, f"error: {err}"
    if train and isinstance(err, train.Interrupted):
        return EXIT_INTERRUPTED, f"{err}"
    runtime = sys.modules.get("nnspec.runtime.model")
    if runtime and isinstance(err, runtime.InputError):
        return EXIT_BAD_INPUT, f"error: {err}"
    if isinstance(err, FileNotFoundError):
        return EXIT_BAD_INPUT, f"error: {err}"
    return EXIT_FAILURE, f"error: {type(err).__name__}: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nnspec` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.verb == "train":  # the command itself, not a Python caller
        from nnspec import _cpu

        _cpu.restart_with_malloc_tunables()
        _cpu.apply_xla_flags()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's job is to turn errors into messages
        if os.environ.get("NNSPEC_DEBUG"):
            raise
        code, message = _exit_code(err)
        print(message, file=sys.stderr)
        return code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

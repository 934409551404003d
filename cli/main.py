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
from nnspec.spec.errors import UsageError  # re-exported: the verbs raise it

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130




def cmd_validate(args: argparse.Namespace) -> int:
    import nnspec
    from nnspec.spec.errors import SpecError

    problems = []
    for path in args.specs:
        try:
            spec = nnspec.load(path, args.set).validate()
        except SpecError as err:
            problems += err.problems
            continue
        outs = ", ".join(f"{k} {shape}" for k, shape in spec.outputs.items())
        print(f"{path}: ok ({len(spec.graph.nodes)} nodes; outputs: {outs})")
        for out, loss in spec.losses().items():
            print(f"  {out}: loss: {loss}")
    if problems:
        raise SpecError(problems)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    import nnspec

    spec = nnspec.load(args.spec, args.set).validate()  # every spec error before JAX loads
    out = args.out or os.path.join("runs", spec.name)
    primary = nnspec.join_processes(args.coordinator, args.num_processes, args.process_id,
                                    args.distributed)
    if primary is None:
        return _report(nnspec.train(spec, out, callbacks=_display(args), resume=args.resume))
    with _stdout_to_stderr():  # gloo (CPU collectives) prints its handshakes on stdout
        if not primary:  # the other processes train in silence; process 0 reports
            nnspec.train(spec, out, resume=args.resume)
            return EXIT_OK
        callbacks = [] if args.quiet else [nnspec.EpochLines()]
        run = nnspec.train(spec, out, callbacks=callbacks, resume=args.resume)
    return _report(run)


def _display(args: argparse.Namespace) -> list[Any]:
    """How a run shows itself: nothing with -q, a progress bar on a terminal, plain lines in
    logs and CI."""
    import nnspec

    if args.quiet:
        return []
    return [nnspec.ProgressBar() if sys.stderr.isatty() else nnspec.EpochLines()]


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


def _report(run: Any) -> int:
    metrics, parity = run.metrics, run.parity
    summary = {split: m for split, m in metrics.items() if split != "training"}
    print(json.dumps({"out": run.path, "metrics": summary,
                      "samples_per_second": round(metrics["training"]["samples_per_second"], 1),
                      "parity": {k: parity[k] for k in ("passed", "max_abs_diff")}},
                     indent=2))
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from rich.console import Console

    import nnspec

    spec = nnspec.load(args.spec, args.set)
    losses = spec.validate().losses()
    Console(width=max(130, Console().width)).print(spec.summary().table())
    for out, loss in losses.items():
        print(f"{out}: loss: {loss}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import nnspec
    from nnspec._io import write_text

    text = json.dumps(nnspec.schema(), indent=2) + "\n"
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    import nnspec
    from nnspec._io import write_bytes, write_text

    dot = nnspec.load(args.spec, args.set).validate().to_dot()
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
    train = sys.modules.get("nnspec.compiler.train.engine")  # loaded only if training ran
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

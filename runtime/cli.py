"""The runtime's commands: `predict`, `bench`, `check`, `serve` and `web`, with numpy and
onnxruntime only. The `nnspec-runtime` command (the runtime-only distribution, `pip install
./runtime`) is `main` here; the full package's `nnspec` command adds the same verbs from these
parsers (nnspec/commands/), so both behave alike.

Exit codes: 0 success; 1 a check failed or an unexpected error; 2 bad input (arguments, input
files, an unsafe or missing model); 130 interrupted. Errors are one line on stderr, never a
traceback unless NNSPEC_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
MODEL_HELP = "an .onnx file, or a run directory holding model.onnx"


def add_predict(verbs: Any, overrides: dict | None = None) -> None:
    """Add the `predict` verb to an argparse subparsers object."""
    p = verbs.add_parser("predict", help="run an exported model (numpy + onnxruntime only)",
                         description="Run an exported ONNX model on samples from .npy, "
                         ".npz, .csv or image files and print the outputs as JSON or CSV.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--input", required=True, action="extend", nargs="+", metavar="FILE",
                   help=".npy batch (or one sample), .npz with one array per input, .csv (one "
                   "sample per row, optional header), .parquet (a table model's rows; needs "
                   "pyarrow) or .png/.jpg/.jpeg images; several files "
                   "(or --input repeated) are concatenated along the batch axis")
    p.add_argument("--format", choices=("json", "csv"), default="json",
                   help="json (default): every output; csv: one row per sample (class, label, "
                   "probabilities)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run `predict`: the outputs of the model on the input files, on stdout."""
    from nnspec.runtime import load
    from nnspec.runtime.inputs import read_inputs, write_predictions

    model = load(args.model)
    outputs = model.predict(read_inputs(args.input, model))
    write_predictions(outputs, model.labels, args.format, sys.stdout, model=args.model)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The `nnspec-runtime` command's parser."""
    from nnspec.runtime import bench, check, serve, web

    parser = argparse.ArgumentParser(
        prog="nnspec-runtime", description="Run, time, check, serve and put in a browser the "
        "ONNX models that `nnspec train` exports, with numpy and onnxruntime only.")
    parser.add_argument("--version", action="version",
                        version=f"nnspec-runtime {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for add in (add_predict, bench.add_parser, check.add_parser, serve.add_parser,
                web.add_parser):
        add(verbs)
    return parser


def _version() -> str:
    from importlib import metadata

    for name in ("nnspec-runtime", "nnspec"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nnspec-runtime`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the CLI's job is to turn errors into messages
        if os.environ.get("NNSPEC_DEBUG"):
            raise
        from nnspec.runtime.model import InputError

        if isinstance(err, InputError | FileNotFoundError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILURE


def run() -> None:
    """The console script."""
    sys.exit(main())

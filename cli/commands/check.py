"""`nnspec check MODEL`: the runtime's check (nnspec.runtime.check), which needs numpy and
onnxruntime only, so `nnspec-runtime check` is the same command."""

from __future__ import annotations

from typing import Any

from nnspec.runtime.check import (  # noqa: F401 - re-exported for the other verbs
    BUNDLE,
    cmd_check,
    compare,
    importable,
    print_table,
    version,
)
from nnspec.runtime.check import add_parser as _add_parser


def add_parser(verbs: Any, overrides: dict) -> None:
    _add_parser(verbs, overrides)

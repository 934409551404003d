"""`nnspec predict`: the runtime's command (nnspec.runtime.cli), the same as
`nnspec-runtime predict`; numpy and onnxruntime only."""

from __future__ import annotations

from typing import Any

from nnspec.runtime.cli import add_predict


def add_parser(verbs: Any, overrides: dict) -> None:
    add_predict(verbs, overrides)

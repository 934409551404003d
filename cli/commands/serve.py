"""`nnspec serve`: the runtime's command (nnspec.runtime.serve), the same as
`nnspec-runtime serve`."""

from __future__ import annotations

from typing import Any

from nnspec.runtime.serve import add_parser as _add_parser


def add_parser(verbs: Any, overrides: dict) -> None:
    _add_parser(verbs, overrides)

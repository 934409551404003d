"""`nnspec web`: the runtime's command (nnspec.runtime.web), the same as
`nnspec-runtime web`."""

from __future__ import annotations

from typing import Any

from nnspec.runtime.web import add_parser as _add_parser


def add_parser(verbs: Any, overrides: dict) -> None:
    _add_parser(verbs, overrides)

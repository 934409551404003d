"""`nnspec.load` and `Spec`: a spec as a value a program can load, change, check and describe."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from nnspec.spec.errors import SpecError

Overrides = Mapping[str, Any] | Sequence[str] | None
"""Dotted keys and values, as `--set` takes them: `{"train.epochs": 3}` or `["train.epochs=3"]`."""


def _as_settings(overrides: Overrides) -> tuple[str, ...]:
    if overrides is None:
        return ()
    if isinstance(overrides, Mapping):
        # JSON is YAML: numbers, strings, lists and mappings keep their types.
        return tuple(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a mapping or a list of 'KEY=VALUE' strings, got "
                        f"the string {overrides!r}")
    return tuple(overrides)


class Spec:
    """A spec: its YAML text, where it came from and the overrides on top.

    A `Spec` is immutable: `with_overrides` returns a new one. Checking happens in `validate`
    (and in everything that needs a valid spec), which raises one `SpecError` carrying every
    problem with its `file:line:col`, the same as `nnspec validate`.
    """

    def __init__(self, text: str | bytes, file: str = "<spec>", folder: str | None = None,
                 overrides: Overrides = None):
        self.text = text
        self.file = file
        self.folder = folder
        self.overrides = _as_settings(overrides)
        self._checked: tuple[Any, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: str | os.PathLike | None = None,
                  overrides: Overrides = None) -> Spec:
        """A spec from plain data (what `yaml.safe_load` of a spec file gives); relative data
        paths are read from `folder` (default: the current directory)."""
        text = yaml.safe_dump(dict(data), sort_keys=False)
        return cls(text, "<dict>", os.fspath(folder or os.getcwd()), overrides)

    @classmethod
    def from_yaml(cls, text: str, folder: str | os.PathLike | None = None,
                  overrides: Overrides = None) -> Spec:
        """A spec from YAML text; relative data paths are read from `folder`."""
        return cls(text, "<string>", os.fspath(folder or os.getcwd()), overrides)

    def with_overrides(self, overrides: Overrides) -> Spec:
        """A new spec with more overrides applied after this one's."""
        return Spec(self.text, self.file, self.folder, (*self.overrides,
                                                         *_as_settings(overrides)))

    def _check(self) -> tuple[Any, Any]:
        if self._checked is None:
            from nnspec.compiler.graph.ir import check_document
            from nnspec.spec.yamlio import load_text

            doc = load_text(self.text, self.file)
            self._checked = check_document(doc, self.overrides, self.folder)
        return self._checked

    def validate(self) -> Spec:
        """Check schema, layers, references, every shape and that each loss fits its output;
        raise `SpecError` with all problems found, else return the spec itself (calls chain)."""
        self._check()
        self.losses()
        return self

    def losses(self) -> dict[str, str]:
        """Each trained output's loss and the form it takes, e.g. `{"digit": "sparse
        categorical cross-entropy from logits (the softmax's input)"}`."""
        from nnspec.compiler.train.heads import describe_form, loss_forms

        loaded, graph = self._check()
        return {out: describe_form(loss, form)
                for out, (loss, form) in loss_forms(loaded, graph).items()}

    @property
    def loaded(self) -> Any:
        """The validated spec with its source map (`nnspec.spec.validate.LoadedSpec`)."""
        return self._check()[0]

    @property
    def graph(self) -> Any:
        """The typed, shape-inferred graph (`nnspec.compiler.graph.ir.Graph`)."""
        return self._check()[1]

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    @property
    def outputs(self) -> dict[str, tuple]:
        """Each output's name and per-sample shape."""
        graph = self.graph
        return {k: tuple(graph.node(v).shape) for k, v in graph.outputs.items()}

    @property
    def inputs(self) -> dict[str, tuple]:
        """Each input's name and per-sample shape (None for a free length)."""
        return {k: tuple(v.shape) for k, v in self.loaded.spec.inputs.items()}

    def to_dict(self) -> dict[str, Any]:
        """The spec with the overrides applied and defaults filled in, as plain data."""
        return self.loaded.spec.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_yaml(self) -> str:
        """`to_dict` as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def summary(self) -> Any:
        """Layers, output shapes, parameters and multiply-adds (`nnspec summary`)."""
        from nnspec.compiler.api.summary import Summary

        return Summary.of(self.graph)

    def data(self, contact_sheet: str | os.PathLike | None = None) -> dict[str, Any]:
        """What the `data` section resolves to, read as training would (`nnspec data`): files,
        samples per split, class balance, per-column type, range, missing values and
        vocabulary size, input shapes, first samples and every problem found (`problems`).
        For images, `contact_sheet` writes a PNG of the first training images."""
        from nnspec.compiler.data.profile import contact_sheet as sheet
        from nnspec.compiler.data.profile import profile

        loaded, graph = self._check()
        report = profile(loaded, list(graph.outputs))
        data = report.pop("_dataset", None)
        if contact_sheet and data is not None and report["source"] in (
                "images", "digits", "mnist", "fashion_mnist"):
            out = next(iter(data.train.y))
            given = (loaded.spec.outputs or {}).get(out)
            sheet(data, os.fspath(contact_sheet), given.labels or [] if given else [])
            report["contact_sheet"] = os.fspath(contact_sheet)
        return report

    def to_dot(self) -> str:
        """The network as a Graphviz DOT picture (`nnspec graph`)."""
        from nnspec.compiler.graph.picture import to_dot

        return to_dot(self.graph)

    def __repr__(self) -> str:
        more = f", overrides={list(self.overrides)}" if self.overrides else ""
        return f"Spec({self.file!r}{more})"


def load(path: str | os.PathLike, overrides: Overrides = None) -> Spec:
    """Read a spec file. `overrides` take the same dotted keys as `nnspec train --set`:
    `load("m.yaml", overrides={"train.epochs": 3, "layers.fc1.units": 32})`. An unreadable
    file raises `SpecError` located at the file."""
    from nnspec.spec.errors import Location

    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            text = fh.read()
    except OSError as err:
        raise SpecError.at(Location(name, 1, 1), f"cannot read spec: {err.strerror}") from None
    return Spec(text, name, None, overrides)

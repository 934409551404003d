"""docs/python-api.md runs as written: every python block in order, in one namespace, with the
output shown under a block checked (doctest's ELLIPSIS rules: `...` matches anything)."""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re

from conftest import ROOT

DOC = ROOT / "docs" / "python-api.md"
FENCE = re.compile(r"```(python|output)\n(.*?)```", re.S)


def blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each python block."""
    found: list[tuple[str, str | None]] = []
    for kind, body in FENCE.findall(text):
        if kind == "python":
            found.append((body, None))
        else:
            assert found and found[-1][1] is None, "an output block must follow a python block"
            found[-1] = (found[-1][0], body)
    return found


def test_every_block_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    checker = doctest.OutputChecker()
    namespace: dict = {"__name__": "python_api_doc"}
    ran = 0
    for code, expected in blocks(DOC.read_text()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code
        ran += 1
        if expected is not None:
            assert checker.check_output(expected, out.getvalue(), doctest.ELLIPSIS), (
                f"block {ran} printed:\n{out.getvalue()}\nthe page shows:\n{expected}")
    assert ran >= 8
    assert os.path.getsize(tmp_path / "history.png") > 5000  # the plot was drawn
    assert (tmp_path / "runs" / "api-quickstart" / "model.onnx").is_file()

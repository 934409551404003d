"""The documentation of the spec language and its examples stay true: the generated reference
is current, the tutorial's commands run as printed (and its excerpts and error messages match
the files), and the residual CNN and two-input examples train end to end with a passing
cross-check."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EXAMPLES, ROOT, run_cli

from nnspec.compiler.graph.reference import COMMAND, reference_markdown
from nnspec.compiler.layers.base import discover

REFERENCE = ROOT / "docs" / "spec-reference.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"


# -- the reference ---------------------------------------------------------------------------

def test_shipped_reference_is_current():
    generated = subprocess.run([sys.executable, "-m", "nnspec.compiler.graph.reference"],
                               capture_output=True, text=True, check=True).stdout
    assert generated == reference_markdown(), "the module's output differs from the function's"
    assert REFERENCE.read_text() == generated, f"regenerate with: {COMMAND}"


def test_reference_documents_every_layer_parameter_and_section():
    text = reference_markdown()
    for name, cls in discover().items():
        section = text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        for param in cls.model_fields:
            assert f"| `{param}` |" in section, (name, param)
        assert f"`type: {name}`" in section
        assert ("`activation`" in section) == ("activation" in cls.model_fields)
    for key in ("inputs.NAME", "blocks.NAME", "outputs.NAME", "data", "train",
                "train.optimizer", "train.optimizer.schedule", "export.parity"):
        assert f"`{key}`\n" in text, key
    for short in ("`loss: mse`", "`optimizer: adam`", "`schedule: cosine`"):
        assert short in text
    assert text == reference_markdown()  # deterministic


# -- the tutorial ----------------------------------------------------------------------------

@dataclass
class Command:
    line: int
    text: str
    status: int = 0
    expected: str = ""  # output that must appear, from the ```text block after a failure


FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
EXITS = re.compile(r"\s+#\s*exits with status (\d+)\s*$")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")


def _bash_commands(body: str, first_line: int) -> list[Command]:
    commands, lines, i = [], body.splitlines(), 0
    while i < len(lines):
        start, line = i, lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = HEREDOC.search(line)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                line += "\n" + lines[i]
                i += 1
            line += "\n" + heredoc.group(1)
            i += 1
        status = 0
        if match := EXITS.search(line):
            status, line = int(match.group(1)), line[:match.start()]
        commands.append(Command(first_line + start, line, status))
    return commands


def tutorial_commands(text: str) -> list[Command]:
    """The commands of the tutorial's ```bash blocks, in order; a ```text block right after a
    command expected to fail holds output that command must print."""
    commands: list[Command] = []
    for match in FENCE.finditer(text):
        lang, body = match.group(1), match.group(2)
        first_line = text.count("\n", 0, match.start(2)) + 1
        if lang == "bash":
            commands += _bash_commands(body, first_line)
        elif lang == "text" and commands and commands[-1].status and not commands[-1].expected:
            commands[-1].expected = body
    return commands


def test_tutorial_parser_sees_every_command():
    commands = tutorial_commands(TUTORIAL.read_text())
    assert len(commands) >= 15
    assert any(c.text.startswith("nnspec train examples/residual_cnn.yaml") for c in commands)
    assert all(c.expected for c in commands if c.status)
    assert sum("EOF" in c.text for c in commands) == 1


def test_tutorial_excerpts_are_in_the_examples():
    """A ```yaml block headed `# from examples/NAME.yaml` quotes that file line for line."""
    text = TUTORIAL.read_text()
    excerpts = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "yaml"]
    assert len(excerpts) >= 4
    for body in excerpts:
        head, *lines = body.splitlines()
        source = re.fullmatch(r"# from (examples/\S+\.yaml)", head)
        assert source, f"a yaml excerpt must say where it is from: {head!r}"
        shipped = set((ROOT / source.group(1)).read_text().splitlines())
        missing = [ln for ln in lines if ln.strip() and ln not in shipped]
        assert not missing, f"{source.group(1)} no longer has: {missing}"


TRAIN_EPOCHS = 5  # each run's cost is mostly start-up and compilation, not epochs


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory) -> tuple[Path, list[tuple[Command, subprocess.CompletedProcess]]]:
    """The tutorial run in a scratch folder holding a copy of examples/, as a reader would run
    it from the repository root, with training cut to a few epochs: (folder, results)."""
    folder = tmp_path_factory.mktemp("tutorial")
    shutil.copytree(EXAMPLES, folder / "examples", ignore=shutil.ignore_patterns("runs"))
    prelude = 'nnspec() { "$NNSPEC_PY" -m nnspec "$@"; }\npython() { "$NNSPEC_PY" "$@"; }\n'
    env = {**os.environ, "NNSPEC_PY": sys.executable}
    results = []
    for command in tutorial_commands(TUTORIAL.read_text()):
        script = command.text
        if script.startswith("nnspec train "):
            script += f" -q --set train.epochs={TRAIN_EPOCHS}"
        results.append((command, subprocess.run(["bash", "-c", prelude + script], cwd=folder,
                                                env=env, capture_output=True, text=True,
                                                timeout=600)))
    return folder, results


def test_tutorial_commands_run(tutorial):
    for command, done in tutorial[1]:
        where = f"docs/tutorial.md:{command.line}: {command.text}"
        output = done.stdout + done.stderr
        assert done.returncode == command.status, (
            f"{where}\nexit status {done.returncode}, expected {command.status}\n{output}")
        for line in command.expected.splitlines():
            assert line in output, f"{where}\nprints no longer {line!r} but:\n{output}"


# -- the examples ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["residual_cnn", "two_inputs"])
def test_example_trains_end_to_end(tutorial, tmp_path, name):
    """Each example trains, exports and passes its cross-check at its own tolerance, with a
    sane accuracy after a few epochs. The tutorial trains both (`nnspec train
    examples/NAME.yaml`, as `run_cli` would); its run is checked when there is one."""
    spec = EXAMPLES / f"{name}.yaml"
    out = tutorial[0] / "runs" / name
    if not (out / "parity.json").is_file():
        out = tmp_path / "run"
        result = run_cli("train", str(spec), "--out", str(out), "-q",
                         "--set", f"train.epochs={TRAIN_EPOCHS}")
        assert result.returncode == 0, result.stderr
    assert yaml.safe_load((out / "resolved_spec.yaml").read_text())["train"]["epochs"] == (
        TRAIN_EPOCHS)
    parity = json.loads((out / "parity.json").read_text())
    atol = yaml.safe_load(spec.read_text())["export"]["parity"]["atol"]
    assert parity["passed"] and parity["max_abs_diff"] <= atol, parity
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]
    assert (out / "model.onnx").is_file()


def test_two_views_data_is_what_its_generator_makes():
    path = EXAMPLES / "data" / "make_two_views.py"
    spec = importlib.util.spec_from_file_location("make_two_views", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.two_views()
    with np.load(EXAMPLES / "data" / "digits_two_views.npz") as shipped:
        assert sorted(shipped.files) == sorted(made) == ["digit", "image", "profile"]
        for key, value in made.items():
            assert shipped[key].dtype == value.dtype, key
            np.testing.assert_array_equal(shipped[key], value, err_msg=key)
    assert made["image"].shape == (1797, 8, 8, 1) and made["profile"].shape == (1797, 16)
    spec_inputs = yaml.safe_load((EXAMPLES / "two_inputs.yaml").read_text())["inputs"]
    assert sorted(spec_inputs) == ["image", "profile"]

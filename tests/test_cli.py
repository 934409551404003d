"""The command line: help for every verb, exit codes, overrides."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES

from nnspec.main import build_parser, main


@pytest.mark.parametrize("verb", ["validate", "train", "predict"])
def test_help_for_every_verb(cli, verb):
    result = cli(verb, "--help")
    assert result.returncode == 0
    assert f"usage: nnspec {verb}" in result.stdout


def test_verbs_are_the_documented_ones():
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert {"validate", "train", "predict"} <= set(verbs)


def test_usage_errors_exit_2(cli):
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    assert cli("train").returncode == 2


def test_validate_examples(capsys):
    specs = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    assert main(["validate", *specs]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(specs)


@pytest.mark.parametrize(("override", "message"), [
    ("train.epochs", "expected KEY.PATH=VALUE"),
    ("train.epochs=zero", "train.epochs: Input should be a valid integer"),
    ("layers.99.units=3", "index 99 is out of range"),
    ("train.optimizer.learning_rate=-1", "Input should be greater than 0"),
])
def test_bad_overrides_are_located(capsys, override, message):
    code = main(["validate", str(EXAMPLES / "quickstart.yaml"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"--set {override}:1:")
    assert message in err


def test_override_a_layer_by_name():
    from nnspec.compiler.graph import check_spec

    _, graph = check_spec(EXAMPLES / "quickstart.yaml", ["layers.fc1.units=32"])
    assert graph.node("fc1").shape == (32,)


def test_typed_overrides(capsys):
    from nnspec.compiler.graph import check_spec

    loaded, graph = check_spec(EXAMPLES / "quickstart.yaml", [
        "train.optimizer.learning_rate=3e-4", "train.epochs=2", "layers.2.units=32"])
    assert loaded.spec.train.optimizer.learning_rate == 3e-4
    assert loaded.spec.train.epochs == 2
    assert graph.node("fc1").shape == (32,)


def test_progress_bar_shows_the_step_running_metrics_and_speed():
    from nnspec.main import _Progress

    with _Progress(3) as bar:
        bar.step({"epoch": 2, "epochs": 3, "step": 5, "steps": 11, "samples_per_second": 1234.5,
                  "metrics": {"loss": 0.25, "accuracy": 0.5}})
        task = bar.progress.tasks[0]
        assert task.completed == 1
        assert task.description == "step 5/11  loss 0.2500  accuracy 0.5000  1,234 samples/s"
        bar("epoch 2/3  loss 0.2000  accuracy 0.9000  learning_rate 0.0010  900 samples/s")
        assert task.completed == 2 and task.description.startswith("loss 0.2000")

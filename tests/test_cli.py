"""The command line: help for every verb, exit codes, overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT, SMALL

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
    from nnspec.compiler.graph.ir import check_spec

    _, graph = check_spec(EXAMPLES / "quickstart.yaml", ["layers.fc1.units=32"])
    assert graph.node("fc1").shape == (32,)


def test_typed_overrides(capsys):
    from nnspec.compiler.graph.ir import check_spec

    loaded, graph = check_spec(EXAMPLES / "quickstart.yaml", [
        "train.optimizer.learning_rate=3e-4", "train.epochs=2", "layers.2.units=32"])
    assert loaded.spec.train.optimizer.learning_rate == 3e-4
    assert loaded.spec.train.epochs == 2
    assert graph.node("fc1").shape == (32,)


def test_progress_bar_shows_the_step_running_metrics_and_speed():
    from nnspec import ProgressBar

    bar = ProgressBar()
    bar.on_train_begin({"epochs": 3})
    try:
        bar.on_step({"epoch": 2, "epochs": 3, "step": 5, "steps": 11,
                     "samples_per_second": 1234.5, "metrics": {"loss": 0.25, "accuracy": 0.5}})
        task = bar.progress.tasks[0]
        assert task.completed == 1
        assert task.description == "step 5/11  loss 0.2500  accuracy 0.5000  1,234 samples/s"
        bar.on_log("epoch 2/3  loss 0.2000  accuracy 0.9000  learning_rate 0.0010  900 samples/s")
        assert task.completed == 2 and task.description.startswith("loss 0.2000")
    finally:
        bar.on_train_end(None)
    assert bar.progress is None


def test_cpu_flag_is_added_only_when_jaxlib_knows_it_and_the_user_did_not_set_it(monkeypatch):
    from nnspec import _cpu

    assert not _cpu.jaxlib_knows("--xla_no_such_flag_in_any_jaxlib_42=")
    assert _cpu.jaxlib_knows("--xla_dump_to=")  # a flag every jaxlib has had
    monkeypatch.delenv(_cpu.OPT_OUT, raising=False)
    assert _cpu.xla_flags("--xla_cpu_experimental_ynn_fusion_type=+dot") is None  # the user's
    monkeypatch.setattr(_cpu, "jaxlib_knows", lambda flag: False)
    assert _cpu.xla_flags("--xla_force_host_platform_device_count=2") is None
    monkeypatch.setattr(_cpu, "jaxlib_knows", lambda flag: True)
    assert _cpu.xla_flags("--a=1") == "--a=1 " + _cpu.YNN_FLAG
    monkeypatch.setenv(_cpu.OPT_OUT, "0")
    assert _cpu.xla_flags("") is None


@pytest.mark.parametrize("opt_out", [False, True])
def test_train_runs_with_the_cpu_defaults_unless_turned_off(tmp_path, opt_out):
    from nnspec import _cpu

    small_spec = tmp_path / "small.yaml"
    small_spec.write_text(SMALL)
    env = {"GLIBC_TUNABLES": "", "XLA_FLAGS": ""}
    env = {k: v for k, v in os.environ.items() if k not in env}
    if opt_out:
        env[_cpu.OPT_OUT] = "0"
    result = subprocess.run([sys.executable, "-m", "nnspec", "train", str(small_spec), "--out",
                             str(tmp_path / "run"), "-q"], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    if opt_out:
        assert (training["glibc_tunables"], training["xla_flags"]) == ("", "")
    else:
        assert training["glibc_tunables"] == _cpu.MALLOC_TUNABLES
        assert training["xla_flags"] == (_cpu.YNN_FLAG if _cpu.jaxlib_knows(_cpu.YNN_FLAG)
                                         else "")

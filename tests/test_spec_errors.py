"""Malformed specs: each gets exit code 2 and one located message, never a traceback.

Every case is a spec text, the line the first message must point at, the text its column must
point at on that line, and a piece of the message.
"""

from __future__ import annotations

import re

import pytest

from nnspec.main import main

GOOD = """\
version: 1
name: demo
inputs:
  x: {shape: [8]}
layers:
  - {type: dense, units: 16, activation: relu}
  - {type: dense, units: 3}
  - {type: softmax}
data: {source: digits}
train:
  epochs: 2
  loss: categorical_crossentropy
"""

CASES = [
    ("yaml-syntax", GOOD.replace("x: {shape: [8]}", "x: {shape: [8}"), 4, "}",
     "YAML syntax error"),
    ("unknown-layer", GOOD.replace("type: dense, units: 3", "type: dnse, units: 3"), 7, "dnse",
     "unknown layer type 'dnse'; did you mean 'dense'?"),
    ("misspelt-param", GOOD.replace("units: 3", "unit: 3"), 7, "unit:",
     "layers.1 (dense): unknown parameter 'unit'; did you mean 'units'?"),
    ("misspelt-top-key", GOOD.replace("train:", "trian:"), 10, "trian",
     "spec: unknown key 'trian'; did you mean 'train'?"),
    ("misspelt-train-key", GOOD.replace("  epochs: 2", "  epoch: 2"), 11, "epoch",
     "train: unknown key 'epoch'; did you mean 'epochs'?"),
    ("wrong-type", GOOD.replace("epochs: 2", "epochs: two"), 11, "two",
     "train.epochs: Input should be a valid integer"),
    ("out-of-range", GOOD.replace("units: 16", "units: 0"), 6, "0,",
     "Received: units=0"),
    ("bad-enum", GOOD.replace("loss: categorical_crossentropy", "loss: categorical"), 12, "categorical",
     "train.loss: Input should be"),
    ("unknown-activation", GOOD.replace("activation: relu", "activation: rleu"), 6, "rleu",
     "unknown activation 'rleu'; did you mean 'relu'?"),
    ("duplicate-key", GOOD.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 3\n"), 12, "epochs",
     "duplicate key 'epochs' (first defined at line 11, column 3)"),
    ("missing-required", GOOD.replace("name: demo\n", ""), 1, "",
     "missing required key 'name'"),
    ("missing-units", GOOD.replace("type: dense, units: 3", "type: dense"), 7, "{",
     "missing required key 'units'"),
    ("future-version", GOOD.replace("version: 1", "version: 7"), 1, "7",
     "spec version 7 is newer than this nnspec reads (1); upgrade nnspec"),
    ("layer-not-mapping", GOOD.replace("  - {type: softmax}", "  - softmax"), 8, "softmax",
     "layers.2: Input should be a valid dictionary"),
    ("no-type", GOOD.replace("{type: softmax}", "{axis: -1}"), 8, "{",
     "each layer needs a `type`"),
    ("bad-reference", GOOD.replace("{type: softmax}", "{type: softmax, inputs: dense_3}"), 8, "dense_3",
     "takes input 'dense_3', which is no layer or input; did you mean 'dense_2'?"),
    ("duplicate-name", GOOD.replace("{type: dense, units: 3}", "{type: dense, units: 3, name: x}"),
     7, "x}", "duplicate name 'x': already used by an input"),
    ("cycle", GOOD.replace("  - {type: dense, units: 16, activation: relu}",
                           "  - {type: dense, name: a, units: 8, inputs: b}\n"
                           "  - {type: dense, name: b, units: 8, inputs: a}"), 7, "a}",
     "the layers form a cycle"),
    ("shape-mismatch", GOOD.replace("shape: [8]", "shape: [2, 2, 4]"), 6, "{",
     "layer 'dense_1' (dense) expects a flat input (or a sequence of vectors), got (2, 2, 4) "
     "from 'x'; add a flatten layer"),
    ("output-from-unknown", GOOD + "outputs:\n  y: {from: dense_9}\n", 14, "dense_9",
     "output 'y' is taken from 'dense_9', which is no layer"),
    ("bad-dtype", GOOD.replace("{shape: [8]}", "{shape: [8], dtype: float}"), 4, "float}",
     "inputs.x.dtype: Input should be"),
    ("negative-dim", GOOD.replace("shape: [8]", "shape: [-8]"), 4, "-8",
     "inputs.x.shape.0: Input should be greater than 0"),
    ("empty-layers", GOOD.split("layers:")[0] + "layers: []\n" + GOOD.split("{type: softmax}\n")[1],
     5, "[]", "layers: List should have at least 1 item"),
    ("top-level-list", "- a\n- b\n", 1, "", "a spec must be a mapping at the top level, got a list"),
    ("empty-file", "", 1, "", "spec is empty"),
    ("only-comment", "# nothing here\n", 1, "", "spec is empty"),
    ("python-tag", GOOD + "evil: !!python/object/apply:os.system [echo]\n", 13, "!!python",
     "unsupported YAML tag"),
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh")), 1, "", "alias bomb"),
    ("tabs", "version: 1\n\tname: x\n", 2, "", "YAML syntax error"),
    ("unused-layer", GOOD.replace("  - {type: softmax}", "  - {type: softmax}\n  - {type: dense, units: 4, inputs: dense_1, activation: relu}") + "outputs:\n  y: {from: softmax_1}\n", 9, "{",
     "layer 'dense_3' (dense) is unused: no layer takes its output and no output comes from it"),
    ("unused-input", GOOD.replace("  x: {shape: [8]}", "  x: {shape: [8]}\n  z: {shape: [2]}").replace("  - {type: dense, units: 16, activation: relu}", "  - {type: dense, units: 16, activation: relu, inputs: x}"), 5, "z",
     "input 'z' is not used by any layer"),
    ("conv-kernel-too-big", GOOD.replace("shape: [8]", "shape: [2, 2, 1]").replace(
        "  - {type: dense, units: 16, activation: relu}",
        "  - {type: conv2d, filters: 4, kernel_size: 3}\n  - {type: flatten}"), 6, "{",
     "layer 'conv2d_1' (conv2d)"),
    ("lstm-on-a-vector", GOOD.replace("  - {type: dense, units: 16, activation: relu}",
                                      "  - {type: lstm, units: 4}"), 6, "{",
     "layer 'lstm_1' (lstm)"),
    ("concat-mismatch", GOOD.replace("  - {type: dense, units: 16, activation: relu}", "  - {type: reshape, name: r, target_shape: [2, 4]}\n  - {type: concat, inputs: [x, r]}"), 7, "{",
     "layer 'concat_1' (concat)"),
    ("merge-one-input", GOOD.replace("  - {type: softmax}", "  - {type: add}"), 8, "{",
     "a merge layer needs at least 2 inputs"),
    ("embedding-on-floats", GOOD.replace("  - {type: dense, units: 16, activation: relu}",
                                         "  - {type: embedding, input_dim: 10, output_dim: 4}\n  - {type: flatten}"), 6, "{",
     "needs integer ids from a model input of dtype int32, int64 or uint8"),
    ("trainable-not-bool", GOOD.replace("{type: dense, units: 3}", "{type: dense, units: 3, trainable: maybe}"), 7, "maybe",
     "layers.1.trainable: expected true or false. Received: trainable='maybe'"),
    ("self-reference", GOOD.replace("{type: softmax}", "{type: softmax, name: s, inputs: s}"), 8, "s}",
     "the layers form a cycle: s -> s"),
    ("reshape-count", GOOD.replace("{type: softmax}", "{type: reshape, target_shape: [2, 2]}"), 8, "{",
     "layer 'reshape_1' (reshape)"),
    ("opset-out-of-range", GOOD + "export: {opset: 99}\n", 13, "99",
     "export.opset: Input should be less than or equal to 21"),
    ("bad-name", GOOD.replace("name: demo", "name: 'my model!'"), 2, "'my",
     "name: String should match pattern"),
    ("dropout-rate", GOOD.replace("{type: softmax}", "{type: dropout, rate: 1.5}"), 8, "1.5",
     "layers.2.rate: Input should be less than 1"),
    ("unknown-block", GOOD.replace("{type: softmax}", "{block: res}"), 8, "res",
     "unknown block 'res'"),
    ("npz-without-path", GOOD.replace("{source: digits}", "{source: npz}"), 9, "{",
     "`path` is required when source is 'npz'"),
    ("bad-split", GOOD.replace("{source: digits}", "{source: digits, validation_split: 1.5}"), 9,
     "1.5", "data.validation_split: Input should be less than 1"),
    ("bad-optimizer", GOOD.replace("  loss:", "  optimizer: adma\n  loss:"), 12, "adma",
     "did you mean 'adam'?"),
]


@pytest.mark.parametrize(("text", "line", "anchor", "message"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_malformed_spec_is_located(tmp_path, capsys, text, line, anchor, message):
    col = text.splitlines()[line - 1].index(anchor) + 1 if text.strip() else 1
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    match = re.match(r"^(.*):(\d+):(\d+): (.*)$", first)
    assert match, first
    assert match.group(1) == str(path)
    assert (int(match.group(2)), int(match.group(3))) == (line, col), first
    assert message in err, err


def test_binary_garbage(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"version: 1\nname: \xff\xfe\x00garbage")
    assert main(["validate", str(path)]) == 2
    assert re.match(rf"^{re.escape(str(path))}:2:7: not UTF-8 text", capsys.readouterr().err)


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = GOOD.replace("units: 16", "units: 0").replace("epochs: 2", "epochs: -1").replace(
        "type: softmax", "type: softmx")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[1] for ln in lines] == ["6", "8", "11"], lines


def test_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read spec" in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(tmp_path, cli):
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD.replace("type: softmax", "type: sofmax").replace("x: {shape: [8]}",
                                                                          "x: {shape: [8]}"))
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:8:12: layers.2: unknown layer type 'sofmax'; did you mean 'softmax'?" in (
        result.stderr)

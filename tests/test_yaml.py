"""The YAML layer: safe, located, strict about duplicates, YAML 1.2 scalars, bounded aliases."""

from __future__ import annotations

import pytest

from nnspec.spec.errors import SpecError
from nnspec.spec.yamlio import MAX_NODES, load_text, parse_scalar


@pytest.mark.parametrize(("text", "value"), [
    ("1e-3", 0.001), ("1.0e-3", 0.001), ("-2E+2", -200.0), ("017", 17), ("0o17", 15),
    ("0x1F", 31), ("1_000", 1000), ("no", "no"), ("on", "on"), ("true", True), ("False", False),
    ("null", None), ("~", None), ("3.10", 3.1), ("2020-01-01", "2020-01-01"), ("1:30", "1:30"),
    (".inf", float("inf")), ("'1e-3'", "1e-3"),
])
def test_scalars_follow_yaml_1_2(text, value):
    assert load_text(f"v: {text}\n").data == {"v": value}


def test_positions_of_keys_and_values():
    doc = load_text("a:\n  b: [1, {c: 2}]\n", "f.yaml")
    assert str(doc.source.keys[("a", "b")]) == "f.yaml:2:3"
    assert str(doc.source.values[("a", "b", 1, "c")]) == "f.yaml:2:14"
    assert str(doc.source.locate(("a", "b", 1, "missing"))) == "f.yaml:2:10"


def test_duplicate_key_is_an_error_even_nested():
    with pytest.raises(SpecError, match=r"f.yaml:3:3: duplicate key 'x' \(first defined at line "
                                        r"2, column 3\)"):
        load_text("a:\n  x: 1\n  x: 2\n", "f.yaml")


def test_merge_keys_work_and_explicit_keys_win():
    doc = load_text("base: &b {units: 4, activation: relu}\nl: {<<: *b, units: 8}\n")
    assert doc.data["l"] == {"units": 8, "activation": "relu"}


def test_alias_bomb_fails_fast():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ", ".join(
            [f"*{prev}"] * 10) + "]")
    with pytest.raises(SpecError, match=f"the limit is {MAX_NODES}"):
        load_text("\n".join(lines))


def test_recursive_alias_is_an_error():
    with pytest.raises(SpecError, match="recursive YAML alias"):
        load_text("a: &a [1, *a]\n")


@pytest.mark.parametrize("text", [
    "a: !!python/object/apply:os.system ['true']\n", "a: !!binary aGk=\n", "a: !!set {x}\n",
    "a: !custom 1\n", "a: !!timestamp 2001-01-01\n",
])
def test_only_plain_data(text):
    with pytest.raises(SpecError, match="unsupported YAML tag"):
        load_text(text)


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(SpecError, match="nested"):
        load_text("a: " + "[" * 3000 + "]" * 3000)


def test_oversized_file():
    with pytest.raises(SpecError, match="limited to"):
        load_text(b"a: " + b"x" * (1 << 21))


def test_parse_scalar_for_overrides():
    assert parse_scalar("3e-4") == 3e-4
    assert parse_scalar("[1, 2]") == [1, 2]
    assert parse_scalar("relu") == "relu"
    assert parse_scalar("a: [") == "a: ["  # not YAML: kept as the string typed

"""Spec fuzzing: any text given to `nnspec validate` gives a valid spec (exit 0) or located
errors (exit 2, every line `file:line:col: message`), never a traceback, never more than a
second of CPU, never unbounded memory. Seeded with every example of examples/, mutated
structurally (keys deleted, duplicated, renamed; values retyped, random, huge, unicode, deeply
nested, aliased) and textually (truncated, binary junk, alias bombs).

NNSPEC_HYPOTHESIS_EXAMPLES=2000 for a longer search (the default keeps this file ~20 s)."""

from __future__ import annotations

import copy
import os
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.main import main

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
TEXTS = [p.read_text() for p in EXAMPLES]
LOCATED = re.compile(r"^(.+):(\d+):(\d+): \S")
CPU_SECONDS = 1.0
PEAK_BYTES = 64 << 20
SETTINGS = settings(max_examples=int(os.environ.get("NNSPEC_HYPOTHESIS_EXAMPLES", 150)),
                    deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
    st.integers(-10**30, 10**30).map(lambda n: n * 10**300),  # beyond float64 as text
    st.text(max_size=12), st.text(alphabet="é€😀\u202e\u0301\ufeff\U0010fffd", max_size=6),
    st.sampled_from(["-1", "0", "1e400", "-.inf", ".nan", "0x7fffffffffffffff", "017", "no",
                     "2024-01-01", "~", "<<", "!!python/object:os.system", "*a", "&a"]))
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def _paths(node, prefix=(), seen=None):
    # Aliases may make the parsed data cyclic (or exponentially wide): each node once, 12 deep.
    seen = set() if seen is None else seen
    yield prefix
    if id(node) in seen or len(prefix) > 12:
        return
    if isinstance(node, dict | list):
        seen.add(id(node))
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k), seen)


def _nest(value, depth: int, as_list: bool):
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


@st.composite
def structural(draw, data):
    """One edit of the parsed document, dumped back to YAML."""
    paths = [p for p in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    kind = draw(st.sampled_from(["value", "delete", "rename", "add", "nest", "swap", "list"]))
    if kind == "value":
        parent[key] = draw(JUNK)
    elif kind == "delete":
        del parent[key]
    elif kind == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + draw(st.sampled_from("xs_é"))] = parent.pop(key)
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(JUNK)
    elif kind == "nest":
        parent[key] = _nest(parent[key], draw(st.integers(1, 200)), draw(st.booleans()))
    elif kind == "swap":
        other = draw(st.sampled_from(paths))
        value = data
        for step in other:
            value = value[step] if isinstance(value, dict | list) else value
        parent[key] = copy.deepcopy(value)  # a copy: the data must stay a tree
    elif kind == "list" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10**6)


@st.composite
def textual(draw, text: str):
    """One edit of the text itself."""
    lines = text.splitlines(keepends=True)
    kind = draw(st.sampled_from(["truncate", "junk", "duplicate", "splice", "alias", "bomb",
                                 "deep", "indent", "bytes"]))
    at = draw(st.integers(0, len(text)))
    if kind == "truncate":
        return text[:at]
    if kind == "junk":
        chunk = draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=8))
        return text[:at] + chunk + text[at + draw(st.integers(0, 5)):]
    if kind == "duplicate" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        return "".join(lines[:i + 1] + lines[i:])
    if kind == "splice":
        other = draw(st.sampled_from(TEXTS))
        return text[:at] + other[draw(st.integers(0, len(other))):]
    if kind == "alias" and lines:
        # Anchor one line's value and refer to it elsewhere (valid YAML or a located error).
        i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
        lines[i] = re.sub(r": (?=\S)", ": &a ", lines[i], count=1)
        lines[j] = re.sub(r": \S.*", ": *a", lines[j], count=1)
        return "".join(lines)
    if kind == "bomb":
        width, depth = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        bomb = ["b0: &b0 [lol, lol]"] + [
            f"b{k}: &b{k} [{', '.join([f'*b{k - 1}'] * width)}]" for k in range(1, depth)]
        return "\n".join(bomb) + "\n" + text
    if kind == "deep":
        n = draw(st.integers(10, 3000))
        return text[:at] + "[" * n + "]" * draw(st.integers(0, n)) + text[at:]
    if kind == "indent" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = " " * draw(st.integers(1, 7)) + lines[i]
        return "".join(lines)
    return text[:at] + draw(st.binary(max_size=16)).decode("latin-1") + text[at:]


@st.composite
def fuzzed(draw) -> bytes:
    """An example, edited one to three times; sometimes raw bytes (binary junk, not UTF-8)."""
    index = draw(st.integers(0, len(TEXTS) - 1))
    text = TEXTS[index]
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                data = None
            if isinstance(data, dict) and data:
                text = draw(structural(data))
                continue
        text = draw(textual(text))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=12)) + raw[at:]
    return raw


def validate_in_process(path: Path, capsys) -> tuple[int, str, float, int]:
    """Exit code, stderr, CPU seconds and peak traced bytes of `nnspec validate PATH`."""
    tracemalloc.start()
    cpu = time.process_time()
    try:
        code = main(["validate", str(path)])
    finally:
        cpu = time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return code, capsys.readouterr().err, cpu, peak


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and all(LOCATED.match(line) for line in lines), err


def test_every_example_validates(tmp_path, capsys):
    for example in EXAMPLES:
        code, err, _, _ = validate_in_process(example, capsys)
        assert code == 0, err
    main(["validate", str(EXAMPLES[0])])  # warm: imports and layer discovery done once


@SETTINGS
@given(raw=fuzzed())
def test_fuzzed_specs_give_a_spec_or_located_errors(tmp_path_factory, capsys, raw):
    path = tmp_path_factory.mktemp("f") / "spec.yaml"
    path.write_bytes(raw)
    code, err, cpu, peak = validate_in_process(path, capsys)
    assert_clean(code, err)
    assert cpu < CPU_SECONDS, f"validate took {cpu:.2f} s of CPU on:\n{raw[:2000]!r}"
    assert peak < PEAK_BYTES, f"validate peaked at {peak >> 20} MiB on:\n{raw[:2000]!r}"


# Named regression cases: inputs that once crashed or hung, and the message each now gets.
REGRESSIONS = {
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")), "an alias bomb"),
    "deep_flow_nesting": ("version: 1\nlayers: " + "[" * 5000 + "\n", "nested deeper than 64"),
    "binary_junk": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    "truncated_flow_mapping": (TEXTS[0][:TEXTS[0].index("{") + 5], "YAML syntax error"),
    "self_recursive_alias": ("&a [*a]\n", ""),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions_in_process(name, tmp_path, capsys):
    text, expected = REGRESSIONS[name]
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err, cpu, peak = validate_in_process(path, capsys)
    assert code == 2, err
    assert_clean(code, err)
    assert expected in err
    assert cpu < CPU_SECONDS and peak < PEAK_BYTES, (cpu, peak)


def _limit_memory() -> None:
    limit = 2 << 30  # address space: the interpreter, pydantic and numpy fit well inside
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("name", ["alias_bomb", "deep_flow_nesting", "binary_junk"])
def test_regressions_on_the_command_line(name, tmp_path):
    text, expected = REGRESSIONS[name]
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = subprocess.run([sys.executable, "-m", "nnspec", "validate", str(path)],
                            capture_output=True, text=True, timeout=60,
                            preexec_fn=_limit_memory)
    assert result.returncode == 2, result.stderr
    assert_clean(result.returncode, result.stderr)
    assert expected in result.stderr and str(path) in result.stderr

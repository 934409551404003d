"""The wheel holds every module of the mapped layout, and the layering rules hold."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT

# Source folder -> import path, as pyproject.toml maps them.
MAPPED = {"cli": "nnspec", "spec": "nnspec/spec", "compiler": "nnspec/compiler",
          "runtime": "nnspec/runtime"}
# (cli/commands/ is the subpackage nnspec.commands, found by the walk of cli/.)


def _sources() -> dict[str, Path]:
    files = {}
    for folder, target in MAPPED.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".npz", ".cc") and "__pycache__" not in path.parts:
                files[f"{target}/{path.relative_to(ROOT / folder).as_posix()}"] = path
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("nnspec-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_has_every_module_and_data_file(wheel):
    names = set(wheel.namelist())
    missing = sorted(set(_sources()) - names)
    assert not missing, f"left out of the wheel (add them to pyproject.toml): {missing}"
    assert "nnspec/compiler/data/digits.npz" in names
    assert "nnspec/compiler/kernels/lstm.cc" in names  # the fused LSTM, built on first use
    assert not [n for n in names if n.startswith(("spec/", "compiler/", "runtime/", "cli/"))]


def test_wheel_declares_the_console_script(wheel):
    entry = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "nnspec = nnspec.main:main" in wheel.read(entry).decode()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("folder", "banned"), [
    ("spec", ("jax", "flax", "optax", "onnx", "onnxruntime", "nnspec.compiler",
              "nnspec.runtime")),
    ("runtime", ("jax", "flax", "optax", "nnspec.compiler", "nnspec.spec")),
])
def test_layering(folder, banned):
    for path in (ROOT / folder).rglob("*.py"):
        bad = {m for m in _imports(path) if m in banned or m.startswith(tuple(
            b + "." for b in banned))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_command_is_a_thin_shell_over_the_api():
    """cli/ reaches the compiler only through nnspec.compiler.api (what `import nnspec` gives)."""
    for path in (ROOT / "cli").rglob("*.py"):
        inner = {m for m in _imports(path) if m.startswith("nnspec.compiler")
                 and not m.startswith("nnspec.compiler.api")}
        assert not inner, f"{path.relative_to(ROOT)} imports {sorted(inner)}"


def test_validate_never_imports_jax():
    code = (
        "import sys\n"
        "from nnspec.main import main\n"
        f"assert main(['validate', *{[str(p) for p in sorted(EXAMPLES.glob('*.yaml'))]!r}]) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'flax', 'optax', 'onnx', 'onnxruntime'))\n"
        "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_bare_top_level_imports():
    for folder in MAPPED:
        for path in (ROOT / folder).rglob("*.py"):
            bare = {m for m in _imports(path) if m.split(".")[0] in MAPPED}
            assert not bare, f"{path.relative_to(ROOT)} imports {sorted(bare)}"


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr

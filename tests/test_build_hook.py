"""The wheel build hook (hatch_build.py): compiled where it can be, pure Python where not.

`pip install .` must work on a fresh Debian machine with no compiler (the README's first
command), and must say so rather than fail; HUSHDNS_COMPILE=require must fail loudly
instead. The successful compile is CI's second pass (bench/compile.py builds the compiled
wheel with HUSHDNS_COMPILE=require and the whole suite runs on it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    """hatch_build.py, imported from this tree (it needs hatchling: the test extra has it)."""
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("raw", "want"), [("", "auto"), ("auto", "auto"), ("REQUIRE", "require"),
                                          ("1", "require"), ("no", "no"), ("0", "no")])
def test_mode_reads_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str, want: str) -> None:
    monkeypatch.setenv("HUSHDNS_COMPILE", raw)
    assert _hook().mode() == want


def test_an_unknown_mode_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSHDNS_COMPILE", "maybe")
    with pytest.raises(ValueError, match="HUSHDNS_COMPILE='maybe'"):
        _hook().mode()


def test_missing_compiler_and_headers_are_named(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert "no C compiler" in _hook().missing_toolchain()
    monkeypatch.undo()
    if not shutil.which("gcc") and not shutil.which("cc"):
        pytest.skip("this machine has no C compiler")
    real = sysconfig.get_paths

    def no_headers(*a, **k):
        return {**real(*a, **k), "include": str(tmp_path)}
    monkeypatch.setattr(sysconfig, "get_paths", no_headers)
    assert "no Python headers" in _hook().missing_toolchain()


def _copy_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "__pycache__", ".*_cache", ".hypothesis",
        "*.so", "*.pyd", "*.pyc", "tests", "bench", "dashboards"))
    return src


def _wheel(src: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                           str(out), str(src)], env=env, capture_output=True, text=True,
                          timeout=300)


def _no_compiler_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """PATH holds only this Python: what a fresh Debian machine without gcc looks like."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "PYTHONPATH")}
    return {**env, "PATH": str(bin_dir), **extra}


def _members(out: Path) -> tuple[str, list[str]]:
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return wheel.name, zf.namelist()


def test_no_compiler_gives_a_pure_wheel_and_says_why(tmp_path: Path) -> None:
    src = _copy_tree(tmp_path)
    got = _wheel(src, tmp_path / "out", _no_compiler_env(tmp_path))
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "hushdns: pure Python build: no C compiler" in got.stdout + got.stderr
    name, members = _members(tmp_path / "out")
    assert name.endswith("-py3-none-any.whl")
    assert "resolver/wire.py" in members and "resolver/bundled_lists/xiaomi.txt" in members
    assert not [m for m in members if m.endswith((".so", ".pyd"))]


def test_require_without_a_compiler_fails_the_build(tmp_path: Path) -> None:
    src = _copy_tree(tmp_path)
    got = _wheel(src, tmp_path / "out", _no_compiler_env(tmp_path, HUSHDNS_COMPILE="require"))
    assert got.returncode != 0
    assert "HUSHDNS_COMPILE=require, but this machine has no C compiler" in got.stdout + got.stderr
    assert not list((tmp_path / "out").glob("*.whl"))


def test_a_failed_compile_falls_back_to_pure_python(tmp_path: Path) -> None:
    """A module mypyc refuses (here: a type error) must not cost the user the install."""
    if _hook().missing_toolchain():
        pytest.skip(f"cannot compile here: {_hook().missing_toolchain()}")
    src = _copy_tree(tmp_path)
    wire = src / "resolver" / "wire.py"
    wire.write_text(wire.read_text() + "\n_NOT_AN_INT: int = 'a string'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    got = _wheel(src, tmp_path / "out", {**env, "HUSHDNS_COMPILE": "auto"})
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    said = got.stdout + got.stderr
    assert "hushdns: pure Python build: the mypyc compile failed" in said
    assert "_NOT_AN_INT" in said or "incompatible types" in said.lower()
    name, members = _members(tmp_path / "out")
    assert name.endswith("-py3-none-any.whl")
    assert not [m for m in members if m.endswith((".so", ".pyd"))]

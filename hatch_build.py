"""Wheel build hook: compile the per-query modules with mypyc where this machine can.

Why a hook of our own and not hatch-mypyc: the compiled build is the default (issue #15: the
pure-Python pipeline answers 20-25% fewer blocked and wide-cache queries per CPU-second than
the old fast path did; compiled, it answers more), but `pip install .` must still work on a
machine with no C compiler, so a failed or impossible compile falls back to a pure-Python
wheel with a warning, the way PyYAML falls back from libyaml. And the compile happens in a
temporary copy of the package, so a source tree never holds .so files that would shadow
its .py files (hatch-mypyc builds in place).

Choose with ``HUSHDNS_COMPILE``: ``auto`` (default: compile if gcc/cc and the Python headers
are there, else pure), ``require`` (compile or fail the build: CI and the benchmark use it),
``no`` (pure Python, no compiler or mypy needed). Editable installs are always pure: the
source tree must be what runs. The modules to compile are the hook's ``modules`` list in
pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ENV = "HUSHDNS_COMPILE"
_MODES = {"auto": "auto", "": "auto", "require": "require", "1": "require", "yes": "require",
          "no": "no", "0": "no", "off": "no", "false": "no"}
# mypyc's shared library (the code of all compiled modules) goes at the top of the wheel
# under this name: <GROUP>__mypyc.<abi>.so.
GROUP = "hushdns"


def mode() -> str:
    """``auto``, ``require`` or ``no``, from HUSHDNS_COMPILE (an unknown value is an error)."""
    raw = os.environ.get(ENV, "auto").strip().lower()
    if raw not in _MODES:
        raise ValueError(f"{ENV}={raw!r}: use auto, require or no")
    return _MODES[raw]


def missing_toolchain() -> str:
    """What this machine lacks to compile C extensions for this Python, or "" if nothing."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    tried = list(dict.fromkeys([cc, "cc", "gcc"]))
    if not any(shutil.which(c) for c in tried):
        return f"no C compiler ({', '.join(tried)}: none on PATH; Debian: apt install gcc)"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return f"no Python headers ({header} is missing; Debian: apt install python3-dev)"
    return ""


_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

modules, mypy_args = sys.argv[1], sys.argv[2]
sys.argv[1:3] = []
setup(name="hushdns_compiled", ext_modules=mypycify(
    [*mypy_args.split(), *modules.split()], opt_level="3", group_name={group!r},
    target_dir="build"))
"""


class CompileHook(BuildHookInterface):
    """Adds the compiled modules to a wheel, or leaves the wheel pure (see module docstring)."""

    PLUGIN_NAME = "custom"

    def _modules(self) -> list[str]:
        modules = self.config.get("modules", [])
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise TypeError("tool.hatch.build.targets.wheel.hooks.custom.modules: a list of paths")
        return modules

    def _plan(self) -> str:
        """"" to compile, else why not; raises where HUSHDNS_COMPILE=require cannot be met."""
        how = mode()
        if how == "no":
            return f"{ENV}=no"
        lacking = missing_toolchain()
        if lacking and how == "require":
            raise RuntimeError(f"{ENV}=require, but this machine has {lacking}")
        return lacking

    def dependencies(self) -> list[str]:
        # mypy (mypyc comes with it) and setuptools (mypyc's build_ext) are needed only
        # when there is something to compile with, so a pure install downloads neither.
        if self._plan():
            return []
        return list(self.config.get("compile-dependencies", []))

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        if self.target_name != "wheel":
            return
        if version == "editable":
            self._say("editable install: pure Python (the source tree is what runs)")
            return
        why_not = self._plan()
        if why_not:
            self._say(f"pure Python build: {why_not}", warn=why_not != f"{ENV}=no")
            return
        try:
            built = self._compile()
        except Exception as exc:
            if mode() == "require":
                raise
            self._say(f"pure Python build: the mypyc compile failed ({exc}); "
                      f"{ENV}=require makes this fail the install", warn=True)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["force_include"].update(built)

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if getattr(self, "_workdir", None) is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _compile(self) -> dict[str, str]:
        """Compile a copy of the package; return {built file: its path in the wheel}."""
        modules = self._modules()
        started = time.monotonic()
        self._workdir = tempfile.TemporaryDirectory(prefix="hushdns-mypyc-")
        work = Path(self._workdir.name)
        root = Path(self.root)
        # The whole package, .py files only: mypy reads the modules the compiled ones import.
        shutil.copytree(root / "resolver", work / "resolver",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.pyc"))
        (work / "setup.py").write_text(_SETUP.format(group=GROUP))
        mypy_args = " ".join(self.config.get("mypy-args", []))
        proc = subprocess.run(
            [sys.executable, "setup.py", " ".join(m.lstrip("/") for m in modules), mypy_args,
             "build_ext", "--inplace"],
            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise RuntimeError(f"setup.py build_ext exited {proc.returncode}:\n{tail}")
        built: dict[str, str] = {}
        suffixes = (".so", ".pyd")
        for path in work.rglob("*"):
            rel = path.relative_to(work)
            if path.suffix in suffixes and rel.parts[0] != "build":
                built[str(path)] = rel.as_posix()
        expected = [Path(m.lstrip("/")).with_suffix("") for m in modules]
        for stem in expected:
            if not any(Path(r).parent == stem.parent and Path(r).name.startswith(stem.name + ".")
                       for r in built.values()):
                raise RuntimeError(f"no compiled file for {stem}.py")
        self._say(f"compiled {len(modules)} modules with mypyc in "
                  f"{time.monotonic() - started:.0f} s")
        return built

    def _say(self, message: str, *, warn: bool = False) -> None:
        # pip shows a build backend's output with -v (a failed build's always); the server
        # says at startup which build runs (log line, hushdns_build_info{hot_path}).
        show = self.app.display_warning if warn else self.app.display_info
        show(f"hushdns: {message}")

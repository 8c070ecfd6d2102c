"""Put the mypyc-compiled hot-path modules into a source tree, or take them out again.

    python bench/compile.py [TREE]            # build them and unpack the .so files into TREE
    python bench/compile.py [TREE] --clean    # remove them: TREE runs pure Python again

TREE defaults to this checkout.  Why: the compiled build (issue #15) is the wheel that
``pip install .`` makes where a C compiler and the Python headers are (hatch_build.py, the
build hook, compiles into the wheel only, never into a source tree), but the tests and the
benchmark run from a source tree.  Python's import system prefers
``wire.cpython-311-*.so`` over ``wire.py`` in the same folder, so a tree holding the
wheel's .so files runs compiled, with the same modules, options and mypy as an install.
The wheel is built with HUSHDNS_COMPILE=require (no silent fallback to pure Python) from
a copy of TREE, with the Python that runs this script (the .so files are specific to its
version), so run it with the interpreter that will import them.  It needs gcc and the
Python headers; the build fetches hatchling, mypy and setuptools through pip.
The .so files are in .gitignore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Not needed to build the wheel, and never to be copied into the build (old .so files).
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "__pycache__", ".*_cache", ".hypothesis", "out",
    "*.so", "*.pyd", "*.pyc",
)


def compiled_modules(tree: Path) -> list[str]:
    """The build hook's ``modules`` list from TREE's pyproject.toml, relative to TREE."""
    with open(tree / "pyproject.toml", "rb") as f:
        hook = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    return [p.lstrip("/") for p in hook["modules"]]


def compiled_files(tree: Path) -> list[Path]:
    """The compiled files now in TREE: one per compiled module, and mypyc's shared
    library (``<hash>__mypyc.*.so``), which sits at the top of the tree as at the
    top of the wheel."""
    found: list[Path] = []
    for module in compiled_modules(tree):
        source = tree / module
        found += source.parent.glob(source.stem + ".*.so")
        found += source.parent.glob(source.stem + ".*.pyd")
    found += tree.glob("*__mypyc.*.so")
    found += tree.glob("*__mypyc.*.pyd")
    return sorted(set(found))


def clean(tree: Path) -> list[Path]:
    removed = compiled_files(tree)
    for path in removed:
        path.unlink()
    return removed


def build_wheel(tree: Path, workdir: Path) -> Path:
    """Build TREE's compiled wheel (or fail), from a copy of TREE; return its path."""
    source = workdir / "src"
    shutil.copytree(tree, source, ignore=_SKIP)
    env = dict(os.environ, HUSHDNS_COMPILE="require")
    out = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]
    subprocess.run(cmd, env=env, check=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def unpack(wheel: Path, tree: Path) -> list[Path]:
    """Extract the wheel's compiled files into TREE, at their places in the wheel."""
    written: list[Path] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith((".so", ".pyd")):
                target = tree / name
                if not target.parent.is_dir():
                    raise SystemExit(f"{name}: {target.parent} is not in {tree}")
                target.write_bytes(zf.read(name))
                written.append(target)
    return written


def wire_module(tree: Path) -> str:
    """The file ``resolver.wire`` imports from in ``tree`` (a .so: the compiled build), or ""
    when it does not import there."""
    got = subprocess.run([sys.executable, "-c", "import resolver.wire as w; print(w.__file__)"],
                         cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    return got.stdout.strip() if got.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree", nargs="?", type=Path, default=REPO_ROOT,
                    help="source tree to compile into (default: this checkout)")
    ap.add_argument("--clean", action="store_true", help="remove the compiled files instead")
    args = ap.parse_args(argv)
    tree: Path = args.tree.resolve()

    removed = clean(tree)
    if args.clean:
        print(f"compile.py: removed {len(removed)} compiled files from {tree}")
        return 0

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hushdns-compile-") as tmp:
        wheel = build_wheel(tree, Path(tmp))
        written = unpack(wheel, tree)
    took = time.monotonic() - start
    modules = compiled_modules(tree)
    missing = [m for m in modules
               if not any(p.parent == (tree / m).parent and p.name.startswith(Path(m).stem + ".")
                          for p in written)]
    if missing:
        clean(tree)
        raise SystemExit(f"compile.py: the wheel has no compiled module for {missing}")
    # The tree's own interpreter must now pick the .so over the .py.
    probe = wire_module(tree)
    if not probe.endswith((".so", ".pyd")):
        raise SystemExit(f"compile.py: resolver.wire still imports from {probe}")
    print(f"compile.py: {len(modules)} modules compiled into {tree} in {took:.0f} s "
          f"({len(written)} files; resolver.wire is {Path(probe).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The examples the docs show are what the program prints.

A fenced block whose first line is ``$ hushdns ...`` is run (in a fresh directory holding
every file the same document defined before it: a fenced block whose first line is
``# NAME.yaml`` or ``# NAME.txt``) and its output compared line by line with the lines the
doc shows: ``...`` inside a line matches any text, a line that is only ``...`` any number
of lines. A block that cannot run here (it would need the network) is preceded by
``<!-- example: not run -->``.  No command reaches the network: URL lists in examples are
read from disk copies, and there are none.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "configuration.md", ROOT / "docs" / "lists.md",
        ROOT / "docs" / "household.md"]
FENCE = re.compile(r"(<!-- example: not run -->\s*)?^```[a-z]*\n(.*?)^```", re.M | re.S)
FILE = re.compile(r"# ([\w./-]+\.(?:yaml|txt))$")


def examples(doc: Path) -> list[tuple[str, str, dict[str, str], bool]]:
    """(command, shown output, files defined so far, run it?) per ``$ hushdns`` block."""
    files: dict[str, str] = {}
    out = []
    for m in FENCE.finditer(doc.read_text()):
        body = m.group(2)
        first, _, rest = body.partition("\n")
        f = FILE.fullmatch(first.strip())
        if f and not first.startswith("$"):
            files[f.group(1)] = body   # the name line is a comment in YAML and lists alike
        elif first.startswith("$ hushdns "):
            out.append((first[2:], rest, dict(files), m.group(1) is None))
    return out


CASES = [pytest.param(cmd, shown, files, id=f"{doc.name}: {cmd}")
         for doc in DOCS for cmd, shown, files, run in examples(doc) if run]


def _matches(shown: list[str], got: list[str]) -> bool:
    if not shown:
        return not got
    if shown[0] == "...":
        return any(_matches(shown[1:], got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(map(re.escape, shown[0].split("...")))
    return re.fullmatch(pattern, got[0]) is not None and _matches(shown[1:], got[1:])


def test_there_are_examples_in_every_doc() -> None:
    for doc in DOCS:
        assert examples(doc), f"{doc.name} shows no `$ hushdns` example"


@pytest.mark.parametrize(("cmd", "shown", "files"), CASES)
def test_documented_output(tmp_path: Path, cmd: str, shown: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "state").mkdir()
    argv = shlex.split(cmd)
    out = subprocess.run([sys.executable, "-m", "resolver", *argv[1:]], cwd=tmp_path, timeout=60,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "STATE_DIRECTORY": str(tmp_path / "state")})
    got = out.stdout.rstrip("\n").splitlines()
    want = shown.rstrip("\n").splitlines()
    assert _matches(want, got), "documented:\n" + "\n".join(want) + "\n\nprinted:\n" + out.stdout

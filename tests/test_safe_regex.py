"""Regex rules that could backtrack catastrophically are refused at load, with file:line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from resolver.cli import main
from resolver.lists.index import DomainIndex
from resolver.lists.parse import parse_text
from resolver.lists.safe_regex import UnsafeRegex, check

UNSAFE = ["(a+)+$", "(a*)*", r"(\w+\.?)+$", "(.*a)+$", "(a|a)*$", "(ab|a.)*$", "(x|xy|xyz)+$",
          ".*a.*b", r"(a)\1", "(?=a)b", "(?<!x)y", "[a-z]*[a-z]*b", "(a{1,10}){1,10}x",
          "((ab)*)+c", "(a|b|ab)*c", "(a)?(?(1)a|b)"]
SAFE = [r"^ads?[0-9]*\.", r"(?:[a-z0-9]+\.)*ads\.example$", r"^.*track.*$", r"(com|net)+",
        r"^(www|ads)\.example\.com$", "telemetry", r"^[a-z0-9-]+\.tracking\.", r".*tracker",
        r"^([a-z0-9-]+\.)*ads\.[a-z]+$", r"^(.+[_.-])?adse?rv(er?|ice)?s?[0-9]*[_.-]",
        r"^(.+\.)?doubleclick\.net$"]


@pytest.mark.parametrize("pattern", UNSAFE)
def test_unsafe_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(UnsafeRegex):
        check(pattern)


@pytest.mark.parametrize("pattern", SAFE)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    check(pattern)


def test_check_rejects_catastrophic_regex_with_file_and_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "bl.txt").write_text("tracker.example\n/(a+)+$/\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("blocking:\n  lists:\n    bl: bl.txt\nmetrics: {listen: null}\n")
    assert main(["check", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'bl.txt'}:2: unsafe regex: nested quantifiers" in out, out


def test_match_time_is_bounded_for_an_accepted_rule_set() -> None:
    text = "\n".join(f"/{p}/" for p in UNSAFE + SAFE)
    parsed = parse_text(text)
    assert len(parsed.regexes) == len(SAFE)
    assert len(parsed.rejected) == len(UNSAFE)
    index = DomainIndex()
    index.add(1, parsed)
    for name in ("a" * 24 + "b.example", "a" * 240 + ".b", ("ab" * 120)[:240] + ".x",
                 "-" * 200 + ".example", "a." * 120 + "x"):
        t0 = time.perf_counter()
        index.match(name, 1, 0)
        assert time.perf_counter() - t0 < 0.02, name

"""docs/examples/pre-commit in a real git repository: it must judge what is staged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "docs" / "examples"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")

# Stands in for hushdns: records each call, rejects any file containing BAD.
STUB = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  check) target="$3" ;;
  lists) target="$3" ;;
  *) exit 2 ;;
esac
if grep -rq BAD "$target"; then echo "stub: $target is bad" >&2; exit 1; fi
exit 0
"""


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    work = tmp_path / "hushdns-config"
    (work / "lists").mkdir(parents=True)
    (work / "config.yaml").write_text("blocking: {lists: {household: lists/household.txt}}\n")
    (work / "lists" / "household.txt").write_text("tracker.example  # phones home\n")
    log = tmp_path / "calls.log"
    stub = tmp_path / "hushdns"
    stub.write_text(STUB.format(log=log))
    stub.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "HUSHDNS": str(stub),
    }
    git(work, env, "init", "-q")
    git(work, env, "config", "core.hooksPath", str(HOOKS))
    return work, env, log


def git(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(work), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def commit(work: Path, env: dict[str, str], *paths: str) -> subprocess.CompletedProcess[str]:
    git(work, env, "add", *paths)
    return git(work, env, "commit", "-q", "-m", "change")


def test_good_tree_commits_after_check_and_lint(repo: tuple[Path, dict[str, str], Path]) -> None:
    work, env, log = repo
    result = commit(work, env, ".")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["check -c config.yaml", "lists lint lists"]


def test_bad_staged_list_is_refused_even_if_fixed_in_worktree(
    repo: tuple[Path, dict[str, str], Path],
) -> None:
    work, env, _log = repo
    assert commit(work, env, ".").returncode == 0
    household = work / "lists" / "household.txt"
    household.write_text("BAD rule\n")
    git(work, env, "add", "lists")
    household.write_text("fixed.example  # fixed, but not staged\n")
    result = git(work, env, "commit", "-q", "-m", "bad")
    assert result.returncode != 0
    assert "commit refused" in result.stderr
    assert "lists is bad" in result.stderr


def test_bad_worktree_does_not_block_a_good_staged_change(
    repo: tuple[Path, dict[str, str], Path],
) -> None:
    work, env, _log = repo
    assert commit(work, env, ".").returncode == 0
    (work / "config.yaml").write_text("# still good\nblocking: {}\n")
    git(work, env, "add", "config.yaml")
    (work / "lists" / "household.txt").write_text("BAD, not staged\n")
    result = git(work, env, "commit", "-q", "-m", "good")
    assert result.returncode == 0, result.stderr


def test_bad_config_is_refused(repo: tuple[Path, dict[str, str], Path]) -> None:
    work, env, _log = repo
    (work / "config.yaml").write_text("BAD: yes\n")
    result = commit(work, env, ".")
    assert result.returncode != 0
    assert "config.yaml is bad" in result.stderr


def test_hook_with_the_real_check(repo: tuple[Path, dict[str, str], Path]) -> None:
    """The hook's command line is one hushdns really accepts, and its verdict stops commits."""
    work, env, _log = repo
    env = {**env, "HUSHDNS": f"{sys.executable} -m resolver", "PYTHONPATH": str(ROOT),
           "HUSHDNS_LINT_PATHS": ""}
    (work / "config.yaml").write_text(
        'listen: ["127.0.0.1:5533"]\nupstreams: ["192.0.2.53:53"]\n'
        "blocking: {lists: {household: lists/household.txt}}\n"
    )
    (work / "lists" / "household.txt").write_text("tracker.example\n")
    result = commit(work, env, ".")
    assert result.returncode == 0, result.stdout + result.stderr
    (work / "config.yaml").write_text(
        'listen: ["127.0.0.1:5533"]\nupstreams: ["192.0.2.53:53"]\n'
        "blocking: {lists: {household: lists/missing.txt}}\n"
    )
    result = commit(work, env, ".")
    assert result.returncode != 0
    assert "missing.txt" in result.stdout + result.stderr


def test_hook_lints_household_lists_by_their_rules_only(repo: tuple[Path, dict[str, str], Path]) -> None:
    """The real hook with lint on: a plain household list (no header, no comments) commits;
    a line that is not a rule is refused, naming file and line."""
    work, env, _log = repo
    env = {**env, "HUSHDNS": f"{sys.executable} -m resolver", "PYTHONPATH": str(ROOT)}
    (work / "config.yaml").write_text(
        'listen: ["127.0.0.1:5533"]\nupstreams: ["192.0.2.53:53"]\n'
        "blocking: {lists: {household: lists/household.txt}, allow: {anna: lists/allow.txt}}\n"
    )
    (work / "lists" / "household.txt").write_text("tracker.example\n||ads.example.net^\n")
    (work / "lists" / "allow.txt").write_text("# tier: allow\nfind.example.com  # Find Device\n")
    result = commit(work, env, ".")
    assert result.returncode == 0, result.stdout + result.stderr
    (work / "lists" / "household.txt").write_text("tracker.example\nnot a rule at all\n")
    result = commit(work, env, ".")
    assert result.returncode != 0
    assert "lists/household.txt:2: not a rule" in result.stdout + result.stderr

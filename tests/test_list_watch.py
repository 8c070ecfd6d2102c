"""Local list files are watched: an edit (or a ``git pull``) takes effect while serving."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dns.rcode

from tests.conftest import ask
from tests.fakes import ServerThread


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def blocked(srv: ServerThread, name: str) -> bool:
    return ask(srv, name).rcode() == dns.rcode.NXDOMAIN


def replace(path: Path, text: str) -> None:
    """Write a new version the way git does: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_an_edited_list_file_takes_effect_and_a_broken_one_is_refused(serve, tmp_path: Path) -> None:
    srv = serve(lists={"local": "first.example  # v1\n"})
    path = tmp_path / "local.txt"
    assert blocked(srv, "x.first.example")
    assert not blocked(srv, "second.example")     # forwarded (and now cached)
    replace(path, "# v2\nsecond.example  # v2\n")
    wait_for(lambda: blocked(srv, "second.example"), what="the edited list")
    assert not blocked(srv, "x.first.example")
    assert srv.server.lists.lists["local"].entries == 1

    failures = srv.stats.list_load_failures.get("local", 0)
    replace(path, "<html>\n<body>\nNot Found\n</body>\n</html>\nthird.example\n")
    wait_for(lambda: srv.stats.list_load_failures.get("local", 0) > failures,
             what="the broken version to be refused")
    assert blocked(srv, "second.example")
    assert not blocked(srv, "third.example")
    assert "not rules" in srv.server.lists.lists["local"].error

    replace(path, "# v3\nthird.example  # v3\n")      # fixed: served again
    wait_for(lambda: blocked(srv, "third.example"), what="the fixed list")
    assert srv.server.lists.lists["local"].error is None


def test_a_list_directory_is_watched(serve, tmp_path: Path) -> None:
    d = tmp_path / "mylists"
    d.mkdir()
    (d / "a.txt").write_text("a.example\n")
    srv = serve(extra=f"blocking:\n  lists:\n    mine: {d}\n")
    assert blocked(srv, "a.example")
    (d / "b.txt").write_text("b.example\n")             # a new file in the directory
    wait_for(lambda: blocked(srv, "b.example"), what="the new file")
    (d / "a.txt").unlink()
    wait_for(lambda: not blocked(srv, "a.example"), what="the removed file")
    assert blocked(srv, "b.example")


def test_a_deleted_list_file_keeps_the_last_good_version(serve, tmp_path: Path) -> None:
    srv = serve(lists={"local": "first.example  # v1\n"})
    failures = srv.stats.list_load_failures.get("local", 0)
    (tmp_path / "local.txt").unlink()
    wait_for(lambda: srv.stats.list_load_failures.get("local", 0) > failures,
             what="the missing file to be noticed")
    assert blocked(srv, "first.example")

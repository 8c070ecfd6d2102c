"""Local list files that are not what they should be: FIFOs, devices, directories, huge or
truncated files.  Nothing blocks, nothing grows without bound, the last good list keeps serving."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import dns.rcode
import pytest

from resolver.config import load_config
from resolver.lists import loader
from tests.conftest import ask
from tests.fakes import FakeUpstream, start_server


def _setup(tmp_path: Path, extra: str = "") -> tuple[Path, object, loader.Blocklists]:
    lst = tmp_path / "bl.txt"
    lst.write_text("tracker.example\nads.example\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"blocking:\n  lists:\n    bl: {{source: bl.txt{extra}}}\nmetrics: {{listen: null}}\n")
    config = load_config(cfg)
    first = loader.load_all(config)
    assert first.lists["bl"].entries == 2
    return lst, config, first


def _reload_lists(config, previous) -> loader.Blocklists:
    """load_all in a thread with a deadline: a blocking open would fail the test, not hang it."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(loader.load_all, config, previous).result(timeout=5)


def _replace(lst: Path, kind: str, tmp_path: Path) -> None:
    lst.unlink()
    if kind == "fifo":
        os.mkfifo(lst)
    elif kind == "devzero":
        lst.symlink_to("/dev/zero")
    elif kind == "dir":
        lst.mkdir()


@pytest.mark.parametrize(("kind", "words"), [("fifo", "FIFO"), ("devzero", "character device"),
                                              ("dir", "directory")])
def test_non_regular_file_is_refused_without_blocking_and_old_list_serves(
        tmp_path: Path, kind: str, words: str) -> None:
    lst, config, first = _setup(tmp_path)
    _replace(lst, kind, tmp_path)
    snap = _reload_lists(config, first)
    info = snap.lists["bl"]
    assert info.error and words in info.error, info.error
    assert info.entries == 2 and snap.index.match("tracker.example", info.bit, 0) is not None
    # A FIFO left there must not keep blocking anyone: open a writer-less read again.
    _reload_lists(config, snap)


def test_file_above_max_size_is_refused(tmp_path: Path) -> None:
    lst, config, first = _setup(tmp_path, ", max_size: 100")
    lst.write_text("".join(f"host{i}.example\n" for i in range(50)))
    snap = _reload_lists(config, first)
    assert "max_size" in (snap.lists["bl"].error or "")
    assert snap.lists["bl"].entries == 2


def test_default_max_size_is_64_mib(tmp_path: Path) -> None:
    _, config, _ = _setup(tmp_path)
    assert config.blocking.lists["bl"].max_size == 64 * 1024 * 1024


def test_truncated_to_empty_keeps_the_last_good_list(tmp_path: Path) -> None:
    lst, config, first = _setup(tmp_path)
    lst.write_text("")
    snap = _reload_lists(config, first)
    assert "no entries now" in (snap.lists["bl"].error or "")
    assert snap.lists["bl"].entries == 2
    assert snap.index.match("ads.example", snap.lists["bl"].bit, 0) is not None


def test_allow_empty_accepts_an_emptied_list(tmp_path: Path) -> None:
    lst, config, first = _setup(tmp_path, ", allow_empty: true")
    lst.write_text("# nothing blocked right now\n")
    snap = _reload_lists(config, first)
    assert snap.lists["bl"].error is None and snap.lists["bl"].entries == 0


def test_running_server_survives_a_fifo_list_and_still_stops(tmp_path: Path) -> None:
    up = FakeUpstream()
    srv = start_server(tmp_path, up, lists={"bl": "tracker.example\n"})
    try:
        lst = tmp_path / "bl.txt"
        lst.unlink()
        os.mkfifo(lst)
        assert srv.reload() is False   # the config names a FIFO: refused, not opened
        assert srv.stats.config_reload_success == 0
        # The list watcher sees the change and reads the path: refused, not blocked on.
        deadline = time.monotonic() + 10
        while not srv.stats.list_load_failures.get("bl"):
            assert time.monotonic() < deadline, "the watcher never tried the FIFO"
            time.sleep(0.2)
        assert ask(srv, "tracker.example").rcode() == dns.rcode.NXDOMAIN
        assert srv.stats.config_reload_success == 0
    finally:
        srv.stop()
        up.close()

"""The query log end to end: a real server, a fake upstream, dnspython queries, the real CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.rcode
import pytest

from resolver.cli import main
from resolver.config import QueryLog as Settings
from resolver.metrics import render
from resolver.querylog import CHUNK_ROWS, frames, reader
from resolver.querylog.writer import Writer
from resolver.stats import Stats
from tests.conftest import ask

ROOT = Path(__file__).resolve().parent.parent
LISTS = {"xiaomi": "tracking.miui.com\n"}
TV = 'clients:\n  tv: ["127.0.0.1/32"]\n'


def _flush(srv) -> None:
    srv.server.querylog.flush()


def _log(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _traffic(srv) -> None:
    """A blocked name twice, a forwarded name then its cache hit, an AAAA, an NXDOMAIN."""
    for _ in range(2):
        assert ask(srv, "x.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    ask(srv, "api.miui.com")
    ask(srv, "api.miui.com")
    ask(srv, "example.org", "AAAA")
    ask(srv, "nx.example.org")


def test_log_shows_every_answer_with_result_and_list(serve, tmp_path, capsys, monkeypatch):
    srv = serve(TV, lists=LISTS)
    assert srv.server.memo is not None   # the reply memo answers repeats, and records them
    _traffic(srv)
    _flush(srv)
    monkeypatch.chdir(tmp_path)
    rows = _log(capsys, "-c", "config.yaml")
    got = [(r["device"], r["client"], r["name"], r["type"], r["result"], r["list"]) for r in rows]
    assert got == [
        ("tv", "127.0.0.1", "x.tracking.miui.com", "A", "blocked", "xiaomi"),
        ("tv", "127.0.0.1", "x.tracking.miui.com", "A", "blocked", "xiaomi"),   # now remembered
        ("tv", "127.0.0.1", "api.miui.com", "A", "forwarded", None),
        ("tv", "127.0.0.1", "api.miui.com", "A", "cached", None),
        ("tv", "127.0.0.1", "example.org", "AAAA", "forwarded", None),
        ("tv", "127.0.0.1", "nx.example.org", "A", "forwarded", None),
    ]
    assert rows[0]["rule"] == "tracking.miui.com" and rows[1]["rule"] == "tracking.miui.com"
    assert [r["rcode"] for r in rows] == ["NXDOMAIN", "NXDOMAIN", "NOERROR", "NOERROR", "NOERROR",
                                         "NXDOMAIN"]
    assert rows[2]["upstream"] and rows[2]["latency_ms"] > 0
    assert all(r["time"].endswith("Z") for r in rows)
    # Filters.
    assert [r["name"] for r in _log(capsys, "-c", "config.yaml", "--blocked")] == \
        ["x.tracking.miui.com"] * 2
    assert len(_log(capsys, "-c", "config.yaml", "--allowed")) == 4
    assert [r["name"] for r in _log(capsys, "-c", "config.yaml", "--name", "*.ORG")] == \
        ["example.org", "nx.example.org"]
    assert len(_log(capsys, "-c", "config.yaml", "--device", "tv", "--since", "1h")) == 6
    assert _log(capsys, "-c", "config.yaml", "--device", "nobody") == []
    assert len(_log(capsys, "-c", "config.yaml", "--device", "127.0.0.1")) == 6   # by address
    assert len(_log(capsys, "-c", "config.yaml", "--limit", "2")) == 2
    # CSV: a header and one line per row.
    capsys.readouterr()
    assert main(["log", "--csv", "-c", "config.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("time,device,client,name,type,result,list") and len(lines) == 7
    # Metrics: the inventory's new names, read at scrape time.
    text = render(srv.stats).decode()
    assert 'hushdns_device_new_names_total{client="tv"} 4.0' in text
    assert "hushdns_querylog_written_total 6.0" in text


def test_log_cli_reads_while_the_server_writes(serve, tmp_path):
    """The real command in its own process, read-only beside the running writer; --follow."""
    srv = serve(TV, lists=LISTS)
    ask(srv, "x.tracking.miui.com")
    _flush(srv)
    env = {**os.environ}
    cmd = [sys.executable, "-m", "resolver", "log", "--json", "-c", str(tmp_path / "config.yaml")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == "blocked"
    follow = subprocess.Popen([*cmd, "--follow", "--limit", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(follow.stdout.readline())["name"] == "x.tracking.miui.com"
        ask(srv, "later.example.org")
        assert json.loads(follow.stdout.readline())["name"] == "later.example.org"
    finally:
        follow.kill()
        follow.wait()


@pytest.mark.parametrize("privacy", ["no-addresses", "blocked-only"])
def test_privacy_modes(serve, tmp_path, capsys, monkeypatch, privacy):
    srv = serve(TV + f"query_log: {{privacy: {privacy}}}\n", lists=LISTS)
    _traffic(srv)
    _flush(srv)
    rows = _log(capsys, "-c", str(tmp_path / "config.yaml"))
    db = sqlite3.connect(srv.config.query_log.path)
    if privacy == "no-addresses":
        assert len(rows) == 6 and {r["client"] for r in rows} == {None}
        assert {r["device"] for r in rows} == {"tv"}
        assert db.execute("SELECT count(*) FROM addresses").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM strings WHERE s = '127.0.0.1'").fetchone()[0] == 0
    else:
        assert [r["result"] for r in rows] == ["blocked", "blocked"]
        assert db.execute("SELECT count(*) FROM seen").fetchone()[0] == 1   # the inventory too


def test_memo_answers_get_their_rows_too(serve, tmp_path, capsys, monkeypatch):
    srv = serve(TV, lists=LISTS)
    assert srv.server.memo is not None
    memo_answers = srv.server.stats.memo_counts   # (answers given, replies remembered)
    before = memo_answers()[0]
    for _ in range(4):
        assert ask(srv, "x.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    assert memo_answers()[0] - before >= 1     # the repeats after the second came from the memo
    _flush(srv)
    monkeypatch.chdir(tmp_path)
    rows = _log(capsys, "-c", "config.yaml")
    assert [(r["name"], r["result"], r["list"], r["rule"], r["rcode"]) for r in rows] == [
        ("x.tracking.miui.com", "blocked", "xiaomi", "tracking.miui.com", "NXDOMAIN")] * 4


def test_off_stores_nothing(serve, tmp_path, capsys):
    srv = serve(TV + "query_log: {privacy: off}\n", lists=LISTS)
    ask(srv, "x.tracking.miui.com")
    assert srv.server.querylog is None and srv.server.memo is not None
    assert not Path(srv.config.query_log.path).exists()
    assert main(["log", "-c", str(tmp_path / "config.yaml")]) == 1
    assert "query log is off" in capsys.readouterr().err


def test_reload_turns_the_log_off_and_on(serve, tmp_path):
    srv = serve(TV, lists=LISTS)
    assert srv.server.querylog is not None
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cfg.read_text() + "query_log: false\n")
    assert srv.reload()
    assert srv.server.querylog is None and srv.server.pipeline.record is None
    assert srv.server.querylog is None
    assert ask(srv, "x.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(path=str(tmp_path / "ql" / "q.sqlite"), **kw)


def _row(t: float, name: str, device: str = "tv", result: str = "forwarded") -> tuple:
    """A row as the hot path queues it (querylog/frames.py); ``t`` is wall time (offset 0)."""
    return (t, 0.002, device, "192.168.1.9", (name, 1, None, None, result, 0, "192.0.2.53:53"))


def test_retention_prunes_rows_and_keeps_the_inventory(tmp_path):
    stats = Stats()
    w = Writer(_settings(tmp_path, retention=86_400), stats)
    now = time.time()
    w.write_batches([(0.0, [_row(now - 10 * 86_400, "old.example.com"), _row(now, "new.example.com")])])
    w.close()   # (the first write_batches prunes: retention is due at once)
    db = reader.connect(w.settings.path)
    assert [r["name"] for r in reader.rows(db, reader.Filter())] == ["new.example.com"]
    names = sorted(ep.name for _, ep in reader.endpoints(db, "tv"))
    assert names == ["new.example.com", "old.example.com"]
    assert [ep.name for _, ep in reader.endpoints(db, "tv", now - 7 * 86_400)] == ["new.example.com"]


def test_a_flood_of_new_names_keeps_the_writers_tables_bounded_and_loses_no_inventory(
        tmp_path, monkeypatch):
    """A device resolving ever-new names (or a benchmark) must not grow the writer without
    bound: the id caches are capped and the inventory is written early once it holds
    MAX_UNWRITTEN pairs (300k first-sight names took ~190 MiB before, bench/README.md)."""
    from resolver.querylog import writer as writer_mod

    monkeypatch.setattr(writer_mod, "MAX_CACHED", 1_000)
    monkeypatch.setattr(writer_mod, "MAX_UNWRITTEN", 500)
    w = Writer(_settings(tmp_path), Stats())
    now = time.time()
    for b in range(0, 6_000, 200):
        w.write_batches([(0.0, [_row(now + i / 1e3, f"r{i}.flood.example") for i in range(b, b + 200)])])
        assert len(w.ids) <= 1_000 and len(w.whats) <= 1_001 and len(w.known) <= 1_000
        assert sum(len(per) for per in w.agg_seen.values()) < 500 + 200
    w.close()
    db = reader.connect(w.settings.path)
    names = {ep.name for _, ep in reader.endpoints(db, "tv")}
    assert names == {f"r{i}.flood.example" for i in range(6_000)}   # the inventory is whole


@pytest.mark.parametrize(("cap", "reopen"), [(100_000, False), (300, False), (100_000, True)])
def test_strings_are_interned_in_bulk_once_each_across_batches_and_cache_resets(
        tmp_path, monkeypatch, cap, reopen):
    """The writer interns a batch's new strings with one SELECT per chunk and one insert
    (ids max+1...): every row must still name its own string, each string must be stored
    once, whether it is new, in memory, or only in the file (after a cache reset, or a new
    connection)."""
    from resolver.querylog import writer as writer_mod

    monkeypatch.setattr(writer_mod, "MAX_CACHED", cap)   # 300: a reset every batch
    w = Writer(_settings(tmp_path), Stats())
    now = time.time()
    sent: list[tuple[str, str]] = []
    for b in range(6):
        rows = []
        for i in range(700):   # half new each batch, half seen two batches ago
            name = f"n{(b * 350 + i) % 2100}.bulk.example"
            device = f"dev{i % 7}"
            rows.append(_row(now + len(sent) / 1e3, name, device=device))
            sent.append((device, name))
        w.write_batches([(0.0, rows)])
        if reopen:   # a new connection: ids must come from the file
            w.close()
            w = Writer(_settings(tmp_path), Stats())
    w.close()
    db = sqlite3.connect(w.settings.path)
    got = db.execute("SELECT d.s, n.s FROM queries q JOIN strings d ON d.id = q.device "
                     "JOIN strings n ON n.id = q.name ORDER BY q.rowid").fetchall()
    assert got == sent
    total, unique = db.execute("SELECT count(*), count(DISTINCT s) FROM strings").fetchone()
    assert total == unique
    want = {s for pair in sent for s in pair} | {"192.168.1.9", "192.0.2.53:53"}
    assert {s for (s,) in db.execute("SELECT s FROM strings")} == want


def test_size_bound_deletes_the_oldest_rows(tmp_path):
    stats = Stats()
    w = Writer(_settings(tmp_path, max_size=400_000), stats)
    now = time.time()
    w.write_batches([(0.0, [_row(now - 30_000 + i, f"host{i}.example.com") for i in range(30_000)])])
    w.next_prune = 0
    w.maintain()
    w.close()
    db = sqlite3.connect(w.settings.path)
    kept = db.execute("SELECT count(*), min(rowid) FROM queries").fetchone()
    used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count")
            .fetchone()[0]) * db.execute("PRAGMA page_size").fetchone()[0]
    assert 0 < kept[0] < 30_000 and kept[1] > 1          # the oldest went
    assert db.execute("SELECT count(*) FROM queries").fetchone()[0] == kept[0]
    assert used <= 400_000 * 1.25 or kept[0] == 0 or stats.querylog_dropped


def _on_loop(srv, fn, items) -> None:
    """``fn(item)`` for each item, on the server's loop (where the log's rows are queued)."""
    asyncio.run_coroutine_threadsafe(_each(fn, items), srv.loop).result(30)


async def _each(fn, items) -> None:
    for x in items:
        fn(x)


def test_a_stalled_writer_drops_and_counts_and_dns_keeps_answering(serve):
    """A writer process that stops reading (a hung disk): the pipe fills, the server keeps at
    most ``max_pending`` bytes and drops the rest, counted; answers go on; every row is
    either written or counted as dropped."""
    srv = serve(TV, lists=LISTS)
    ql = srv.server.querylog
    assert ask(srv, "x.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    assert ql.flush()
    ql.max_pending = 64 * 1024
    pid = ql._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        # ~45 bytes each: 4.5 MB, more than the 1 MiB pipe and the 64 KiB bound
        rows = [(t0, 0.001, "tv", "127.0.0.1", (f"n{i}.example.com", 1, None, None, "forwarded", 0,
                                                 None)) for i in range(100_000)]
        _on_loop(srv, ql.record, rows)
        deadline = time.monotonic() + 10
        while not srv.stats.querylog_dropped.get("queue_full") or ql.rows:
            assert time.monotonic() < deadline, (srv.stats.querylog_dropped, len(ql.rows))
            time.sleep(0.02)
        assert ask(srv, "y.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
        assert ql._pending_bytes <= 64 * 1024 + 100_000, ql._pending_bytes   # + one chunk
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ql.flush()
    dropped = srv.stats.querylog_dropped["queue_full"]
    assert 0 < dropped < 100_000
    assert srv.stats.querylog_written + dropped == 100_002
    assert f'hushdns_querylog_dropped_total{{reason="queue_full"}} {dropped}.0' in render(srv.stats).decode()


def test_full_disk_dns_keeps_answering(serve, capfd):
    """A database that cannot grow (max_page_count: a full disk to SQLite): answers go on,
    the rows are counted as dropped, and the log says so once."""
    srv = serve(TV, lists=LISTS)
    srv.server.querylog.page_limit = 12   # before the first rows start the writer process
    for batch in range(3):
        for i in range(60):
            assert ask(srv, f"h{batch}-{i}-{'x' * 40}.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
        _flush(srv)
    dropped = srv.stats.querylog_dropped
    assert dropped.get("disk_full", 0) >= 60, dropped
    err = capfd.readouterr().err   # the writer process logs to the server's stderr
    assert err.count("(disk_full)") == 1, err


def test_corrupt_file_is_moved_aside_and_a_new_log_starts(serve, tmp_path, capfd):
    state = Path(os.environ["STATE_DIRECTORY"])
    state.mkdir(parents=True, exist_ok=True)
    (state / "querylog.sqlite").write_bytes(b"this is not a database, " * 400)
    srv = serve(TV, lists=LISTS)
    assert ask(srv, "x.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    _flush(srv)
    aside = list(state.glob("querylog.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    err = capfd.readouterr().err
    assert "moved aside" in err
    assert [r["name"] for r in _log(capfd, "-c", str(tmp_path / "config.yaml"))] == \
        ["x.tracking.miui.com"]


def test_corrupt_while_running_drops_counts_and_rotates(tmp_path):
    """A write that finds the file damaged: the batch is dropped and counted, the file moved aside."""
    stats = Stats()
    w = Writer(_settings(tmp_path), stats)
    w.write([_row(time.time(), "a.example.com")])
    w.db.close()
    path = Path(w.settings.path)
    with path.open("r+b") as f:       # the header and the first pages overwritten
        f.write(b"\xff" * 8192)
    for ext in ("-wal", "-shm"):
        Path(str(path) + ext).unlink(missing_ok=True)
    w.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    w.write([_row(time.time(), "b.example.com")])
    assert stats.querylog_dropped.get("corrupt") == 1
    assert list(path.parent.glob("q.sqlite.corrupt-*"))
    w.write([_row(time.time(), "c.example.com")])      # a new file
    db = reader.connect(str(path))
    assert [r["name"] for r in reader.rows(db, reader.Filter())] == ["c.example.com"]


def test_two_writers_on_one_file_keep_every_row_and_count_each_new_name_once(tmp_path):
    """``workers: N``: one writer per worker, one file.  The race that once cost the whole log:
    A stores a new name, B stores a row for it and writes its inventory first, then A's
    inventory (which took "stored here first" for "no seen row yet") hit the seen row's key,
    the constraint error was read as a corrupt file, and the file was moved aside."""
    sa, sb = Stats(), Stats()
    a = Writer(_settings(tmp_path), sa, shared=True)
    b = Writer(_settings(tmp_path), sb, shared=True)
    now = time.time()
    a.write([_row(now, "x.example.com")])          # A makes the name's string id
    b.write([_row(now + 1, "x.example.com", result="blocked")])
    b.sync()                                        # B's seen row first
    a.write([_row(now + 2, "x.example.com")])
    a.sync()
    a.close()
    b.close()
    assert not list(Path(a.settings.path).parent.glob("*corrupt*"))
    assert sa.querylog_dropped == {} and sb.querylog_dropped == {}
    assert sa.querylog_written + sb.querylog_written == 3
    db = reader.connect(a.settings.path)
    (dev, ep), = reader.endpoints(db, "tv")
    assert (ep.name, ep.count, ep.blocked) == ("x.example.com", 3, 1)
    assert ep.verdict == "forwarded"                # the latest row's verdict, whoever wrote it
    # New for the device once, over both writers (the metric the supervisor adds up).
    assert sum(sa.device_new_names.values()) + sum(sb.device_new_names.values()) == 1


def test_a_file_moved_aside_or_deleted_under_a_writer_is_left_for_the_one_at_the_path(tmp_path):
    """workers: N -- another writer moved a corrupt file aside (or a user deleted the log):
    this writer's next rows go to the file now at the path, not to the old inode, and its own
    rotation never moves the other writer's new file aside."""
    path = Path(_settings(tmp_path).path)
    a = Writer(_settings(tmp_path), Stats(), shared=True)
    a.write([_row(time.time(), "one.example.com")])
    aside = path.with_name("q.sqlite.corrupt-other")
    for ext in ("", "-wal", "-shm"):                              # what the other writer does
        if Path(str(path) + ext).exists():
            os.replace(str(path) + ext, str(aside) + ext)
    b = Writer(_settings(tmp_path), Stats(), shared=True)
    b.write([_row(time.time(), "two.example.com")])               # the new file at the path
    a._rotate()                  # a's own (late) verdict on the file it had open
    assert path.exists()
    a.write([_row(time.time(), "three.example.com")])
    b.sync()
    now_there = reader.connect(str(path))
    assert [r["name"] for r in reader.rows(now_there, reader.Filter())] == \
        ["two.example.com", "three.example.com"]
    now_there.close()
    path.unlink()                # a user starting afresh
    for ext in ("-wal", "-shm"):
        Path(str(path) + ext).unlink(missing_ok=True)
    a.write([_row(time.time(), "four.example.com")])
    a.close()
    b.close()
    db = reader.connect(str(path))
    assert [r["name"] for r in reader.rows(db, reader.Filter())] == ["four.example.com"]
    old = reader.connect(str(aside))
    assert [r["name"] for r in reader.rows(old, reader.Filter())] == ["one.example.com"]


def test_a_constraint_error_drops_the_batch_but_never_moves_the_file_aside(tmp_path):
    stats = Stats()
    w = Writer(_settings(tmp_path), stats)
    w.write([_row(time.time(), "a.example.com")])

    def fail(*_a):
        raise sqlite3.IntegrityError("UNIQUE constraint failed: seen.device, seen.name")

    w._insert = fail
    w.write([_row(time.time(), "b.example.com")])
    assert stats.querylog_dropped == {"error": 1}
    assert not list(Path(w.settings.path).parent.glob("*corrupt*"))
    del w._insert
    w.write([_row(time.time(), "c.example.com")])
    w.close()
    db = reader.connect(w.settings.path)
    assert [r["name"] for r in reader.rows(db, reader.Filter())] == ["a.example.com", "c.example.com"]


def test_locked_database_drops_and_recovers(tmp_path, caplog):
    stats = Stats()
    w = Writer(_settings(tmp_path), stats)
    w.write([_row(time.time(), "a.example.com")])
    w.db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(w.settings.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    caplog.set_level(logging.WARNING, logger="hushdns.querylog")
    w.write([_row(time.time(), "b.example.com")])
    assert stats.querylog_dropped == {"locked": 1}
    other.execute("ROLLBACK")
    w.write([_row(time.time(), "c.example.com")])
    assert stats.querylog_written == 2
    assert any("again" in r.getMessage() for r in caplog.records)


def test_devices_device_and_suggest_on_a_real_log(serve, tmp_path, capsys):
    srv = serve('clients:\n  tv: ["127.0.0.1/32"]\n  phone: ["127.0.0.2/32"]\n', lists=LISTS)
    _traffic(srv)
    ask(srv, "api.miui.com", source="127.0.0.2")
    ask(srv, "connectivitycheck.gstatic.com")       # essential: never suggested
    ancient = (time.perf_counter() - 10 * 86_400, *_row(0, "ancient.miui.com", "tv")[1:])
    _on_loop(srv, srv.server.querylog.record, [ancient])
    _flush(srv)
    cfg = str(tmp_path / "config.yaml")

    capsys.readouterr()
    assert main(["devices", "--json", "-c", cfg]) == 0
    devs = {d["device"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(devs) == {"tv", "phone"}
    assert devs["tv"]["queries"] == 8 and devs["tv"]["blocked"] == 2
    assert devs["tv"]["addresses"][0] == "127.0.0.1" and devs["phone"]["addresses"] == ["127.0.0.2"]
    assert devs["tv"]["macs"] == []       # no devices: section, so no neighbour table is read
    assert devs["tv"]["top_vendors"]["miui.com"] == 3 and devs["tv"]["top_vendors"]["xiaomi"] == 2
    assert main(["devices", "-c", cfg]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["DEVICE", "ADDRESSES", "MAC", "LAST"]
    assert "25.0%" in table

    assert main(["device", "tv", "--json", "-c", cfg]) == 0
    names = {e["name"]: e for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert names["x.tracking.miui.com"]["verdict"] == "blocked"
    assert names["x.tracking.miui.com"]["list"] == "xiaomi"
    assert names["api.miui.com"]["count"] == 2 and names["api.miui.com"]["verdict"] == "cached"
    assert "ancient.miui.com" in names       # pruned from the log by retention, kept here
    assert main(["device", "tv", "--new-since", "7d", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "api.miui.com" in out and "ancient.miui.com" not in out
    assert main(["device", "fridge", "-c", cfg]) == 1
    assert "devices: phone, tv" in capsys.readouterr().err

    assert main(["lists", "suggest", "-c", cfg]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    assert [ln.split()[0] for ln in lines] == ["ancient.miui.com", "api.miui.com"], out
    api = next(ln for ln in lines if ln.startswith("api.miui.com"))
    assert "devices: phone, tv" in api and "3 queries" in api
    assert "# == xiaomi: family miui.com (known from rule tracking.miui.com) ==" in out
    assert "example.org" not in out and "gstatic" not in out
    assert main(["lists", "suggest", "--device", "phone", "-c", cfg]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert [ln.split()[0] for ln in lines] == ["api.miui.com"]
    # A reference list makes its families known too.
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "upstream-list.txt").write_text("tracker.example.org\n")
    assert main(["lists", "suggest", "--references", str(refs), "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "# == reference upstream-list: family example.org (known from rule tracker.example.org) ==" in out
    assert "\nexample.org  # seen in traffic" in out and "\nnx.example.org  # seen" in out


def test_a_day_of_traffic_is_small_and_a_device_query_is_fast(tmp_path):
    """200k rows (a household's day) under 50 MB; `log --device X --since 1d` on 500k rows < 1 s."""
    stats = Stats()
    w = Writer(_settings(tmp_path), stats)
    now = time.time()
    devices = [f"device-{i}" for i in range(20)]
    rows = [(now - 86_400 * 2.5 + i * 0.43, 0.0004, devices[i % 20], f"192.168.1.{i % 20}",
             (f"host{i % 3000}.vendor{i % 40}.com", 1 + (i % 2) * 27,
              "xiaomi" if i % 5 == 0 else None, "vendor.com" if i % 5 == 0 else None,
              "blocked" if i % 5 == 0 else "cached" if i % 3 else "forwarded", 0,
              None if i % 3 else "192.0.2.53:53")) for i in range(500_000)]
    for i in range(0, 200_000, 2000):
        w.write(rows[i:i + 2000])
    w.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert stats.querylog_written == 200_000
    size = os.path.getsize(w.settings.path)
    assert size < 50_000_000, size
    for i in range(200_000, 500_000, 2000):
        w.write(rows[i:i + 2000])
    db = reader.connect(w.settings.path)
    t0 = time.perf_counter()
    got = reader.rows(db, reader.Filter(device="device-7", since=now - 86_400))
    took = time.perf_counter() - t0
    assert len(got) == 1000 and took < 1.0, took
    t0 = time.perf_counter()
    every = reader.rows(db, reader.Filter(device="device-7", since=now - 86_400), limit=None)
    assert len(every) > 5000 and time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(("text", "problem"), [
    ("query_log: {retention: 10m}", "query_log.retention: must be between 1h and 3650d"),
    ("query_log: {retention: soon}", "query_log.retention: must be a duration like"),
    ("query_log: {max_size: 10KB}", "query_log.max_size: must be at least 1MiB"),
    ("query_log: {max_size: huge}", "query_log.max_size: must be a size like"),
    ("query_log: {privacy: some}", "query_log.privacy: must be one of full, blocked-only, no-addresses, off"),
    ("query_log: {enabled: 1}", "query_log.enabled: must be a boolean"),
    ("query_log: {keep: 1}", "query_log.keep: unknown key"),
    ("query_log: 3", "query_log: must be true, false or a mapping"),
])
def test_config_errors_name_the_key_and_line(tmp_path, text, problem):
    from resolver.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: [127.0.0.1]\n" + text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert problem in str(err.value) and f"{cfg}:2" in str(err.value)


def test_config_values(tmp_path):
    from resolver.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: [127.0.0.1]\nstate_dir: st\n"
                   "query_log: {retention: 2d, max_size: 64MiB, privacy: off, path: logs/q.db}\n")
    ql = load_config(cfg).query_log
    assert (ql.retention, ql.max_size, ql.privacy, ql.on) == (172_800, 64 * 1024**2, "off", False)
    assert ql.path == str(tmp_path / "logs" / "q.db")
    cfg.write_text("upstreams: [127.0.0.1]\nstate_dir: st\n")
    ql = load_config(cfg).query_log
    assert ql.on and ql.path == str(tmp_path / "st" / "querylog.sqlite") and ql.max_size == 256 * 1024**2
    cfg.write_text("upstreams: [127.0.0.1]\nquery_log: false\n")
    assert not load_config(cfg).query_log.on


def test_sigterm_to_the_whole_group_keeps_the_last_rows(tmp_path, upstream):
    """systemd stops the unit by signalling every process in it: the writer process ignores
    the signal and writes what the server ships it on the way out."""

    import dns.message
    import dns.query

    from tests.fakes import free_port

    port = free_port()
    cfg = tmp_path / "config.yaml"
    (tmp_path / "xiaomi.txt").write_text(LISTS["xiaomi"])
    cfg.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{upstream.address}"]\n'
                   "metrics: {listen: null}\nblocking:\n  lists:\n    xiaomi: xiaomi.txt\n" + TV)
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)], cwd=ROOT,
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                dns.query.udp(dns.message.make_query("warm.example.org", "A"), "127.0.0.1",
                              port=port, timeout=0.5)
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
        for i in range(20):
            dns.query.udp(dns.message.make_query(f"n{i}.tracking.miui.com", "A"), "127.0.0.1",
                          port=port, timeout=2)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read()
    assert "Traceback" not in err, err
    db = reader.connect(str(Path(os.environ["STATE_DIRECTORY"]) / "querylog.sqlite"))
    names = [r["name"] for r in reader.rows(db, reader.Filter(blocked=True))]
    assert names == [f"n{i}.tracking.miui.com" for i in range(20)]


def test_writer_process_dies_dns_keeps_answering(serve):
    """A killed writer process: answers go on, rows are counted as dropped until it is back."""
    srv = serve(TV, lists=LISTS)
    ql = srv.server.querylog
    ask(srv, "x.tracking.miui.com")
    assert ql.flush()
    ql._proc.kill()
    ql._proc.wait()
    for i in range(5):
        assert ask(srv, f"n{i}.tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    assert ql.flush()
    assert srv.stats.querylog_dropped.get("unavailable", 0) >= 1, srv.stats.querylog_dropped
    ql._next_spawn = 0.0          # (it is retried every 30 s; the test does not wait)
    ask(srv, "back.tracking.miui.com")
    assert ql.flush()
    db = reader.connect(srv.config.query_log.path)
    names = [r["name"] for r in reader.rows(db, reader.Filter())]
    assert names[0] == "x.tracking.miui.com" and names[-1] == "back.tracking.miui.com"


def test_frames_survive_any_read_sizes():
    """The pipe delivers bytes in whatever pieces: every frame comes out whole and in order."""
    rows = [(0.5 + i, 0.001, "tv", "192.168.1.9", (f"n{i}.example.com", 1, None, None, "cached", 0,
                                                   None)) for i in range(50)]
    stream = b"".join([*frames.rows_frame(10.0, rows[:20]), frames.flush_frame(7),
                       *frames.rows_frame(11.0, rows[20:])])
    for step in (1, 3, 64, len(stream)):
        r = frames.FrameReader()
        got = [f for i in range(0, len(stream), step) for f in r.feed(stream[i:i + step])]
        assert got == [(frames.ROWS, (10.0, rows[:20])), (frames.FLUSH, 7),
                       (frames.ROWS, (11.0, rows[20:]))]
        assert not r.buf


def test_shipping_is_a_short_loop_callback_not_a_thread(serve):
    """No shipper thread in the server (it made the loop wait for the GIL); one callback packs
    at most CHUNK_ROWS rows, and a backlog is shipped chunk by chunk with the loop polling
    in between."""
    srv = serve(TV, lists=LISTS)
    ql = srv.server.querylog
    assert not [t for t in threading.enumerate() if t.name.startswith("hushdns-querylog")]
    t0 = time.perf_counter()
    n = 3 * CHUNK_ROWS + 7
    rows = [(t0, 0.001, "tv", "127.0.0.1", (f"c{i}.example.com", 1, None, None, "cached", 0, None))
            for i in range(n)]
    left: list[int] = []

    async def record_and_tick() -> None:
        for r in rows:
            ql.record(r)
        ql._timer.cancel()
        ql._tick()                 # one callback: one chunk
        left.append(len(ql.rows))

    asyncio.run_coroutine_threadsafe(record_and_tick(), srv.loop).result(10)
    assert left == [n - CHUNK_ROWS]
    assert ql.flush()
    db = sqlite3.connect(srv.config.query_log.path)
    assert db.execute("SELECT count(*) FROM queries").fetchone()[0] == n

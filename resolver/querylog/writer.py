"""The query log's database writer: batches of rows into SQLite, and every failure contained.

It runs in its own process (``child.py``), fed by the server through a pipe, so
neither its CPU nor its disk waits ever reach the event loop.  A full disk, a
locked or corrupt file drop the batch (counted by reason), are logged once
until writing works again, and a corrupt file is renamed
``<path>.corrupt-<time>`` so a new one starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from itertools import chain
from pathlib import Path
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from . import schema

log = logging.getLogger("hushdns.querylog")

MAX_BATCH = 2_000          # rows per transaction
PRUNE_SECONDS = 60.0       # how often retention and size are enforced
REOPEN_SECONDS = 30.0      # how often an unusable database is tried again

# A row as the hot path queues it:
# (time s, device, address, name, qtype, result, list, rule, rcode, upstream, latency s)
Row = tuple[Any, ...]


# Per-connection scratch tables: the batch as it came, its (device, name) aggregate, result codes.
_TEMP = """
CREATE TEMP TABLE staging (t REAL, device TEXT, address TEXT, name TEXT, type INTEGER,
                           result TEXT, list TEXT, rule TEXT, rcode INTEGER, upstream TEXT,
                           latency REAL);
CREATE TEMP TABLE batch (device INTEGER, name INTEGER, first INTEGER, last INTEGER,
                         count INTEGER, blocked INTEGER, result INTEGER, list INTEGER,
                         PRIMARY KEY (device, name)) WITHOUT ROWID;
CREATE TEMP TABLE results (word TEXT PRIMARY KEY, code INTEGER) WITHOUT ROWID;
"""
_ROW = "(?,?,?,?,?,?,?,?,?,?,?)"
CHUNKS = (512, 128, 32, 8, 2, 1)   # rows per INSERT ... VALUES: a few statements, all cached


def _stage_sql(n: int) -> str:
    return "INSERT INTO temp.staging VALUES " + ",".join([_ROW] * n)


_INTERN = """
INSERT OR IGNORE INTO strings (s)
SELECT device FROM temp.staging UNION SELECT name FROM temp.staging
UNION SELECT address FROM temp.staging WHERE address IS NOT NULL
UNION SELECT list FROM temp.staging WHERE list IS NOT NULL
UNION SELECT rule FROM temp.staging WHERE rule IS NOT NULL
UNION SELECT upstream FROM temp.staging WHERE upstream IS NOT NULL
"""
_QUERIES = """
INSERT INTO queries
SELECT CAST(s.t * 1000 AS INTEGER), d.id, a.id, n.id, s.type, coalesce(r.code, 255), l.id, ru.id,
       s.rcode, u.id, CAST(s.latency * 1000000 AS INTEGER)
FROM temp.staging s
JOIN strings d ON d.s = s.device
JOIN strings n ON n.s = s.name
LEFT JOIN strings a ON a.s = s.address
LEFT JOIN strings l ON l.s = s.list
LEFT JOIN strings ru ON ru.s = s.rule
LEFT JOIN strings u ON u.s = s.upstream
LEFT JOIN temp.results r ON r.word = s.result
ORDER BY s.rowid
"""
# The batch per (device, name); the verdict and list are those of its newest row.
# The batch per (device, name); the verdict and list are those of its newest row.
# (Results are < 256, so the largest rowid * 256 + result is the newest row's result.)
_BATCH = """
INSERT INTO temp.batch
SELECT d.id, n.id, g.first, g.last, g.count, g.blocked, g.result, l.id
FROM (SELECT s.device, s.name, CAST(min(s.t) * 1000 AS INTEGER) AS first,
             CAST(max(s.t) * 1000 AS INTEGER) AS last, count(*) AS count,
             sum(s.result = 'blocked') AS blocked,
             max(s.rowid * 256 + coalesce(r.code, 255)) & 255 AS result, max(s.list) AS list
      FROM temp.staging s LEFT JOIN temp.results r ON r.word = s.result
      GROUP BY s.device, s.name) g
JOIN strings d ON d.s = g.device JOIN strings n ON n.s = g.name
LEFT JOIN strings l ON l.s = g.list
"""
_NEW = """
SELECT d.s, count(*) FROM temp.batch b JOIN strings d ON d.id = b.device
WHERE NOT EXISTS (SELECT 1 FROM seen WHERE seen.device = b.device AND seen.name = b.name)
GROUP BY b.device
"""
_SEEN = """
INSERT INTO seen SELECT * FROM temp.batch WHERE true
ON CONFLICT (device, name) DO UPDATE SET
    last = max(last, excluded.last), count = count + excluded.count,
    blocked = blocked + excluded.blocked, result = excluded.result,
    list = coalesce(excluded.list, list)
"""
_ADDRESSES = """
INSERT INTO addresses
SELECT d.id, a.id, g.first, g.last
FROM (SELECT device, address, CAST(min(t) * 1000 AS INTEGER) AS first,
             CAST(max(t) * 1000 AS INTEGER) AS last
      FROM temp.staging WHERE address IS NOT NULL GROUP BY device, address) g
JOIN strings d ON d.s = g.device JOIN strings a ON a.s = g.address
WHERE true
ON CONFLICT (device, address) DO UPDATE SET last = max(last, excluded.last)
"""


def _reason(exc: BaseException) -> str:
    """The metric reason for a failed write."""
    text = str(exc).lower()
    if "full" in text:
        return "disk_full"
    if "locked" in text or "busy" in text:
        return "locked"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError) \
            or "malformed" in text or "not a database" in text:
        return "corrupt"
    return "error"


class Writer:
    """Owns the database connection and writes batches; runs in the writer process (child.py)."""

    def __init__(self, settings: Settings, stats: Stats, page_limit: int | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.path = Path(settings.path)
        self.page_limit = page_limit   # tests: a hard cap in pages (a "full disk")
        self.db: sqlite3.Connection | None = None
        self.failing: str | None = None   # the reason last logged, until a write works
        self.next_open = 0.0
        self.next_prune = 0.0

    def write_all(self, rows: list[Row]) -> None:
        """Write ``rows`` in transactions of MAX_BATCH; enforce retention when it is due."""
        for i in range(0, len(rows), MAX_BATCH):
            self.write(rows[i:i + MAX_BATCH])
        self.maintain()

    def maintain(self) -> None:
        now = time.monotonic()
        if self.db is not None and now >= self.next_prune:
            self.next_prune = now + PRUNE_SECONDS
            self._guard(self.prune, 0)

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def write(self, rows: list[Row]) -> None:
        """Write one batch (privacy applied); a failure drops it, counted by reason."""
        if not rows:
            return
        if self.db is None and not self._open():
            self._drop(len(rows), "unavailable")
            return
        self._guard(self._insert, len(rows), rows, self.settings.privacy != "no-addresses")

    def _guard(self, fn: Any, n: int, *args: Any) -> None:
        """Run a database step; on failure roll back, count ``n`` rows dropped, log once."""
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc)
            try:
                if self.db is not None and self.db.in_transaction:
                    self.db.rollback()
            except sqlite3.Error:
                pass
            if n:
                self._drop(n, reason)
            self._failed(reason, exc)
            if reason == "corrupt":
                self._rotate()
            elif reason == "disk_full":
                self._guard(self._make_room, 0)
            return
        if self.failing is not None and n:
            log.warning("query log: writing to %s again", self.path)
            self.failing = None

    def _drop(self, n: int, reason: str) -> None:
        d = self.stats.querylog_dropped
        d[reason] = d.get(reason, 0) + n

    def _failed(self, reason: str, exc: BaseException) -> None:
        if self.failing != reason:
            self.failing = reason
            log.error("query log %s: %s (%s); DNS keeps answering, rows are dropped and counted "
                      "in hushdns_querylog_dropped_total", self.path, exc, reason)

    # --- opening and rotating ----------------------------------------------------------

    def _open(self) -> bool:
        now = time.monotonic()
        if now < self.next_open:
            return False
        self.next_open = now + REOPEN_SECONDS
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc)
            self._failed(reason if reason != "error" else "unavailable", exc)
            if reason == "corrupt":
                self._rotate()
                return self._reopen_now()
            return False
        return True

    def _reopen_now(self) -> bool:
        self.next_open = 0.0
        try:
            self.db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._failed("unavailable", exc)
            return False
        return True

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Who looked up what: readable by the service's user only (SQLite gives the
            # -wal and -shm files the database file's permissions).
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
        try:
            # New files only: lets a size prune give pages back to the file system.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA cache_size = -16384")   # 16 MiB: index pages stay in memory
            db.execute("PRAGMA temp_store = MEMORY")
            db.execute("PRAGMA journal_size_limit = 16777216")
            # Checkpoint every 4000 pages, not 1000: an index page changed by many batches
            # is copied into the database file once.
            db.execute("PRAGMA wal_autocheckpoint = 4000")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({ok and ok[0]})")
            schema.create(db)
            db.executescript(_TEMP)
            db.executemany("INSERT INTO temp.results VALUES (?, ?)", schema.RESULT_OF.items())
            page = db.execute("PRAGMA page_size").fetchone()[0]
            cap = self.page_limit or max(64, int(self.settings.max_size * 1.25) // page)
            db.execute(f"PRAGMA max_page_count = {int(cap)}")
        except BaseException:
            db.close()
            raise
        return db

    def _rotate(self) -> None:
        """Move a corrupt file (and its WAL) aside; the next write starts a new one."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
            for ext in ("-wal", "-shm"):
                side = Path(str(self.path) + ext)
                if side.exists():
                    os.replace(side, Path(str(aside) + ext))
            log.error("query log: %s was corrupt; moved aside to %s, a new log starts",
                      self.path, aside)
        except OSError as exc:
            log.error("query log: cannot move corrupt %s aside: %s", self.path, exc)
        self.next_open = 0.0

    # --- writing -------------------------------------------------------------------------
    #
    # Why SQL, many rows bound per statement: the writer shares the GIL with the event
    # loop.  A Python loop per row (or executemany, which binds each row under the GIL and
    # releases it for each step) costs the loop time per row and, on a busy loop, waits a
    # switch interval for the GIL per row.  Binding 512 rows is one short C call; the rest
    # (interning, codes, the inventory) runs inside SQLite with the GIL released.

    def _insert(self, rows: list[Row], addresses: bool) -> None:
        db = self.db
        assert db is not None
        blocked_only = self.settings.privacy == "blocked-only"
        db.execute("BEGIN")
        db.execute("DELETE FROM temp.staging")
        i, n = 0, len(rows)
        for size in CHUNKS:   # one bind of many rows per statement, not a GIL round trip per row
            sql = _stage_sql(size)
            while n - i >= size:
                db.execute(sql, list(chain.from_iterable(rows[i:i + size])))
                i += size
        for device, t in db.execute("SELECT device, max(t) FROM temp.staging GROUP BY device"):
            last = self.stats.device_last_query
            if last.get(device, 0.0) < t:
                last[device] = t
        if blocked_only:
            db.execute("DELETE FROM temp.staging WHERE result != 'blocked'")
        if not addresses:
            db.execute("UPDATE temp.staging SET address = NULL")
        db.execute(_INTERN)
        n = db.execute(_QUERIES).rowcount
        db.execute("DELETE FROM temp.batch")
        db.execute(_BATCH)
        new = db.execute(_NEW).fetchall()
        db.execute(_SEEN)
        db.execute(_ADDRESSES)
        db.execute("COMMIT")
        self.stats.querylog_written += n
        counter = self.stats.device_new_names
        for label, k in new:
            counter[label] = counter.get(label, 0) + k

    # --- retention -------------------------------------------------------------------------

    def prune(self) -> None:
        """Delete rows older than ``retention``, then the oldest while over ``max_size``."""
        db = self.db
        assert db is not None
        cutoff = int((time.time() - self.settings.retention) * 1000)
        # Rows are in time order: the first young row ends the old ones (no index on t).
        first = db.execute("SELECT rowid FROM queries WHERE t >= ? ORDER BY rowid LIMIT 1",
                           (cutoff,)).fetchone()
        if first is None:
            db.execute("DELETE FROM queries")
        else:
            db.execute("DELETE FROM queries WHERE rowid < ?", (first[0],))
        while self._used() > self.settings.max_size * 0.9 and self._drop_oldest(0.1):
            pass
        db.execute("PRAGMA incremental_vacuum")

    def _used(self) -> int:
        db = self.db
        assert db is not None
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * db.execute("PRAGMA page_size").fetchone()[0]

    def _drop_oldest(self, share: float) -> bool:
        """Delete the oldest ``share`` of the rows; False when there is nothing left to delete."""
        db = self.db
        assert db is not None
        lo = db.execute("SELECT min(rowid) FROM queries").fetchone()[0]   # (one each: no scan)
        if lo is None:
            return False
        hi = db.execute("SELECT max(rowid) FROM queries").fetchone()[0]
        upto = lo + max(1, int((hi - lo + 1) * share))
        db.execute("DELETE FROM queries WHERE rowid < ?", (upto,))
        return True

    def _make_room(self) -> None:
        """After a "full" error: drop the oldest rows so the next batch fits."""
        if self.db is not None:
            self._drop_oldest(0.2)
            self.db.execute("PRAGMA incremental_vacuum")

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
from pathlib import Path
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from . import schema

log = logging.getLogger("hushdns.querylog")

MAX_BATCH = 10_000         # rows per transaction (about: whole batches from the server) ...
BATCH_BYTES = 10_000       # ... at most one per this many bytes of max_size (so a transaction
MIN_BATCH = 2_000          # of new names fits a small size bound), and at least MIN_BATCH
PRUNE_SECONDS = 60.0       # how often retention and size are enforced
REOPEN_SECONDS = 30.0      # how often an unusable database is tried again
INVENTORY_SECONDS = 5.0    # how often seen/addresses get the rows' aggregate (and on flush)
QUIET_SECONDS = 600.0      # a failure's reason is logged again only after this long

# A row as the hot path queues it (frames.py): (t0, took, device, address, what) with
# what = (name, qtype, list, rule, result, rcode, upstream); a batch is (offset, rows),
# the row's wall time t0 + offset.
Row = tuple[Any, ...]
Batch = tuple[float, list[Row]]


_INSERT_QUERY = "INSERT INTO queries VALUES (?,?,?,?,?,?,?,?,?,?,?)"
# One statement for new and known pairs: another writer on the same file (``workers: N``,
# or the old writer of a reload finishing its rows) may have stored the pair since this one
# looked, and a plain INSERT then failed the whole inventory.  The latest row's verdict wins.
_UPSERT_SEEN = """
INSERT INTO seen VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (device, name) DO UPDATE SET
    first = min(first, excluded.first), count = count + excluded.count,
    blocked = blocked + excluded.blocked,
    result = CASE WHEN excluded.last >= last THEN excluded.result ELSE result END,
    list = CASE WHEN excluded.last >= last THEN coalesce(excluded.list, list) ELSE list END,
    last = max(last, excluded.last)
"""
_UPSERT_ADDRESS = """
INSERT INTO addresses VALUES (?, ?, ?, ?)
ON CONFLICT (device, address) DO UPDATE SET last = max(last, excluded.last)
"""
# Memory bounds for a flood of new names (a benchmark, a device resolving random names):
# about 0.6 KB per distinct name over these tables (measured: 1.5M first-sight rows took the
# writer to 459 MiB peak RSS with a 500k cap and the inventory only every 5 s, 124 MiB now).
MAX_CACHED = 100_000   # string ids, row "what"s and known (device, name) pairs kept in memory
_CHUNK = 500           # strings looked up per SELECT ... IN (...): under SQLite's variable limit
_SELECT_IDS = {n: f"SELECT s, id FROM strings WHERE s IN ({','.join('?' * n)})"
               for n in range(1, _CHUNK + 1)}
MAX_UNWRITTEN = 50_000  # (device, name) pairs of the inventory in memory: beyond, it is written early


def _reason(exc: BaseException) -> str:
    """The metric reason for a failed write."""
    text = str(exc).lower()
    code = getattr(exc, "sqlite_errorname", "") or ""
    if "full" in text or code.startswith("SQLITE_FULL"):
        return "disk_full"
    if "locked" in text or "busy" in text or code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "locked"
    # Only a damaged file is "corrupt" (it is then moved aside): a constraint or an API error
    # (IntegrityError, ProgrammingError: DatabaseErrors too) says nothing about the file, and
    # once cost a household its whole log (two writers raced on a seen row).
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text \
            or "not a database" in text:
        return "corrupt"
    return "error"


class Writer:
    """Owns the database connection and writes batches; runs in the writer process (child.py)."""

    def __init__(self, settings: Settings, stats: Stats, page_limit: int | None = None,
                 shared: bool = False) -> None:
        self.settings = settings
        self.stats = stats
        # Other writers use the same file (``workers: N``): a name this writer stored may have
        # a seen row by another, so "first stored here" no longer means "new for the device".
        self.shared = shared
        self.file_id: tuple[int, int] | None = None   # (device, inode) of the open file
        self.path = Path(settings.path)
        self.page_limit = page_limit   # tests: a hard cap in pages (a "full disk")
        self.db: sqlite3.Connection | None = None
        self.failing: str | None = None   # the reason of the failure, until a write works
        self.announced = False             # ... and whether it was logged
        self.quiet_until: dict[str, float] = {}
        self.next_open = 0.0
        self.next_prune = 0.0
        self.next_inventory = 0.0
        self.max_batch = max(MIN_BATCH, min(MAX_BATCH, settings.max_size // BATCH_BYTES))
        self._reset_caches()

    def write_batches(self, batches: list[Batch]) -> None:
        """Write batches as they came from the server, in transactions of about ``max_batch``
        rows (fewer, larger transactions: each commit rewrites the index pages it touched);
        enforce retention when it is due."""
        txn: list[Batch] = []
        n = 0
        most = self.max_batch
        for offset, rows in batches:
            for i in range(0, len(rows), most):
                part = rows[i:i + most] if len(rows) > most else rows
                txn.append((offset, part))
                n += len(part)
                if n >= most:
                    self._write(txn, n)
                    txn, n = [], 0
        self._write(txn, n)
        self.maintain()

    def maintain(self) -> None:
        now = time.monotonic()
        if now >= self.next_inventory or \
                sum(len(per) for per in self.agg_seen.values()) >= MAX_UNWRITTEN:
            self.sync()
        if self.db is not None and now >= self.next_prune:
            self.next_prune = now + PRUNE_SECONDS
            self._guard(self.prune, 0)

    def close(self) -> None:
        self.sync()
        self._let_go()

    def _let_go(self) -> None:
        """Close the connection, if any (whatever state the file is in)."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def write(self, rows: list[Row], offset: float = 0.0) -> None:
        """Write one batch (``t0 + offset`` is each row's wall time); a failure drops it."""
        self._write([(offset, rows)], len(rows))

    def _write(self, batches: list[Batch], n: int) -> None:
        if not n:
            return
        if self.db is not None and not self._same_file():
            self._reopen()
        if self.db is None and not self._open():
            self._drop(n, "unavailable")
            return
        self._guard(self._insert, n, batches, self.settings.privacy != "no-addresses")

    def _same_file(self) -> bool:
        """Is the file at ``path`` still the one this connection has open?  Not when another
        writer (``workers: N``) moved a corrupt file aside, or someone deleted the log to
        start afresh: rows written to the old inode would go to a file nobody reads."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.file_id

    def _reopen(self) -> None:
        """Leave the file that is no longer at ``path`` and open the one that is (or a new one)."""
        self._let_go()
        log.warning("query log: %s was replaced or removed; writing to the file there now", self.path)
        self._reopen_now()

    def _guard(self, fn: Any, n: int, *args: Any) -> None:
        """Run a database step; on failure roll back, count ``n`` rows dropped, log once."""
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc)
            self._reset_caches()
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
            if self.announced:
                log.warning("query log: writing to %s again", self.path)
            self.failing = None
            self.announced = False

    def _drop(self, n: int, reason: str) -> None:
        d = self.stats.querylog_dropped
        d[reason] = d.get(reason, 0) + n

    def _failed(self, reason: str, exc: BaseException) -> None:
        """Log a failure once; the same reason again only after QUIET_SECONDS (a nearly full
        disk lets small transactions through between failures: one message, not one each)."""
        if self.failing == reason:
            return
        self.failing = reason
        now = time.monotonic()
        if now >= self.quiet_until.get(reason, 0.0):
            self.quiet_until[reason] = now + QUIET_SECONDS
            self.announced = True
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
            st = os.stat(self.path)
            self.file_id = (st.st_dev, st.st_ino)
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({ok and ok[0]})")
            schema.create(db)
            page = db.execute("PRAGMA page_size").fetchone()[0]
            cap = self.page_limit or max(64, int(self.settings.max_size * 1.25) // page)
            db.execute(f"PRAGMA max_page_count = {int(cap)}")
        except BaseException:
            db.close()
            raise
        self._reset_caches()
        return db

    def _rotate(self) -> None:
        """Move a corrupt file (and its WAL) aside; the next write starts a new one.

        Only the file this writer found corrupt: another writer on the same path may have
        moved it aside already and started a new one, which must not go too."""
        if self.db is not None and not self._same_file():
            self._reopen()
            return
        self._let_go()
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
    # This runs in the writer process, which has its own GIL: plain Python and
    # ``executemany`` are fine here.  Strings are interned through an in-memory map (and
    # each distinct row "what" and client once), so SQLite sees integer rows.  The
    # inventory (``seen``, ``addresses``) is aggregated in memory and written every
    # INVENTORY_SECONDS and on every flush: one UPDATE per (device, name) per interval,
    # not per transaction (with many names, per-transaction updates cost more than the rows).

    def _reset_caches(self) -> None:
        """After a rollback or a new file: ids and pairs in memory may not be in the file
        (the inventory not yet written goes too: it holds such ids)."""
        self.ids: dict[str, int] = {}
        self.known: set[tuple[int, int]] = set()
        self.whats: dict[tuple[Any, ...], tuple[Any, ...]] = {}   # a row's what -> its ids
        self.whos: dict[tuple[str, str], tuple[int, int | None]] = {}   # (device, address) -> ids
        self.fresh: set[int] = set()   # string ids made since the inventory was last written
        # device id -> name id -> [first, last, count, blocked, result, list]
        self.agg_seen: dict[int, dict[int, list[Any]]] = {}
        self.agg_addrs: dict[tuple[int, int | None], list[int]] = {}   # -> [first, last]
        self.labels: dict[int, str] = {}   # device id -> its name (the new-names metric)

    def _intern(self, strings: list[str]) -> None:
        """Give every one of ``strings`` an id in ``self.ids``: one SELECT per chunk for the
        ones not in memory, one ``executemany`` for the ones not in the file.

        Why in bulk: a first-sight name used to cost a SELECT and an INSERT of its own
        (two statements, ~5 µs of the ~11 µs a row cost).  New ids are max(id)+1, ...:
        only inside the write transaction (BEGIN IMMEDIATE), where no other writer of the
        file (``workers: N``) can insert between the max and the insert.
        """
        ids = self.ids
        need = [s for s in dict.fromkeys(strings) if s not in ids]
        if not need:
            return
        if len(ids) + len(need) > MAX_CACHED:   # start afresh: this batch's strings all fit
            ids.clear()
            need = list(dict.fromkeys(strings))
        db = self.db
        assert db is not None and db.in_transaction
        for i in range(0, len(need), _CHUNK):
            part = need[i:i + _CHUNK]
            ids.update(db.execute(_SELECT_IDS[len(part)], part))
        new = [s for s in need if s not in ids]
        if not new:
            return
        first = (db.execute("SELECT max(id) FROM strings").fetchone()[0] or 0) + 1
        made = list(zip(new, range(first, first + len(new)), strict=True))
        db.executemany("INSERT INTO strings (s, id) VALUES (?, ?)", made)
        ids.update(made)
        self.fresh.update(range(first, first + len(new)))

    def _id(self, s: str) -> int:
        """One string's id (interned now if it has none); the rows' strings go through
        ``_intern`` in bulk first, so on the write path this is a dict lookup."""
        i = self.ids.get(s)
        if i is None:
            self._intern([s])
            i = self.ids[s]
        return i

    def _insert(self, batches: list[Batch], addresses: bool) -> None:
        db = self.db
        assert db is not None
        only_blocked = self.settings.privacy == "blocked-only"
        sid = self._id
        whats, whos = self.whats, self.whos
        agg, addrs, labels = self.agg_seen, self.agg_addrs, self.labels
        codes, other, blocked_code = schema.RESULT_OF, schema.OTHER, schema.BLOCKED
        out = []
        append = out.append
        # IMMEDIATE: the write lock from the start, so two writers on one file take turns
        # (busy timeout) instead of the second failing when it first writes (WAL snapshot).
        db.execute("BEGIN IMMEDIATE")
        # The strings of the whats and clients not met before, interned in bulk.
        strings: list[str] = []
        more = strings.append
        for _offset, rows in batches:
            for _t0, _took, device, address, what in rows:
                if what not in whats:
                    name, _qtype, lst, rule, _result, _rcode, upstream = what
                    more(name)
                    if lst:
                        more(lst)
                    if rule:
                        more(rule)
                    if upstream:
                        more(upstream)
                if (device, address) not in whos:
                    more(device)
                    if addresses and address:
                        more(address)
        self._intern(strings)
        for offset, rows in batches:
            for t0, took, device, address, what in rows:
                # The parts a memo entry and a client repeat are turned into ids once.
                w = whats.get(what)
                if w is None:
                    name, qtype, lst, rule, result, rcode, upstream = what
                    res = codes.get(result, other)
                    w = whats[what] = (sid(name), qtype, res, sid(lst) if lst else None,
                                       sid(rule) if rule else None, rcode,
                                       sid(upstream) if upstream else None, int(res == blocked_code))
                nm, qtype, res, li, ru, rcode, up, b = w
                if only_blocked and not b:
                    continue
                who = whos.get((device, address))
                if who is None:
                    who = whos[(device, address)] = (
                        sid(device), sid(address) if addresses and address else None)
                    labels[who[0]] = device
                dev, ad = who
                ms = int((t0 + offset if t0 else time.time()) * 1000)
                append((ms, dev, ad, nm, qtype, res, li, ru, rcode, up, int(took * 1e6)))
                per = agg.get(dev)
                if per is None:
                    per = agg[dev] = {}
                e = per.get(nm)
                if e is None:
                    per[nm] = [ms, ms, 1, b, res, li]
                else:
                    e[1] = ms
                    e[2] += 1
                    e[3] += b
                    e[4] = res
                    if li is not None:
                        e[5] = li
                if ad is not None:
                    a = addrs.get(who)
                    if a is None:
                        addrs[who] = [ms, ms]
                    else:
                        a[1] = ms
        if out:
            db.executemany(_INSERT_QUERY, out)
        db.execute("COMMIT")
        self.stats.querylog_written += len(out)
        if len(self.whats) > MAX_CACHED or len(self.whos) > MAX_CACHED:
            self.whats.clear()
            self.whos.clear()

    def sync(self) -> None:
        """Write the inventory now (a flush: readers see every row's device and name)."""
        if self.db is not None and (self.agg_seen or self.agg_addrs):
            self._guard(self._inventory, 0)

    def _inventory(self) -> None:
        db = self.db
        assert db is not None
        self.next_inventory = time.monotonic() + INVENTORY_SECONDS
        known = self.known
        # A name first stored since the last inventory cannot have a seen row yet, unless
        # another writer shares the file.
        fresh = set() if self.shared else self.fresh
        rows: list[tuple[Any, ...]] = []
        new: list[tuple[Any, ...]] = []   # the pairs without a seen row yet: the new-names metric
        db.execute("BEGIN IMMEDIATE")
        for dev, per in self.agg_seen.items():
            for nm, e in per.items():
                row = (dev, nm, *e)
                rows.append(row)
                if nm in fresh or not ((dev, nm) in known or db.execute(
                        "SELECT 1 FROM seen WHERE device = ? AND name = ?", (dev, nm)).fetchone()):
                    new.append(row)
        db.executemany(_UPSERT_SEEN, rows)
        db.executemany(_UPSERT_ADDRESS, [(dev, ad, a[0], a[1])
                                         for (dev, ad), a in self.agg_addrs.items()])
        db.execute("COMMIT")
        if len(known) + len(new) > MAX_CACHED:
            known.clear()
        known.update((e[0], e[1]) for e in new)
        counter, labels = self.stats.device_new_names, self.labels
        for e in new:
            label = labels.get(e[0], "other")
            counter[label] = counter.get(label, 0) + 1
        self.agg_seen, self.agg_addrs, self.fresh = {}, {}, set()

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

"""Read-only access to the query log for the CLI: rows, the device inventory, suggestions' input.

Why read-only (``mode=ro``): the CLI runs while the server writes; WAL lets a
reader see committed rows without ever blocking the writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .families import family, vendor_of_list

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class NoLog(Exception):
    """The database file is missing or unreadable: the message says which and why."""


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection to the log at ``path``."""
    p = Path(path)
    if not p.exists():
        raise NoLog(f"no query log at {p} (is the server running with query_log on, and is "
                    "this the config it uses?)")
    try:
        db = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        db.execute("SELECT 1 FROM queries LIMIT 1")
    except sqlite3.Error as exc:
        raise NoLog(f"cannot read the query log {p}: {exc}") from None
    return db


@dataclass
class Filter:
    device: str | None = None
    blocked: bool | None = None      # True: only blocked; False: only not blocked
    since: float | None = None       # unix seconds
    name_glob: str | None = None


def _string_id(db: sqlite3.Connection, s: str) -> int | None:
    got = db.execute("SELECT id FROM strings WHERE s = ?", (s,)).fetchone()
    return got[0] if got else None


_SELECT = """
SELECT q.rowid, q.t, d.s, a.s, n.s, q.type, q.result, l.s, r.s, q.rcode, u.s, q.latency
FROM queries q
JOIN strings d ON d.id = q.device
JOIN strings n ON n.id = q.name
LEFT JOIN strings a ON a.id = q.address
LEFT JOIN strings l ON l.id = q.list
LEFT JOIN strings r ON r.id = q.rule
LEFT JOIN strings u ON u.id = q.upstream
"""


def _where(db: sqlite3.Connection, f: Filter, after: int | None) -> tuple[str, list[Any]] | None:
    """SQL conditions for ``f``; None when nothing can match (an unknown device)."""
    cond: list[str] = []
    args: list[Any] = []
    if f.device is not None:
        sid = _string_id(db, f.device)
        if sid is None:
            return None
        # A device name; else an address (of a named device, or a device that is its address).
        named = db.execute("SELECT 1 FROM queries WHERE device = ? LIMIT 1", (sid,)).fetchone()
        cond.append("q.device = ?" if named else "q.address = ?")
        args.append(sid)
    if f.since is not None:
        cond.append("q.rowid >= ?")
        args.append(rowid_since(db, int(f.since * 1000)))
    if f.blocked is True:
        cond.append("q.result = ?")
        args.append(schema.BLOCKED)
    elif f.blocked is False:
        cond.append("q.result != ?")
        args.append(schema.BLOCKED)
    if f.name_glob:
        cond.append("q.name IN (SELECT id FROM strings WHERE s GLOB ?)")
        args.append(f.name_glob.lower().rstrip("."))
    if after is not None:
        cond.append("q.rowid > ?")
        args.append(after)
    return (" WHERE " + " AND ".join(cond) if cond else ""), args


def rowid_since(db: sqlite3.Connection, ms: int) -> int:
    """The first rowid with time >= ``ms`` (rows are appended in time order): a binary search."""
    # Two statements: SQLite answers min() or max() of the rowid from the b-tree's ends, but
    # both in one statement by a scan of the whole table.
    lo = db.execute("SELECT coalesce(min(rowid), 1) FROM queries").fetchone()[0]
    hi = db.execute("SELECT coalesce(max(rowid), 0) FROM queries").fetchone()[0] + 1
    while lo < hi:
        mid = (lo + hi) // 2
        got = db.execute("SELECT rowid, t FROM queries WHERE rowid >= ? ORDER BY rowid LIMIT 1",
                         (mid,)).fetchone()
        if got is None or got[1] >= ms:
            hi = mid
        else:
            lo = got[0] + 1
    return lo


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    from ..wire import qtype_name

    t = r[1] / 1000
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{r[1] % 1000:03d}Z",
        "timestamp": t, "device": r[2], "client": r[3], "name": r[4], "type": qtype_name(r[5]),
        "result": schema.result_word(r[6]), "list": r[7], "rule": r[8],
        "rcode": RCODE_NAMES.get(r[9], str(r[9])) if r[9] is not None else None,
        "upstream": r[10], "latency_ms": round(r[11] / 1000, 3), "id": r[0],
    }


def rows(db: sqlite3.Connection, f: Filter, limit: int | None = 1000,
         after: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` rows matching ``f`` (all with None), oldest first."""
    w = _where(db, f, after)
    if w is None:
        return []
    where, args = w
    if limit:
        sql = f"{_SELECT}{where} ORDER BY q.rowid DESC LIMIT ?"   # rowid order is time order
        got = db.execute(sql, [*args, limit]).fetchall()
        got.reverse()
    else:
        got = db.execute(f"{_SELECT}{where} ORDER BY q.rowid", args).fetchall()
    return [_row(r) for r in got]


def follow(db: sqlite3.Connection, f: Filter, after: int, poll: float = 0.5) -> Iterator[dict[str, Any]]:
    """New rows as the writer commits them (``hushdns log --follow``); runs until interrupted."""
    while True:
        got = rows(db, f, limit=None, after=after)
        for r in got:
            after = max(after, r["id"])
            yield r
        if not got:
            time.sleep(poll)


def last_id(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(rowid), 0) FROM queries").fetchone()[0]


# --- the inventory -----------------------------------------------------------------------


@dataclass
class Endpoint:
    """One name a device asked for, from the ``seen`` table."""

    name: str
    first: float
    last: float
    count: int
    blocked: int
    verdict: str
    list: str | None

    @property
    def vendor(self) -> str:
        return vendor_of_list(self.list) if self.blocked and self.list else family(self.name)


@dataclass
class Device:
    name: str
    addresses: list[str] = field(default_factory=list)
    last: float = 0.0
    queries: int = 0
    blocked: int = 0
    vendors: dict[str, int] = field(default_factory=dict)

    @property
    def blocked_share(self) -> float:
        return self.blocked / self.queries if self.queries else 0.0

    def top_vendors(self, n: int = 3) -> list[tuple[str, int]]:
        return sorted(self.vendors.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


_SEEN = """
SELECT d.s, n.s, s.first, s.last, s.count, s.blocked, s.result, l.s
FROM seen s JOIN strings d ON d.id = s.device JOIN strings n ON n.id = s.name
LEFT JOIN strings l ON l.id = s.list
"""


def _endpoint(r: tuple[Any, ...]) -> Endpoint:
    return Endpoint(r[1], r[2] / 1000, r[3] / 1000, r[4], r[5], schema.result_word(r[6]), r[7])


def endpoints(db: sqlite3.Connection, device: str | None = None,
              first_since: float | None = None) -> list[tuple[str, Endpoint]]:
    """(device, endpoint) pairs of the inventory, optionally one device / first seen since."""
    cond, args = [], []
    if device is not None:
        dev = _string_id(db, device)
        if dev is None:
            return []
        cond.append("s.device = ?")
        args.append(dev)
    if first_since is not None:
        cond.append("s.first >= ?")
        args.append(int(first_since * 1000))
    where = " WHERE " + " AND ".join(cond) if cond else ""
    return [(r[0], _endpoint(r)) for r in db.execute(_SEEN + where, args)]


def devices(db: sqlite3.Connection) -> list[Device]:
    """Every device of the inventory, the most recently active first."""
    out: dict[str, Device] = {}
    for dev, ep in endpoints(db):
        d = out.get(dev)
        if d is None:
            d = out[dev] = Device(dev)
        d.queries += ep.count
        d.blocked += ep.blocked
        d.last = max(d.last, ep.last)
        d.vendors[ep.vendor] = d.vendors.get(ep.vendor, 0) + ep.count
    for dev, addr in db.execute(
            "SELECT d.s, a.s FROM addresses x JOIN strings d ON d.id = x.device "
            "JOIN strings a ON a.id = x.address ORDER BY x.last DESC"):
        if dev in out:
            out[dev].addresses.append(addr)
    return sorted(out.values(), key=lambda d: -d.last)


def device_names(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT DISTINCT d.s FROM seen s JOIN strings d ON d.id = s.device ORDER BY 1")]

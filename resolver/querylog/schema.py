"""The query log's SQLite schema and the small integer codes it stores.

Why this shape: a household's day is ~200k rows, so a row is a handful of
integers (time in milliseconds, interned strings, the query type and result as
codes) and the two indexes the readers need: (device, time) for ``hushdns log
--device`` and (name, time) for ``--name``.  ``seen`` is the endpoint
inventory, one row per (device, name), maintained by the writer so it
outlives the retention of ``queries``; ``addresses`` is the same per
(device, address).
"""

from __future__ import annotations

import sqlite3

from ..stats import RESULTS

VERSION = 1

# Result words as stored; a word not known here is stored as its own string id (never lost).
RESULT_CODES: tuple[str, ...] = (*RESULTS, "stale")
RESULT_OF: dict[str, int] = {r: i for i, r in enumerate(RESULT_CODES)}
BLOCKED = RESULT_OF["blocked"]
OTHER = 255   # a result word this schema does not know

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS strings (id INTEGER PRIMARY KEY, s TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS queries (
    t INTEGER NOT NULL,        -- unix time, milliseconds
    device INTEGER NOT NULL,   -- strings.id
    address INTEGER,           -- strings.id; NULL under privacy: no-addresses
    name INTEGER NOT NULL,     -- strings.id
    type INTEGER NOT NULL,     -- DNS query type number
    result INTEGER NOT NULL,   -- RESULT_CODES index
    list INTEGER,              -- strings.id of the list that blocked it
    rule INTEGER,              -- strings.id of the rule
    rcode INTEGER,             -- DNS rcode of the answer; NULL when nothing was sent
    upstream INTEGER,          -- strings.id
    latency INTEGER NOT NULL   -- microseconds
);
CREATE INDEX IF NOT EXISTS queries_device ON queries (device);
CREATE INDEX IF NOT EXISTS queries_name ON queries (name);
CREATE TABLE IF NOT EXISTS seen (
    device INTEGER NOT NULL,
    name INTEGER NOT NULL,
    first INTEGER NOT NULL,    -- unix time, milliseconds
    last INTEGER NOT NULL,
    count INTEGER NOT NULL,
    blocked INTEGER NOT NULL,  -- how many of them were blocked
    result INTEGER NOT NULL,   -- the last verdict
    list INTEGER,              -- the list of the last block
    PRIMARY KEY (device, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS addresses (
    device INTEGER NOT NULL,
    address INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (device, address)
) WITHOUT ROWID;
"""


def create(db: sqlite3.Connection) -> None:
    """Create the tables (idempotent) and say which schema this file holds."""
    db.executescript(SCHEMA)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(VERSION),))


def result_word(code: int) -> str:
    return RESULT_CODES[code] if 0 <= code < len(RESULT_CODES) else "other"

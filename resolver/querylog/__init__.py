"""The query log: every answered query as a row in SQLite, and the readers for the CLI.

The hot path calls ``QueryLog.record`` with plain values (one tuple appended to a
bounded deque); ``writer.Writer`` writes batches on its own thread.  See the
README's "Query log and devices" for what is stored and the privacy modes.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from .writer import MAX_QUEUE, Writer

__all__ = ["QueryLog", "device_of", "open_log"]


def device_of(info: Any) -> str:
    """The device a query is from: its ``ClientInfo``'s device name (configured name, else address).

    The one place that decides it, so device identity (DHCP, PTR, neighbours) plugs in here.
    """
    return info.label


class QueryLog:
    """What the server holds: ``record`` on the hot path, ``start``/``close`` around serving."""

    def __init__(self, settings: Settings, stats: Stats, max_queue: int = MAX_QUEUE,
                 page_limit: int | None = None) -> None:
        self.settings = settings
        self.writer = Writer(settings, stats, max_queue, page_limit)
        self._queue = self.writer.queue
        self._max = max_queue
        self._dropped = stats.querylog_dropped

    def record(self, device: str, address: str, name: str, qtype: int, result: str,
               list_name: str | None, rule: str | None, rcode: int | None,
               upstream: str | None, latency: float) -> None:
        """Queue one answered query (never blocks; a full queue drops and counts the row)."""
        q = self._queue
        if len(q) < self._max:
            q.append((time.time(), device, address, name, qtype, result, list_name, rule,
                      rcode, upstream, latency))
        else:
            d = self._dropped
            d["queue_full"] = d.get("queue_full", 0) + 1

    def start(self) -> None:
        self.writer.start()

    def close(self, timeout: float = 10.0) -> None:
        self.writer.close(timeout)

    def flush(self, timeout: float = 10.0) -> None:
        self.writer.flush(timeout)


def open_log(settings: Settings, stats: Stats) -> QueryLog | None:
    """A started QueryLog for ``settings``, or None when the log is off."""
    if not settings.on:
        return None
    ql = QueryLog(settings, stats)
    ql.start()
    return ql

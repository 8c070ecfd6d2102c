"""The query log: every answered query as a row in SQLite, and the readers for the CLI.

The hot path calls ``QueryLog.record`` with plain values: one tuple appended to a
bounded deque, nothing else.  A shipper thread sends the queued rows in batches
to the writer process (``child.py``), which writes them (``writer.py``).  See
the README's "Query log and devices" for what is stored and the privacy modes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats

__all__ = ["QueryLog", "device_of", "open_log"]

log = logging.getLogger("hushdns.querylog")

FLUSH_SECONDS = 0.1        # how often queued rows are shipped: small batches, short GIL holds
MAX_QUEUE = 100_000        # rows waiting in the server; beyond it rows are dropped and counted
SHIP_ROWS = 500            # rows per message (one pickle call holds the GIL: keep it short)
RESPAWN_SECONDS = 30.0     # how soon a writer process that died is started again
F_SETPIPE_SZ = 1031        # Linux: a 1 MiB pipe lets a burst through without waiting

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


def device_of(info: Any) -> str:
    """The device a query is from: its ``ClientInfo``'s device name (``clients:``, DHCP
    leases, reverse DNS, neighbours: resolver/devices/), else its metrics label (the address)."""
    return info.device or info.label


class QueryLog:
    """What the server holds: ``record`` on the hot path, ``start``/``close`` around serving."""

    def __init__(self, settings: Settings, stats: Stats, max_queue: int = MAX_QUEUE,
                 page_limit: int | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.page_limit = page_limit   # tests: the database's hard cap in pages ("a full disk")
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._max = max_queue
        self._dropped = stats.querylog_dropped
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Connection | None = None
        self._in: Connection | None = None
        self._next_spawn = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._wanted = 0     # the last flush token asked for
        self._flushed = 0    # the last flush token the writer confirmed
        self._thread = threading.Thread(target=self._run, name="hushdns-querylog", daemon=True)

    # --- the hot path ----------------------------------------------------------------------

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

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Ship what is queued, let the writer finish it, then stop."""
        self.close_soon()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close_soon(self) -> None:
        """Stop without waiting (a reload that replaced this log)."""
        self._stop.set()
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written (tests; ``True`` when it was)."""
        with self._done:
            self._wanted += 1
            token = self._wanted
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._flushed >= token, timeout)

    # --- the shipper thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping:   # a last flush: the writer's final counts come back
                with self._done:
                    self._wanted += 1
            try:
                self._ship()
            except Exception:   # a bug here must not stop the log for good
                log.exception("query log shipper")
            if stopping:
                break
        self._end_child()

    def _ship(self) -> None:
        q = self._queue
        pop = q.popleft
        while q:
            rows = []
            with contextlib.suppress(IndexError):
                for _ in range(SHIP_ROWS):
                    rows.append(pop())
            if not self._send(("rows", rows)):
                self._drop(len(rows), "unavailable")
        token = self._wanted
        if token > self._flushed:
            if self._send(("flush", token)):
                self._read(until=token)
            else:
                self._confirm(token)   # nothing can be written: do not keep the caller waiting
        self._read()

    def _drop(self, n: int, reason: str) -> None:
        d = self._dropped
        d[reason] = d.get(reason, 0) + n

    def _confirm(self, token: int) -> None:
        with self._done:
            self._flushed = max(self._flushed, token)
            self._done.notify_all()

    def _send(self, msg: tuple[Any, ...]) -> bool:
        if self._out is None and not self._spawn():
            return False
        assert self._out is not None
        try:
            self._out.send(msg)
            return True
        except OSError as exc:
            log.error("query log: the writer process stopped (%s); rows are dropped and counted "
                      "until it is started again", exc)
            self._end_child(kill=True)
            return False

    def _read(self, until: int | None = None) -> None:
        """Add the writer's reports to our Stats; with ``until``, wait for that flush's report."""
        conn = self._in
        while conn is not None:
            try:
                if until is None and not conn.poll():
                    return
                if until is not None and not conn.poll(30.0):
                    log.error("query log: the writer process does not answer")
                    self._confirm(until)
                    return
                _, token, deltas = conn.recv()
            except (EOFError, OSError):
                self._end_child(kill=True)
                if until is not None:
                    self._confirm(until)
                return
            self._merge(deltas)
            if token is not None:
                self._confirm(token)
                if until is not None and token >= until:
                    return

    def _merge(self, d: dict[str, Any]) -> None:
        s = self.stats
        s.querylog_written += d["written"]
        for key, target in (("dropped", s.querylog_dropped), ("new_names", s.device_new_names)):
            for k, v in d[key].items():
                target[k] = target.get(k, 0) + v

    # --- the writer process ------------------------------------------------------------------

    def _spawn(self) -> bool:
        now = time.monotonic()
        if now < self._next_spawn:
            return False
        self._next_spawn = now + RESPAWN_SECONDS
        opts = {"settings": dataclasses.asdict(self.settings), "page_limit": self.page_limit,
                "level": logging.getLogger("hushdns").getEffectiveLevel()}
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
        try:
            proc = subprocess.Popen([sys.executable, "-m", "resolver.querylog.child", json.dumps(opts)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as exc:
            log.error("query log: cannot start the writer process: %s", exc)
            return False
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)
        self._out = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._in = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self._proc = proc
        return True

    def _end_child(self, kill: bool = False) -> None:
        """Close the pipe (the writer finishes what it has and exits); reap it."""
        proc, self._proc = self._proc, None
        for conn in (self._out, self._in):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        self._out = self._in = None
        if proc is None:
            return
        if kill:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_log(settings: Settings, stats: Stats) -> QueryLog | None:
    """A started QueryLog for ``settings``, or None when the log is off."""
    if not settings.on:
        return None
    ql = QueryLog(settings, stats)
    ql.start()
    return ql

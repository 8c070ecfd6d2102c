"""The query log: every answered query as a row in SQLite, and the readers for the CLI.

The hot path appends one small tuple of objects that already exist to a list
(``QueryLog.record`` is that list's ``append``).  Every ``FLUSH_SECONDS`` a
callback on the event loop packs up to ``CHUNK_ROWS`` of them with marshal and
writes the bytes to a non-blocking pipe to the writer process (``child.py``),
which decodes them and writes SQLite (``writer.py``).  No thread in the server:
a shipper thread made the loop wait for the GIL (the hit p99 tripled).  See
the README's "Query log and devices" for what is stored and the privacy modes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from . import frames

__all__ = ["QueryLog", "device_of", "open_log"]

log = logging.getLogger("hushdns.querylog")

FLUSH_SECONDS = 0.05       # how often queued rows are shipped (a backlog: chunk after chunk)
CHUNK_ROWS = 500           # rows packed per loop callback (~0.1-0.2 us each: under ~100 us a callback)
MAX_PENDING = 16 << 20     # bytes waiting for the pipe in the server; beyond it rows are dropped
RESPAWN_SECONDS = 30.0     # how soon a writer process that died is started again
F_SETPIPE_SZ = 1031        # Linux: a 1 MiB pipe lets a burst through without waiting

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


def device_of(info: Any) -> str:
    """The device a query is from: its ``ClientInfo``'s device name (``clients:``, DHCP
    leases, reverse DNS, neighbours: resolver/devices/), else its metrics label (the address)."""
    return info.device or info.label


class QueryLog:
    """What the server holds: ``record`` on the hot path, ``start``/``close`` around serving.

    Everything but ``flush``, ``close`` and ``_finish`` runs on the event loop's thread.
    """

    def __init__(self, settings: Settings, stats: Stats, max_pending: int = MAX_PENDING,
                 page_limit: int | None = None, shared: bool = False) -> None:
        self.settings = settings
        self.stats = stats
        self.page_limit = page_limit   # tests: the database's hard cap in pages ("a full disk")
        self.shared = shared           # other processes' writers use the same file (workers: N)
        self.rows: list[frames.Row] = []
        # The hot path (Pipeline.record): a C call, one small tuple, no Python frame.
        self.record = self.rows.append
        self.max_pending = max_pending
        self._dropped = stats.querylog_dropped
        self._pending: deque[list[Any]] = deque()   # [memoryview, rows it ends] for the pipe
        self._pending_bytes = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = -1     # the pipe to the writer (non-blocking), -1 when there is no writer
        self._in = -1      # its reports
        self._reports = b""
        self._writing = False   # the loop watches ``_out`` for room
        self._next_spawn = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._closed = False
        self._done = threading.Condition()
        self._wanted = 0     # the last flush token asked for
        self._flushed = 0    # the last flush token the writer confirmed

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin shipping on the running loop.  Without one (tests that build a server's
        pipeline without serving) rows are shipped only by ``flush`` and ``close``."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop_thread = threading.get_ident()
        self._timer = self._loop.call_later(FLUSH_SECONDS, self._tick)

    def close(self, timeout: float = 10.0) -> None:
        """Ship what is queued, let the writer finish it, then stop (blocks: call it off the loop)."""
        handed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._call(self._hand_over, handed)
        try:
            handed.result(timeout)
        except concurrent.futures.TimeoutError:
            log.error("query log: the event loop did not hand over the last rows")
            return
        self._finish(timeout)

    def close_soon(self) -> None:
        """Stop without waiting (on the loop: a reload that replaced this log)."""
        handed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._hand_over(handed)
        threading.Thread(target=self._finish, name="hushdns-querylog-close", daemon=True).start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written (tests; ``True`` when it was).
        Call it off the loop."""
        with self._done:
            self._wanted += 1
            token = self._wanted
        self._call(self._send_flush, token)
        with self._done:
            return self._done.wait_for(lambda: self._flushed >= token, timeout)

    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` on the loop's thread (now, when this is it or no loop runs)."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:   # closed meanwhile
            fn(*args)

    # --- shipping, on the loop ---------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        try:
            self._ship(1)
        except Exception:   # a bug here must not stop the log for good
            log.exception("query log shipper")
        if self._closed or self._loop is None:
            return
        # More than a chunk queued (a burst): the next chunk after the loop has polled again.
        if self.rows:
            self._timer = self._loop.call_soon(self._tick)
        else:
            self._timer = self._loop.call_later(FLUSH_SECONDS, self._tick)

    def _ship(self, chunks: int | None) -> None:
        """Pack ``chunks`` of CHUNK_ROWS queued rows (all of them with None); write what the
        pipe takes."""
        rows = self.rows
        while rows:
            if len(rows) <= CHUNK_ROWS:
                batch = rows.copy()
                rows.clear()
            else:
                batch = rows[:CHUNK_ROWS]
                del rows[:CHUNK_ROWS]
            self._queue(frames.rows_frame(time.time() - time.perf_counter(), batch), len(batch))
            if chunks is not None:
                chunks -= 1
                if not chunks:
                    break
        if self._pending:
            self._write()

    def _queue(self, bufs: tuple[bytes, ...], n: int) -> None:
        if self._out < 0 and not self._spawn():
            self._drop(n, "unavailable")
            return
        if n and self._pending_bytes > self.max_pending:   # the writer does not keep up
            self._drop(n, "queue_full")
            return
        for b in bufs:
            self._pending.append([memoryview(b), 0])
            self._pending_bytes += len(b)
        self._pending[-1][1] = n

    def _send_flush(self, token: int) -> None:
        self._ship(None)
        if self._out < 0 and not self._spawn():
            self._confirm(token)   # nothing can be written: do not keep the caller waiting
            return
        self._queue((frames.flush_frame(token),), 0)
        self._write()

    def _write(self) -> None:
        """Write pending bytes until the pipe is full; the loop calls again when it has room."""
        pend = self._pending
        while pend:
            try:
                sent = os.writev(self._out, [e[0] for e in itertools.islice(pend, 64)])
            except BlockingIOError:
                break
            except OSError as exc:
                self._child_gone(f"the writer process stopped ({exc})")
                return
            self._consumed(sent)
        want = bool(pend) and self._loop is not None and not self._closed
        if want != self._writing:
            assert self._loop is not None
            if want:
                self._loop.add_writer(self._out, self._write)
            else:
                self._loop.remove_writer(self._out)
            self._writing = want

    def _consumed(self, sent: int) -> None:
        pend = self._pending
        self._pending_bytes -= sent
        while sent:
            e = pend[0]
            m = e[0]
            if len(m) <= sent:
                sent -= len(m)
                pend.popleft()
            else:
                e[0] = m[sent:]
                sent = 0

    def _on_reports(self) -> None:
        try:
            data = os.read(self._in, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._child_gone("the writer process stopped")
            return
        self._lines(data)

    def _lines(self, data: bytes) -> None:
        *lines, self._reports = (self._reports + data).split(b"\n")
        for line in lines:
            if line:
                self._report(json.loads(line))

    def _report(self, d: dict[str, Any]) -> None:
        """Add the writer's counter changes to our Stats; confirm its flush token."""
        s = self.stats
        s.querylog_written += d["written"]
        for key, target in (("dropped", s.querylog_dropped), ("new_names", s.device_new_names)):
            for k, v in d[key].items():
                target[k] = target.get(k, 0) + v
        if d.get("token") is not None:
            self._confirm(d["token"])

    def _drop(self, n: int, reason: str) -> None:
        d = self._dropped
        d[reason] = d.get(reason, 0) + n

    def _confirm(self, token: int) -> None:
        with self._done:
            self._flushed = max(self._flushed, token)
            self._done.notify_all()

    # --- the writer process ------------------------------------------------------------------

    def _spawn(self) -> bool:
        now = time.monotonic()
        if now < self._next_spawn or self._closed:
            return False
        self._next_spawn = now + RESPAWN_SECONDS
        opts = {"settings": dataclasses.asdict(self.settings), "page_limit": self.page_limit,
                "shared": self.shared, "level": logging.getLogger("hushdns").getEffectiveLevel()}
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
        try:
            # Its own process group: a signal to the server's group (Ctrl-C, kill of the
            # group) cannot reach it while it starts, before it ignores them (child.py).
            proc = subprocess.Popen([sys.executable, "-m", "resolver.querylog.child", json.dumps(opts)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    process_group=0)
        except OSError as exc:
            log.error("query log: cannot start the writer process: %s", exc)
            return False
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)
        self._out, self._in = os.dup(proc.stdin.fileno()), os.dup(proc.stdout.fileno())
        proc.stdin.close()
        proc.stdout.close()
        os.set_blocking(self._out, False)
        os.set_blocking(self._in, False)
        self._reports = b""
        self._proc = proc
        if self._loop is not None:
            self._loop.add_reader(self._in, self._on_reports)
        return True

    def _child_gone(self, why: str) -> None:
        """The writer died: what waits for it is dropped and counted; it is started again later."""
        log.error("query log: %s; rows are dropped and counted until it is started again", why)
        lost = sum(e[1] for e in self._pending)
        if lost:
            self._drop(lost, "unavailable")
        self._pending.clear()
        self._pending_bytes = 0
        self._unwatch()
        self._end_child(kill=True)
        self._confirm(self._wanted)

    def _unwatch(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._writing:
            loop.remove_writer(self._out)
            self._writing = False
        if self._in >= 0:
            loop.remove_reader(self._in)

    def _hand_over(self, handed: concurrent.futures.Future[None]) -> None:
        """On the loop: no more ticks; every queued row packed for ``_finish``."""
        try:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._ship(None)
            self._closed = True
            self._unwatch()
        finally:
            handed.set_result(None)

    def _finish(self, timeout: float = 10.0) -> None:
        """Off the loop: write the rest, close the pipe (the writer writes it and exits), read
        its last counts, reap it."""
        if self._out >= 0:
            os.set_blocking(self._out, True)
            try:
                while self._pending:
                    self._consumed(os.writev(self._out, [e[0] for e in itertools.islice(self._pending, 64)]))
            except OSError as exc:
                self._drop(sum(e[1] for e in self._pending), "unavailable")
                self._pending.clear()
                log.error("query log: the writer process stopped (%s)", exc)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            if self._out >= 0:
                os.close(self._out)
        self._out = -1
        while self._in >= 0:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            data = os.read(self._in, 65536) if ready else b""
            if not data:
                break
            self._lines(data)
        self._end_child(kill=time.monotonic() >= deadline)
        self._confirm(self._wanted)

    def _end_child(self, kill: bool = False) -> None:
        """Close the pipes (the writer finishes what it has and exits); reap it."""
        proc, self._proc = self._proc, None
        for fd in (self._out, self._in):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._out = self._in = -1
        self._writing = False
        if proc is None:
            return
        if kill:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_log(settings: Settings, stats: Stats, shared: bool = False) -> QueryLog | None:
    """A started QueryLog for ``settings``, or None when the log is off; ``shared``: the
    writers of other worker processes use the same file."""
    if not settings.on:
        return None
    ql = QueryLog(settings, stats, shared=shared)
    ql.start()
    return ql

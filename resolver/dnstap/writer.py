"""The dnstap writer, server side: records on the event loop, shipped in batches to a child.

Why a child process (resolver/dnstap/child.py) and not a thread: encoding the protobuf
costs ~1.5-2 µs per answer, and in a thread of the server that time holds the GIL
the event loop needs (measured: dnstap on = 0.75x of off).  Here the loop only

- ``emit``/``hit``: appends one tuple of references to objects that already exist
  (client, port, transport, query bytes, reply bytes, verdict strings, two
  ``perf_counter`` times) to a list; and
- every ``FLUSH_RECORDS`` records or ``FLUSH_SECONDS``: pickles the list (one C call,
  ~0.1 µs a record, measured cheaper than length-prefixed joins built in Python) and
  sends it, one message, over a non-blocking ``SOCK_SEQPACKET`` socketpair.

Bounded, never blocking: when the socket is full (the child is behind) or the child is
gone, the batch is dropped and counted (``hushdns_dnstap_dropped_total``); the child
counts what its own queue (``dnstap.queue``) cannot hold while the collector is slow,
stalled or gone, and reports it back with its connection state.  A child that died is
started again (back-off 1 s doubling to 30 s); what it had been given and not reported
as sent is counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import pickle
import socket
import time
from time import perf_counter
from typing import Any

from .. import __version__, child_process
from ..config import Dnstap

log = logging.getLogger("hushdns")

FLUSH_RECORDS = 64       # a batch this big is shipped at once (~8 µs pickling, ~2 µs send)
FLUSH_SECONDS = 0.01     # a smaller one waits at most this long
SOCKET_BUFFER = 1 << 20  # bytes the socketpair holds for a child that is briefly behind
RESPAWN_FIRST, RESPAWN_MAX = 1.0, 30.0
CHILD_NICE = 10          # under a flood the answers win; the child's queue drops instead


class DnstapWriter:
    """``emit`` (finish) and ``hit`` (the reply memo) on the loop; ``close`` at shutdown."""

    def __init__(self, cfg: Dnstap, stats: Any) -> None:
        self.cfg = cfg
        self.stats = stats
        self.identity = (cfg.identity or socket.gethostname()).encode()
        self.buf: list[tuple] = []
        self._timer: Any = None          # the pending flush, or True when there is no loop
        self._sock: socket.socket | None = None
        self._proc: Any = None
        self._shipped = 0                # records given to the current child
        self._status = (False, 0, 0)     # the current child's (connected, sent, lost)
        self._sent_before = 0            # sent by children before this one
        self._next_spawn = 0.0
        self._respawn = RESPAWN_FIRST
        self._started = 0.0
        self._closed = False
        self._flushes = 0
        stats.dnstap_lost = self._child_lost
        self._spawn()

    # --- on the event loop ----------------------------------------------------------

    def emit(self, q: Any, wire: bytes | None, r: Any) -> None:
        """One answered query (``Pipeline.finish``)."""
        buf = self.buf
        buf.append((q.client, q.addr[1], q.proto, q.data, wire, r.result, r.list, r.rule,
                    perf_counter(), q.t0))
        if len(buf) >= FLUSH_RECORDS:
            self.flush()
        elif self._timer is None:
            self._arm()

    def hit(self, data: bytes, addr: Any, wire: bytes, result: str, keep: Any, rule: str | None,
            t0: float) -> None:
        """One reply memo answer (UDP), with the verdict of the reply it repeats."""
        buf = self.buf
        buf.append((addr[0], addr[1], "udp", data, wire, result, getattr(keep, "list", None),
                    rule, perf_counter(), t0))
        if len(buf) >= FLUSH_RECORDS:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)
        except RuntimeError:   # no loop (the in-process bench): batches go out by size
            self._timer = True

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Ship the records collected so far (never blocks)."""
        buf = self.buf
        if not buf:
            return
        self.buf = []
        if self._sock is None and not self._spawn():
            self.stats.dnstap_dropped += len(buf)
            return
        self._ship(buf)
        self._flushes += 1
        if not self._flushes & 15:    # the child's reports: not every time (a syscall)
            self._poll()

    def _ship(self, buf: list[tuple]) -> None:
        sock = self._sock
        if sock is None:
            self.stats.dnstap_dropped += len(buf)
            return
        try:
            sock.send(pickle.dumps(buf, 5))
            self._shipped += len(buf)
        except BlockingIOError:            # the child is behind: drop, count
            self.stats.dnstap_dropped += len(buf)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE and len(buf) > 1:    # EMSGSIZE: big TCP replies; halve
                half = len(buf) // 2
                self._ship(buf[:half])
                self._ship(buf[half:])
                return
            self.stats.dnstap_dropped += len(buf)
            self._child_gone(f"{exc}")

    # --- what the child reports -----------------------------------------------------

    def _poll(self) -> None:
        """Take the child's latest (connected, sent, lost); notice when it is gone."""
        sock = self._sock
        while sock is not None:
            try:
                msg = sock.recv(256)
            except BlockingIOError:
                return
            except OSError as exc:
                self._child_gone(f"{exc}")
                return
            if not msg:
                self._child_gone("it exited")
                return
            with contextlib.suppress(Exception):
                self._status = pickle.loads(msg)

    def _child_lost(self) -> int:
        """The current child's drops (the metric adds them to ``stats.dnstap_dropped``)."""
        self._poll()
        return self._status[2]

    @property
    def connected(self) -> bool:
        """Whether the child is streaming to the collector (as of its last report)."""
        self._poll()
        return self._status[0]

    @property
    def sent(self) -> int:
        """Records the children have written to collectors."""
        self._poll()
        return self._sent_before + self._status[1]

    @property
    def pending(self) -> int:
        """Records shipped to the current child that it has not yet sent or dropped."""
        self._poll()
        return len(self.buf) + self._shipped - self._status[1] - self._status[2]

    # --- the child process ----------------------------------------------------------

    def _spawn(self) -> bool:
        now = time.monotonic()
        if self._closed or now < self._next_spawn:
            return False
        self._next_spawn = now + self._respawn
        self._respawn = min(self._respawn * 2, RESPAWN_MAX)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        opts = {"dnstap": dataclasses.asdict(self.cfg), "identity": self.identity.decode(),
                "version": f"hushdns {__version__}", "fd": theirs.fileno(), "nice": CHILD_NICE,
                "level": logging.getLogger("hushdns").getEffectiveLevel()}
        try:
            self._proc = child_process.start("resolver.dnstap.child", opts,
                                             pass_fds=(theirs.fileno(),))
        except OSError as exc:
            log.error("dnstap: cannot start the sender process: %s", exc)
            ours.close()
            return False
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock, self._shipped, self._status = ours, 0, (False, 0, 0)
        self._started = now
        return True

    def _child_gone(self, why: str) -> None:
        """The child ended: what it had and did not report as sent is dropped; reap it."""
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is None:
            return
        sock.close()
        self._settle()
        if not self._closed:
            log.error("dnstap: the sender process stopped (%s); messages are dropped and "
                      "counted until it is started again", why)
            if time.monotonic() - self._started > 60:   # it had been fine: retry soon
                self._respawn = RESPAWN_FIRST
                self._next_spawn = 0.0
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            child_process.reap(proc, 0.0)

    def _settle(self) -> None:
        connected, sent, _ = self._status
        self.stats.dnstap_dropped += max(0, self._shipped - sent)
        self._sent_before += sent
        self._shipped, self._status = 0, (False, 0, 0)

    def close(self, timeout: float = 2.0) -> None:
        """Ship what is collected; the child sends what it has, STOPs and exits (waits at
        most ``timeout`` for its last report; a reload may start another writer)."""
        if self._closed:
            return
        if isinstance(self._timer, asyncio.TimerHandle):
            self._timer.cancel()
        self.flush()
        self._closed = True
        sock, proc = self._sock, self._proc
        if sock is None:
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(True)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                msg = sock.recv(256)
                if not msg:
                    break
                with contextlib.suppress(Exception):
                    self._status = pickle.loads(msg)
        self._sock = self._proc = None
        sock.close()
        self._settle()
        if proc is not None:
            child_process.reap(proc, max(0.0, deadline - time.monotonic()))

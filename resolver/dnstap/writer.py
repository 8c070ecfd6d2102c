"""The dnstap writer: a bounded queue filled by ``Pipeline.finish``, drained by one thread.

Why a thread and a deque: the hot path must never wait for a collector.  ``emit``
is one length check and one append of a tuple (no encoding: the thread does that,
in batches); when the queue is full, because the collector is slow, stalled or
gone, the message is dropped and counted (``hushdns_dnstap_dropped_total``).  The
thread connects (unix socket or TCP), does the Frame Streams handshake, writes
batches of frames, and on any error reconnects with back-off (0.1 s doubling to
10 s).  Messages in a batch that failed to send are counted as dropped too.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from time import perf_counter, time_ns
from typing import Any

from .. import __version__
from ..config import Dnstap, format_endpoint
from . import framestream
from .message import Encoder, encode_batch

log = logging.getLogger("hushdns")

BATCH = 512            # messages encoded and written per sendall
IDLE_POLL = 0.005      # seconds the thread sleeps when the queue is empty
SEND_TIMEOUT = 5.0     # a collector that takes nothing for this long is reconnected


class DnstapWriter:
    """``emit`` (finish) and ``hit`` (the reply memo) on the loop; ``close`` at shutdown."""

    def __init__(self, cfg: Dnstap, stats: Any) -> None:
        self.cfg = cfg
        self.stats = stats
        self.limit = cfg.queue
        self.queue: deque[tuple] = deque()
        self.lost = 0                      # counted by the thread; the collector adds stats'
        self.sent = 0
        self.connected = False
        stats.dnstap_lost = lambda: self.lost
        self.identity = (cfg.identity or socket.gethostname()).encode()
        self.version = f"hushdns {__version__}".encode()
        self._addresses: dict[str, tuple[int, bytes]] = {}
        self._encoder = Encoder(self.identity, self.version)
        self._extras: dict[tuple, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dnstap", daemon=True)
        self._thread.start()

    # --- on the event loop ----------------------------------------------------------

    def emit(self, q: Any, wire: bytes | None, r: Any) -> None:
        """One answered query (``Pipeline.finish``)."""
        queue = self.queue
        if len(queue) >= self.limit:
            self.stats.dnstap_dropped += 1
            return
        queue.append((q.client, q.addr[1], q.proto, q.data, wire, r.result, r.list, r.rule,
                      time_ns(), perf_counter() - q.t0))

    def hit(self, data: bytes, addr: Any, wire: bytes, result: str, keep: Any, rule: str | None,
            t0: float) -> None:
        """One reply memo answer (UDP), with the verdict of the reply it repeats."""
        queue = self.queue
        if len(queue) >= self.limit:
            self.stats.dnstap_dropped += 1
            return
        queue.append((addr[0], addr[1], "udp", data, wire, result, getattr(keep, "list", None),
                      rule, time_ns(), perf_counter() - t0))

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, STOP, and end the thread (waits at most ``timeout``)."""
        self._stop.set()
        self._thread.join(timeout)
        # A reload may start another writer: its losses so far stay in the counter.
        lost, self.lost = self.lost, 0
        self.stats.dnstap_dropped += lost

    # --- on the writer thread -------------------------------------------------------

    def _connect(self) -> socket.socket:
        cfg = self.cfg
        if cfg.socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = cfg.socket
        else:
            host, port = cfg.tcp  # type: ignore[misc]
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            target = (host, port)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(target)
            framestream.handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        backoff = 0.1
        where = self.cfg.socket or format_endpoint(self.cfg.tcp)  # type: ignore[arg-type]
        failing = False
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except OSError as exc:
                if not failing:
                    log.warning("dnstap: cannot reach the collector at %s (%s); retrying", where, exc)
                    failing = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            log.info("dnstap: streaming to %s", where)
            failing, backoff = False, 0.1
            self.connected = True
            try:
                self._pump(sock)
                framestream.finish(sock)
            except OSError as exc:
                log.warning("dnstap: collector at %s lost (%s); reconnecting", where, exc)
            finally:
                self.connected = False
                sock.close()

    def _pump(self, sock: socket.socket) -> None:
        queue, stop = self.queue, self._stop
        while True:
            if not queue:
                if stop.is_set():
                    return
                time.sleep(IDLE_POLL)
                continue
            batch = []
            pop = queue.popleft
            while queue and len(batch) < BATCH:
                batch.append(pop())
            frames = encode_batch(self._encoder, batch, self.cfg.queries, self.cfg.responses,
                                  self._addresses, self._extras)
            try:
                sock.sendall(frames)
            except OSError:
                self.lost += len(batch)
                raise
            self.sent += len(batch)

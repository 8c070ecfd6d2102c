"""The dnstap sender process: batches of records from the server in, Frame Streams out.

Why a process: see writer.py.  One thread, one ``select`` loop over the server's
socket (always read: reading is cheap, and a server that cannot hand us records
would have to drop them) and the collector's (written when there are frames).

- Records wait in a queue of at most ``dnstap.queue``; beyond it they are dropped
  and counted, so a collector that is slow, stalled or gone costs only drops.
- Frames go out non-blocking; a collector that takes nothing for ``SEND_TIMEOUT``
  is dropped and reconnected, as is one that fails; reconnects back off 0.1 s
  doubling to 10 s.  Frames of a batch that did not get through count as dropped.
- After each change we tell the server ``(connected, sent, lost)`` (cumulative),
  at most every ``REPORT_SECONDS`` while busy, so its metric includes our drops.
- When the server closes its end we send what is queued (at most ``CLOSE_SECONDS``),
  STOP, report, exit.

Protocol (one pickled object per ``SOCK_SEQPACKET`` message): in, a list of records
``(client ip, port, transport, query, reply, result, list, rule, reply time,
query time)`` with times on the ``perf_counter`` clock (CLOCK_MONOTONIC, the same in
both processes); out, ``(connected, sent, lost)``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import pickle
import select
import socket
import sys
import time
from typing import Any

from .. import child_process
from ..config import Dnstap, format_endpoint
from . import framestream
from .message import Encoder, encode_batch

log = logging.getLogger("hushdns")

BATCH = 512             # records encoded into one buffer of frames
SEND_TIMEOUT = 5.0      # a collector that takes nothing for this long is reconnected
REPORT_SECONDS = 0.02
CLOSE_SECONDS = 2.0
RECV_BUFFER = 4 << 20   # larger than any message the server's socket buffer lets through


class Sender:
    """The loop of the process; ``run`` returns when the server is gone and we are done."""

    def __init__(self, cfg: Dnstap, server: socket.socket, identity: bytes, version: bytes) -> None:
        self.cfg = cfg
        self.server = server
        self.where = cfg.socket or format_endpoint(cfg.tcp)  # type: ignore[arg-type]
        self.queue: collections.deque[tuple] = collections.deque()
        self.encoder = Encoder(identity, version)
        self.addresses: dict[str, tuple[int, bytes]] = {}
        self.extras: dict[tuple, bytes] = {}
        self.coll: socket.socket | None = None
        self.out = bytearray()          # frames not yet written
        self.out_records = 0            # the records those frames are of
        self.progress = 0.0             # when the collector last took bytes
        self.sent = self.lost = 0
        self.next_try, self.backoff, self.failing = 0.0, 0.1, False
        self.reported: tuple[bool, int, int] | None = None
        self.last_report = 0.0
        self.server_open = True
        self.buffer = bytearray(RECV_BUFFER)

    # --- the collector ----------------------------------------------------------------

    def _connect(self, now: float) -> None:
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
        except OSError as exc:
            sock.close()
            if not self.failing:
                log.warning("dnstap: cannot reach the collector at %s (%s); retrying",
                            self.where, exc)
                self.failing = True
            self.next_try = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 10.0)
            return
        log.info("dnstap: streaming to %s", self.where)
        sock.setblocking(False)
        self.coll, self.failing, self.backoff = sock, False, 0.1
        self.progress = time.monotonic()

    def _disconnect(self, why: str | None) -> None:
        """Drop the collector; the frames not written are lost (a new stream starts clean)."""
        coll, self.coll = self.coll, None
        if coll is None:
            return
        if why is not None:
            log.warning("dnstap: collector at %s lost (%s); reconnecting", self.where, why)
        self.lost += self.out_records
        self.out.clear()
        self.out_records = 0
        coll.close()
        self.next_try = time.monotonic() + self.backoff

    def _fill(self) -> None:
        """Encode the next batch of queued records into ``out``."""
        q, pop = self.queue, self.queue.popleft
        batch = [pop() for _ in range(min(BATCH, len(q)))]
        offset = time.time_ns() - time.perf_counter_ns()
        cfg = self.cfg
        self.out += encode_batch(self.encoder, batch, cfg.queries, cfg.responses,
                                 self.addresses, self.extras, offset)
        self.out_records = len(batch)

    def _write(self, now: float) -> None:
        assert self.coll is not None
        try:
            n = self.coll.send(self.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._disconnect(str(exc))
            return
        if n:
            self.progress = now
            del self.out[:n]
        if not self.out:
            self.sent += self.out_records
            self.out_records = 0

    # --- the server ------------------------------------------------------------------

    def _read(self) -> None:
        """Every message waiting from the server into the queue (the overflow is lost)."""
        limit, q, buf = self.cfg.queue, self.queue, self.buffer
        while True:
            try:
                n = self.server.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0:
                self.server_open = False
                return
            records = pickle.loads(memoryview(buf)[:n])
            room = limit - len(q)
            if len(records) > room:
                self.lost += len(records) - max(room, 0)
                records = records[:max(room, 0)]
            q.extend(records)

    def _report(self, now: float, force: bool = False) -> None:
        state = (self.coll is not None, self.sent, self.lost)
        if state == self.reported or not self.server_open and not force:
            return
        if not force and now - self.last_report < REPORT_SECONDS and \
                (self.reported is not None and state[0] == self.reported[0]):
            return
        try:
            self.server.send(pickle.dumps(state))
        except OSError:   # full (the server is not reading: the next report says it all) or gone
            return
        self.reported, self.last_report = state, now

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.server.setblocking(False)
        deadline = None
        while True:
            now = time.monotonic()
            if not self.server_open:
                if deadline is None:
                    deadline = now + CLOSE_SECONDS
                if not (self.queue or self.out) or now >= deadline or \
                        self.coll is None and self.next_try >= deadline:
                    break
            if self.coll is None and now >= self.next_try:
                self._connect(now)
                now = time.monotonic()
            if self.coll is not None:
                if not self.out and self.queue:
                    self._fill()
                if self.out and now - self.progress > SEND_TIMEOUT:
                    self._disconnect(f"it took nothing for {SEND_TIMEOUT:g} s")
            self._report(now)
            rlist = [self.server] if self.server_open else []
            wlist = [self.coll] if self.coll is not None and self.out else []
            timeout = 1.0 if self.coll is not None else max(0.0, min(self.next_try - now, 1.0))
            if self.reported != (self.coll is not None, self.sent, self.lost):
                timeout = min(timeout, REPORT_SECONDS)
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
            if readable:
                self._read()
            if writable:
                self._write(time.monotonic())
        self._end()

    def _end(self) -> None:
        self.lost += len(self.queue)
        self.queue.clear()
        coll = self.coll
        if coll is not None:
            if self.out:
                self._disconnect(None)
            else:
                coll.setblocking(True)
                coll.settimeout(1.0)
                with contextlib.suppress(OSError):
                    framestream.finish(coll)
                self.coll = None
                coll.close()
        # The server waits for this (or for our exit) when it closes the writer.
        with contextlib.suppress(OSError):
            self.server.setblocking(True)
            self.server.settimeout(1.0)
            self.server.send(pickle.dumps((False, self.sent, self.lost)))
        self.server.close()


def main() -> int:
    opts = json.loads(sys.argv[1])
    logging.basicConfig(level=opts.get("level", logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    child_process.as_child(opts.get("nice", 10))
    d = dict(opts["dnstap"])
    if d.get("tcp") is not None:
        d["tcp"] = tuple(d["tcp"])
    server = socket.socket(fileno=opts["fd"])
    Sender(Dnstap(**d), server, opts["identity"].encode(), opts["version"].encode()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

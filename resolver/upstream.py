"""Talking to upstream resolvers: one fresh socket, random source port and random ID per query.

Why so careful (RFC 5452, DNSpooq, TuDoor): a forwarder is the classic cache
poisoning target.  Each UDP query gets its own connected socket (the kernel
picks a random source port and drops datagrams from any other address), an ID
from ``secrets``, and a reply is accepted only if its ID and question match;
anything else -- garbage included -- is counted and ignored while the
genuine answer is still awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Endpoint, ServerOptions, format_endpoint
from .stats import Stats
from .wire import (
    FORMERR,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Request,
    WireError,
    make_query,
    question_matches,
)

MAX_REPLY = 65535
# Consecutive failures after which an upstream counts as down.
DOWN_AFTER = 3
# Longest wait between two probes of a down upstream (seconds).
MAX_PROBE_INTERVAL = 30.0


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time."""


# Parses an accepted reply (raising WireError when it is malformed); its result
# is handed back with the reply so the caller does not parse twice.
Check = Callable[[bytes], Any]


@dataclass
class Upstream:
    """One upstream server and its recent health."""

    host: str
    port: int
    label: str = ""
    failures: int = 0            # consecutive failures (>= DOWN_AFTER: down)
    down_until: float = 0.0      # while down: monotonic time of the next probe
    probing: bool = False        # while down: a probe query is in flight

    def __post_init__(self) -> None:
        self.label = self.label or format_endpoint((self.host, self.port))
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def down(self) -> bool:
        return self.failures >= DOWN_AFTER

    @classmethod
    def of(cls, ep: Endpoint) -> Upstream:
        return cls(ep[0], ep[1])


class _UdpAttempt:
    """One datagram exchange; ``fut`` gets the accepted reply bytes or an OSError."""

    def __init__(self, loop: asyncio.AbstractEventLoop, up: Upstream, req: Request,
                 edns: bool, stats: Stats, check: Check | None = None) -> None:
        self.loop = loop
        self.up = up
        self.req = req
        self.edns = edns
        self.stats = stats
        self.check = check
        self.parsed: Any = None
        self.qid = secrets.randbits(16)
        self.fut: asyncio.Future[bytes] = loop.create_future()
        self.t0 = time.perf_counter()
        sock = socket.socket(up.family, socket.SOCK_DGRAM)
        self.sock = sock
        try:
            sock.setblocking(False)
            sock.connect((up.host, up.port))
            sock.send(make_query(req, self.qid, edns))
        except OSError:
            sock.close()
            raise
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while not self.fut.done():
            try:
                data = self.sock.recv(MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # ICMP port unreachable and friends
                self.fut.set_exception(exc)
                return
            if self._acceptable(data) and self._well_formed(data):
                self.fut.set_result(data)
                return
            self.stats.upstream(self.up.label, "spoof_rejected")

    def _acceptable(self, data: bytes) -> bool:
        if len(data) < 12 or not data[2] & 0x80 or (data[0] << 8 | data[1]) != self.qid:
            return False
        if question_matches(data, self.req):
            return True
        # Some servers answer FORMERR/NOTIMP without echoing the question.
        return data[4:6] == b"\x00\x00" and data[3] & 0xF in (FORMERR, NOTIMP)

    def _well_formed(self, data: bytes) -> bool:
        """A datagram with the right ID and question but a broken body is ignored, and
        the genuine answer still awaited (TuDoor, CVE-2023-29483), not turned into SERVFAIL."""
        if self.check is None or data[2] & 0x02 or data[4:6] == b"\x00\x00":
            return True   # TC answers are re-asked over TCP; question-less errors carry nothing
        try:
            self.parsed = self.check(data)
        except WireError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def tcp_exchange(up: Upstream, req: Request, timeout: float, edns: bool = True) -> bytes:
    """One query over TCP (after a truncated UDP answer); validated like UDP."""
    qid = secrets.randbits(16)
    msg = make_query(req, qid, edns)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:
            writer.write(struct.pack("!H", len(msg)) + msg)
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(n)
                if (len(data) >= 12 and data[2] & 0x80 and (data[0] << 8 | data[1]) == qid
                        and question_matches(data, req)):
                    return data
        finally:
            writer.close()


async def _first_done(loop: asyncio.AbstractEventLoop, futs: list[asyncio.Future[Any]],
                      timeout: float) -> None:
    """Return once one of ``futs`` is done or ``timeout`` has passed.

    ``asyncio.wait(..., FIRST_COMPLETED)`` does the same with sets, a waiter
    and a timer handle per call; this is the part of it a forwarded query needs,
    at under half the cost (measured in bench/micro.py).
    """
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for f in futs:
        f.add_done_callback(wake)
    handle = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        handle.cancel()
        for f in futs:
            f.remove_done_callback(wake)


class Upstreams:
    """Sends a question to a list of upstreams: next one after ``upstream_timeout``
    without giving up on the earlier ones, until ``upstream_total_timeout``.

    Health: after DOWN_AFTER consecutive failures an upstream is down.  While
    any other upstream is up, a down one gets no queries, only a probe (a copy
    of a real question, its answer used for nothing but the verdict) at most
    once per back-off interval (1 s, doubling per failed probe up to
    MAX_PROBE_INTERVAL) and never two at a time; one answer brings it back.
    When every upstream is down they are all still asked: failing every query
    fast because of old failures would turn a blip into an outage.
    """

    def __init__(self, opts: ServerOptions, stats: Stats) -> None:
        self.opts = opts
        self.stats = stats

    def plan(self, ups: list[Upstream]) -> tuple[list[Upstream], list[Upstream]]:
        """(upstreams to ask one after another, down upstreams due for a probe)."""
        healthy = [u for u in ups if not u.down]
        if not healthy:
            return sorted(ups, key=lambda u: u.failures), []
        now = time.monotonic()
        probes = [u for u in ups if u.down and not u.probing and u.down_until <= now]
        return healthy, probes

    def order(self, ups: list[Upstream]) -> list[Upstream]:
        """The upstreams a query is sent to, in order (down ones only when all are)."""
        return self.plan(ups)[0]

    def _send(self, loop: asyncio.AbstractEventLoop, up: Upstream, req: Request, edns: bool,
              check: Check | None = None) -> _UdpAttempt | None:
        try:
            return _UdpAttempt(loop, up, req, edns, self.stats, check)
        except OSError:
            self.stats.upstream(up.label, "error")
            self._failed(up)
            return None

    def probe(self, loop: asyncio.AbstractEventLoop, up: Upstream, req: Request) -> None:
        """Ask a down upstream ``req`` on the side: callbacks and a timer, no Task to track."""
        a = self._send(loop, up, req, True)
        if a is None:
            return
        up.probing = True

        def verdict(alive: bool) -> None:
            if not up.probing:
                return
            up.probing = False
            a.close()
            timer.cancel()
            if alive:
                self.stats.upstream(up.label, "ok", time.perf_counter() - a.t0)
                self._healthy(up)
            else:
                self.stats.upstream(up.label, "timeout")
                self._failed(up, probe=True)

        def done(fut: asyncio.Future[bytes]) -> None:
            # Any validated answer but SERVFAIL/REFUSED shows the upstream works again.
            ok = not fut.cancelled() and fut.exception() is None and \
                fut.result()[3] & 0xF not in (SERVFAIL, REFUSED)
            verdict(ok)

        timer = loop.call_later(self.opts.upstream_total_timeout, verdict, False)
        a.fut.add_done_callback(done)

    async def query(self, req: Request, ups: list[Upstream]) -> tuple[bytes, Upstream]:
        data, up, _ = await self.query_checked(req, ups)
        return data, up

    async def query_checked(self, req: Request, ups: list[Upstream],
                            check: Check | None = None) -> tuple[bytes, Upstream, Any]:
        """Like ``query``; a reply that ``check`` rejects is ignored like a spoof, and
        what ``check`` returned for the accepted reply is the third item (None for a
        question-less FORMERR/NOTIMP)."""
        loop = asyncio.get_running_loop()
        opts, stats = self.opts, self.stats
        order, probes = self.plan(ups)
        for up in probes:
            self.probe(loop, up, req)
        start = loop.time()
        deadline = start + opts.upstream_total_timeout
        max_sends = max(3, len(order))
        attempts: list[_UdpAttempt] = []
        sends = 0
        next_send = start
        last_bad: tuple[bytes, Upstream, Any] | None = None
        no_edns: set[str] = set()
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if now >= next_send and sends < max_sends:
                    up = order[sends % len(order)]
                    sends += 1
                    next_send = now + opts.upstream_timeout
                    a = self._send(loop, up, req, up.label not in no_edns, check)
                    if a is None:
                        next_send = now
                        continue
                    attempts.append(a)
                if not attempts:
                    if sends >= max_sends:
                        break
                    await asyncio.sleep(max(0.0, min(next_send, deadline) - now))
                    continue
                wait = max(0.0, min(next_send if sends < max_sends else deadline, deadline) - now)
                await _first_done(loop, [a.fut for a in attempts], wait)
                for a in [a for a in attempts if a.fut.done()]:
                    attempts.remove(a)
                    a.close()
                    outcome = await self._handle(a, deadline - loop.time())
                    if outcome == "retry-no-edns":
                        no_edns.add(a.up.label)
                        b = self._send(loop, a.up, req, False, check)
                        if b is None:
                            next_send = loop.time()
                        else:
                            attempts.append(b)
                    elif isinstance(outcome, bytes):
                        rcode = outcome[3] & 0xF
                        if rcode in (SERVFAIL, REFUSED, FORMERR, NOTIMP):
                            last_bad = (outcome, a.up, a.parsed)
                            next_send = loop.time()   # ask the next upstream now
                        else:
                            self._healthy(a.up)
                            return outcome, a.up, a.parsed
                    else:
                        next_send = loop.time()
        finally:
            for a in attempts:
                a.close()
                # One asked moments ago and overtaken by another's answer did not fail.
                if time.perf_counter() - a.t0 >= opts.upstream_timeout:
                    stats.upstream(a.up.label, "timeout")
                    self._failed(a.up)
        if last_bad is not None:
            return last_bad
        raise UpstreamFailure("no upstream answered")

    async def _handle(self, a: _UdpAttempt, remaining: float) -> bytes | str | None:
        stats = self.stats
        exc = a.fut.exception()
        if exc is not None:
            stats.upstream(a.up.label, "error")
            self._failed(a.up)
            return None
        data = a.fut.result()
        if data[2] & 0x02:   # TC: the full answer only fits over TCP
            stats.upstream(a.up.label, "truncated")
            try:
                data = await tcp_exchange(a.up, a.req, max(0.1, remaining), a.edns)
                if a.check is not None:
                    a.parsed = a.check(data)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError):
                stats.upstream(a.up.label, "error")
                self._failed(a.up)
                return None
        rcode = data[3] & 0xF
        if a.edns and rcode in (FORMERR, NOTIMP):
            stats.upstream(a.up.label, "error")
            return "retry-no-edns"
        stats.upstream(a.up.label, "ok", time.perf_counter() - a.t0)
        return data

    def _failed(self, up: Upstream, probe: bool = False) -> None:
        if not up.down:
            up.failures += 1
            if up.down:
                up.down_until = time.monotonic() + 1.0   # first probe in a second
                self.stats.upstream_state[up.label] = 0
        elif probe:
            # Only failed probes lengthen the back-off: a burst of queries that
            # were in flight when it went down must not push the next probe away.
            up.failures += 1
            up.down_until = time.monotonic() + min(
                MAX_PROBE_INTERVAL, 2.0 ** (up.failures - DOWN_AFTER))

    def _healthy(self, up: Upstream) -> None:
        up.failures = 0
        up.down_until = 0.0
        self.stats.upstream_state[up.label] = 1

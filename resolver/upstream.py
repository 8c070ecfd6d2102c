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
from dataclasses import dataclass

from .config import Endpoint, ServerOptions, format_endpoint
from .stats import Stats
from .wire import FORMERR, NOTIMP, REFUSED, SERVFAIL, Request, make_query, question_matches

MAX_REPLY = 65535


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time."""


@dataclass
class Upstream:
    """One upstream server and its recent health."""

    host: str
    port: int
    label: str = ""
    failures: int = 0            # consecutive failures
    down_until: float = 0.0      # monotonic time before which it is only probed

    def __post_init__(self) -> None:
        self.label = self.label or format_endpoint((self.host, self.port))
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @classmethod
    def of(cls, ep: Endpoint) -> Upstream:
        return cls(ep[0], ep[1])


class _UdpAttempt:
    """One datagram exchange; ``fut`` gets the accepted reply bytes or an OSError."""

    def __init__(self, loop: asyncio.AbstractEventLoop, up: Upstream, req: Request,
                 edns: bool, stats: Stats) -> None:
        self.loop = loop
        self.up = up
        self.req = req
        self.edns = edns
        self.stats = stats
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
            if self._acceptable(data):
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


class Upstreams:
    """Sends a question to a list of upstreams: next one after ``upstream_timeout``
    without giving up on the earlier ones, until ``upstream_total_timeout``."""

    def __init__(self, opts: ServerOptions, stats: Stats) -> None:
        self.opts = opts
        self.stats = stats

    def order(self, ups: list[Upstream]) -> list[Upstream]:
        """Healthy upstreams first; ones in back-off still get probed last."""
        now = time.monotonic()
        healthy = [u for u in ups if u.down_until <= now]
        return healthy + [u for u in ups if u.down_until > now] if len(healthy) < len(ups) else ups

    async def query(self, req: Request, ups: list[Upstream]) -> tuple[bytes, Upstream]:
        loop = asyncio.get_running_loop()
        opts, stats = self.opts, self.stats
        order = self.order(ups)
        start = loop.time()
        deadline = start + opts.upstream_total_timeout
        max_sends = max(3, len(order))
        attempts: list[_UdpAttempt] = []
        sends = 0
        next_send = start
        last_bad: tuple[bytes, Upstream] | None = None
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
                    try:
                        attempts.append(_UdpAttempt(loop, up, req, up.label not in no_edns, stats))
                    except OSError:
                        stats.upstream(up.label, "error")
                        self._failed(up)
                        next_send = now
                        continue
                if not attempts:
                    if sends >= max_sends:
                        break
                    await asyncio.sleep(max(0.0, min(next_send, deadline) - now))
                    continue
                wait = max(0.0, min(next_send if sends < max_sends else deadline, deadline) - now)
                done, _ = await asyncio.wait([a.fut for a in attempts], timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                for a in [a for a in attempts if a.fut.done()]:
                    attempts.remove(a)
                    a.close()
                    outcome = await self._handle(a, deadline - loop.time())
                    if outcome == "retry-no-edns":
                        no_edns.add(a.up.label)
                        try:
                            attempts.append(_UdpAttempt(loop, a.up, req, False, stats))
                        except OSError:
                            next_send = loop.time()
                    elif isinstance(outcome, bytes):
                        rcode = outcome[3] & 0xF
                        if rcode in (SERVFAIL, REFUSED, FORMERR, NOTIMP):
                            last_bad = (outcome, a.up)
                            next_send = loop.time()   # ask the next upstream now
                        else:
                            self._healthy(a.up)
                            return outcome, a.up
                    else:
                        next_send = loop.time()
        finally:
            for a in attempts:
                a.close()
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
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                stats.upstream(a.up.label, "error")
                return None
        rcode = data[3] & 0xF
        if a.edns and rcode in (FORMERR, NOTIMP):
            stats.upstream(a.up.label, "error")
            return "retry-no-edns"
        stats.upstream(a.up.label, "ok", time.perf_counter() - a.t0)
        return data

    def _failed(self, up: Upstream) -> None:
        up.failures += 1
        if up.failures >= 3:
            # Exponential back-off, capped: probed again after at most 60 s.
            up.down_until = time.monotonic() + min(60.0, 2.0 ** (up.failures - 3))
            self.stats.upstream_state[up.label] = 0

    def _healthy(self, up: Upstream) -> None:
        up.failures = 0
        up.down_until = 0.0
        self.stats.upstream_state[up.label] = 1

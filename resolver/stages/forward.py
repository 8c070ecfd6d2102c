"""Forwarding: the terminal of the pipeline, asking upstreams (or a forward zone's servers).

It is the one asynchronous part: ``start(q, done)`` sends the question and
returns; ``done(q, reply)`` is called when the answer is in (or with None when
asking failed with an error, which the pipeline turns into SERVFAIL).  Only the
upstream transport code awaits: its coroutine is driven by hand here
(``_Flight``), without a Task.  Why not a Task: a Task per forwarded query (its
creation, registration and an extra loop iteration before it first runs) cost
more than anything else the edge does for a miss.  The transport awaits only
futures, so resuming it is what a Task would do: when the future it yielded is
done, send ``None`` in.

Why de-duplicate: identical questions in flight share one upstream query, which
saves upstream work and defeats the birthday attack on the forwarder
(CVE-2020-25686); the number of waiters per question and the number of
questions in flight are bounded.  The answer is parsed once, for every waiter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..names import Zones
from ..reply import Reply
from ..stats import Stats
from ..upstream import Upstream, UpstreamFailure, Upstreams
from ..wire import (
    EDE_NETWORK_ERROR,
    SERVFAIL,
    Answer,
    Request,
    build_reply,
    parse_answer,
)

log = logging.getLogger("hushdns")

Done = Callable[[Request, "Reply | None"], None]


class _Flight:
    """One question in flight upstream: the transport coroutine and the queries waiting for it."""

    __slots__ = ("forward", "key", "coro", "waiters")

    def __init__(self, forward: Forward, key: bytes, waiters: list[tuple[Request, Done]]) -> None:
        self.forward = forward
        self.key = key
        self.waiters = waiters
        self.coro: Any = None

    def step(self, _fut: Any = None) -> None:
        coro = self.coro
        if coro is None:
            return   # closed (server stop)
        try:
            fut = coro.send(None)
        except StopIteration as stop:
            self.coro = None
            self.forward._land(self, stop.value)
            return
        except Exception:
            self.coro = None
            log.exception("error forwarding %s", self.waiters[0][0].qname)
            self.forward._land(self, None)
            return
        if fut is None:   # a bare yield (asyncio.sleep(0)): go round the loop once
            asyncio.get_running_loop().call_soon(self.step, None)
            return
        fut._asyncio_future_blocking = False
        fut.add_done_callback(self.step)

    def close(self) -> None:
        """Stop waiting: close the transport (its sockets), answer nobody."""
        coro, self.coro = self.coro, None
        if coro is not None:
            coro.close()


TRANSPORT_NAMES = {"tls": "DNS over TLS", "https": "DNS over HTTPS"}


def _named(up: Upstream) -> str:
    """An upstream as ``query`` names it: plain ones by address (UDP, TCP after TC), others with their transport."""
    name = TRANSPORT_NAMES.get(up.transport)
    return up.label if name is None else f"{up.label} ({name})"


class Forward:
    def __init__(self, config: Config, stats: Stats,
                 inflight: dict[bytes, _Flight] | None = None) -> None:
        self.stats = stats
        self.cache_cfg = config.cache
        self.opts = config.server
        # One Upstream (and so one health state) per endpoint, shared by zones.
        pool: dict[tuple[str, int], Upstream] = {}
        self.default = [pool.setdefault(ep, Upstream.of(ep)) for ep in config.upstreams]
        self.zones = {z: [pool.setdefault(ep, Upstream.of(ep)) for ep in eps]
                      for z, eps in config.forward_zones.items()}
        self.zone_set = Zones(self.zones)   # a one-lookup reject for names under no zone
        stats.upstream_state = {u.label: 0 if u.down else 1 for u in pool.values()}
        stats.upstream_transport = {u.label: u.transport for u in pool.values()}
        self.pool = list(pool.values())
        self.upstreams = Upstreams(config.server, stats)
        # Questions in flight (shared by the pipelines of one server, across reloads).
        self.inflight: dict[bytes, _Flight] = inflight if inflight is not None else {}

    def zone(self, qname: str) -> str | None:
        """The longest forward zone ``qname`` is in, or None."""
        return self.zone_set.find(qname) if self.zones else None

    def route(self, qname: str) -> list[Upstream]:
        """The servers for a name: the longest matching forward zone, else the upstreams."""
        if self.zones:
            z = self.zone_set.find(qname)
            if z is not None:
                return self.zones[z]
        return self.default

    def explain(self, q: Request) -> str:
        zone = self.zone(q.qname)
        via = f" (forward zone {zone})" if zone is not None else ""
        return "forwarded to " + ", ".join(_named(u) for u in self.route(q.qname)) + via

    def start(self, q: Request, done: Done) -> None:
        """Ask upstream for ``q``; ``done(q, reply)`` follows (at once when over a bound)."""
        key = q.key
        inflight = self.inflight
        flight = inflight.get(key)
        if flight is not None:
            if len(flight.waiters) > self.opts.max_waiters:   # the first is the asker
                done(q, self._limited(q, "waiters"))
            else:
                flight.waiters.append((q, done))
            return
        if len(inflight) >= self.opts.max_inflight:
            done(q, self._limited(q, "inflight"))
            return
        inflight[key] = flight = _Flight(self, key, [(q, done)])
        flight.coro = self._ask(q)
        flight.step()

    def _land(self, flight: _Flight, got: tuple[Answer, str] | None) -> None:
        if self.inflight.get(flight.key) is flight:
            del self.inflight[flight.key]
        for q, done in flight.waiters:
            if got is None:
                done(q, None)
            else:
                answer, label = got
                done(q, Reply("servfail" if answer.rcode == SERVFAIL else "forwarded",
                              answer=answer, upstream=label))

    def close(self) -> None:
        """Server stop: drop every question in flight (their queries get no answer)."""
        for flight in list(self.inflight.values()):
            flight.close()
        self.inflight.clear()
        for up in self.pool:   # DoT/DoH persistent connections
            up.close()

    async def _ask(self, req: Request) -> tuple[Answer, str]:
        c = self.cache_cfg
        # Minimal responses (as unbound's default): a positive answer is kept and
        # replayed without the authority and additional sections, which stub
        # resolvers ignore; a client that asked for DNSSEC (DO) gets them all.
        minimal = self.opts.minimal_responses and not req.do

        def check(data: bytes) -> Answer:
            # Run on each reply that passes ID and question checks, so a malformed
            # one is ignored while the genuine answer is awaited (TuDoor).
            return parse_answer(data, req, c.min_ttl, c.max_ttl, c.negative_ttl, minimal)

        try:
            _, up, answer = await self.upstreams.query_checked(req, self.route(req.qname), check)
        except UpstreamFailure as exc:
            return self._servfail(exc.ede), "none"
        if answer is None:   # a FORMERR/NOTIMP that did not even echo the question
            self.stats.upstream(up.label, "error")
            return self._servfail(), up.label
        return answer, up.label

    def _servfail(self, ede: int | None = None) -> Answer:
        return Answer(SERVFAIL, False, 0, 0, 0, b"", (), self.cache_cfg.servfail_ttl,
                      ede=EDE_NETWORK_ERROR if ede is None else ede)

    def _limited(self, req: Request, reason: str) -> Reply:
        key = (req.info.label, reason)
        self.stats.limited[key] = self.stats.limited.get(key, 0) + 1
        # Bytes, not an Answer: a limit must not be cached for everyone else.
        return Reply("servfail", wire=build_reply(req, SERVFAIL), note=f"over the {reason} limit")

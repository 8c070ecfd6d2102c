"""Forwarding: the last stage, asking upstreams (or a forward zone's servers) and parsing the answer once.

Why de-duplicate: identical questions in flight share one upstream query, which
saves upstream work and defeats the birthday attack on the forwarder
(CVE-2020-25686); the number of waiters per question and the number of
questions in flight are bounded.
"""

from __future__ import annotations

import asyncio

from ..config import Config
from ..response import Response
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


class Forward:
    def __init__(self, config: Config, stats: Stats) -> None:
        self.stats = stats
        self.cache_cfg = config.cache
        self.opts = config.server
        # One Upstream (and so one health state) per endpoint, shared by zones.
        pool: dict[tuple[str, int], Upstream] = {}
        self.default = [pool.setdefault(ep, Upstream.of(ep)) for ep in config.upstreams]
        self.zones = {z: [pool.setdefault(ep, Upstream.of(ep)) for ep in eps]
                      for z, eps in config.forward_zones.items()}
        stats.upstream_state = {u.label: 0 if u.down else 1 for u in pool.values()}
        self.upstreams = Upstreams(config.server, stats)
        # Questions in flight -> futures of the queries waiting for the same answer.
        self.inflight: dict[bytes, list[asyncio.Future[tuple[Answer, str]]]] = {}

    def route(self, qname: str) -> list[Upstream]:
        """The servers for a name: the longest matching forward zone, else the upstreams."""
        zones = self.zones
        if zones:
            s = qname
            while True:
                ups = zones.get(s)
                if ups is not None:
                    return ups
                i = s.find(".")
                if i < 0:
                    break
                s = s[i + 1:]
        return self.default

    async def resolve(self, req: Request) -> Response:
        key = req.key
        inflight = self.inflight
        waiting = inflight.get(key)
        if waiting is not None:
            return await self._join(req, waiting)
        if len(inflight) >= self.opts.max_inflight:
            return self._limited(req, "inflight")
        # The waiters' futures, if any join: none is made for the usual lone question.
        inflight[key] = waiting = []
        try:
            answer, label = await self._ask(req)
        except BaseException as exc:
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()   # retrieved: a waiter that went away must not log it
            raise
        finally:
            del inflight[key]
        for fut in waiting:
            if not fut.done():
                fut.set_result((answer, label))
        return Response("servfail" if answer.rcode == SERVFAIL else "forwarded",
                        answer=answer, upstream=label)

    async def _join(self, req: Request,
                    waiting: list[asyncio.Future[tuple[Answer, str]]]) -> Response:
        """Wait for the answer to the same question already in flight."""
        if len(waiting) >= self.opts.max_waiters:
            return self._limited(req, "waiters")
        fut = asyncio.get_running_loop().create_future()
        waiting.append(fut)
        answer, label = await fut
        return Response("servfail" if answer.rcode == SERVFAIL else "forwarded",
                        answer=answer, upstream=label)

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

    def _limited(self, req: Request, reason: str) -> Response:
        key = (req.info.label, reason)
        self.stats.limited[key] = self.stats.limited.get(key, 0) + 1
        # Bytes, not an Answer: a limit must not be cached for everyone else.
        return Response("servfail", wire=build_reply(req, SERVFAIL))

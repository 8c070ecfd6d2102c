"""Cache: upstream answers kept as bytes, replayed with the client's ID and casing, TTLs counted down.

Why bytes: a hit must cost a dict lookup and a header, not a parse.  Bounded
by ``max_entries`` with LRU eviction.  Expired entries stay until evicted so
that, when every upstream fails, an answer up to ``serve_stale`` seconds past
its expiry can be served with TTL 30 (RFC 8767).  Upstream failures
(SERVFAIL) are cached for ``servfail_ttl`` seconds at most (RFC 9520).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..config import Cache as CacheConfig
from ..response import Response
from ..stats import Stats
from ..wire import EDE_STALE_ANSWER, SERVFAIL, Answer, Request, build_reply, opt_record
from . import Stage

STALE_TTL = 30
# EDE 0 (Other): the answer to an RD=0 query that is not in the cache.
_NOT_CACHED = {do: opt_record(1232, do, ede=0, ede_text="not in cache (RD=0)")
               for do in (False, True)}


class Cache:
    def __init__(self, next: Stage, cfg: CacheConfig, stats: Stats,
                 entries: OrderedDict[bytes, Answer] | None = None) -> None:
        self.next = next
        self.cfg = cfg
        self.stats = stats
        # Kept across reloads by passing the old table in.
        self.entries: OrderedDict[bytes, Answer] = entries if entries is not None else OrderedDict()
        stats.cache_entries = self.entries.__len__

    async def resolve(self, req: Request) -> Response:
        key = req.key
        entry = self.entries.get(key)
        now = time.monotonic()
        if entry is not None and entry.stored + entry.ttl > now:
            self.entries.move_to_end(key)
            self.stats.cache_hits += 1
            result = "servfail" if entry.rcode == SERVFAIL else "cached"
            return Response(result, answer=entry)
        self.stats.cache_misses += 1
        if not req.flags & 0x0100:   # RD=0 (an access.allow_snoop client): the cache only
            return Response("servfail", wire=build_reply(req, SERVFAIL, opt=_NOT_CACHED[req.do]))
        resp = await self.next.resolve(req)
        answer = resp.answer
        if answer is None:
            return resp
        now = time.monotonic()
        if answer.rcode == SERVFAIL:
            if entry is not None and entry.rcode != SERVFAIL:
                expired_at = entry.expired_at or entry.stored + entry.ttl
                if now - expired_at <= self.cfg.serve_stale:
                    # Serve the stale answer and do not ask upstream again for STALE_TTL.
                    stale = entry.with_ttl(STALE_TTL, now)
                    stale.ede = EDE_STALE_ANSWER
                    stale.expired_at = expired_at
                    self._store(key, stale)
                    return Response("cached", answer=stale)
            ttl = self.cfg.servfail_ttl
            if ttl > 0:
                answer.ttl = ttl
                answer.stored = now
                self._store(key, answer)
            return resp
        if answer.ttl > 0:
            answer.stored = now
            self._store(key, answer)
        return resp

    def _store(self, key: bytes, answer: Answer) -> None:
        entries = self.entries
        entries[key] = answer
        entries.move_to_end(key)
        if len(entries) > self.cfg.max_entries:
            entries.popitem(last=False)
            self.stats.cache_evictions += 1

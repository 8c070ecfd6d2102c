"""Cache: upstream answers kept as bytes, replayed with the client's ID and casing, TTLs counted down.

Why bytes: a hit must cost a dict lookup and a header, not a parse.  Bounded
by ``max_entries`` with LRU eviction.  Expired entries stay until evicted so
that, when every upstream fails, an answer up to ``serve_stale`` seconds past
its expiry can be served with TTL 30 (RFC 8767).  Upstream failures
(SERVFAIL) are cached for ``servfail_ttl`` seconds at most (RFC 9520).

``on_query`` answers hits (their ``keep`` holds the entry, for the reply memo);
``on_answer`` stores what comes back from upstream and serves stale answers.
It is the last stage before forwarding, so no stage after it answers with a
``keep`` that its own later hits could contradict.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..config import Cache as CacheConfig
from ..memo import CacheHit
from ..reply import Reply
from ..stats import Stats
from ..wire import EDE_STALE_ANSWER, SERVFAIL, Answer, Request, build_reply, opt_record

STALE_TTL = 30
# EDE 0 (Other): the answer to an RD=0 query that is not in the cache.
_NOT_CACHED = {do: opt_record(1232, do, ede=0, ede_text="not in cache (RD=0)")
               for do in (False, True)}


class Cache:
    per_query = False

    def __init__(self, cfg: CacheConfig, stats: Stats,
                 entries: OrderedDict[bytes, Answer] | None = None) -> None:
        self.cfg = cfg
        self.stats = stats
        # Kept across reloads by passing the old table in.
        self.entries: OrderedDict[bytes, Answer] = entries if entries is not None else OrderedDict()
        stats.cache_entries = self.entries.__len__
        self.hit = CacheHit(stats, self.entries)   # every hit's keep (resolver.memo)

    def on_query(self, q: Request) -> Reply | None:
        key = q.key
        entry = self.entries.get(key)
        if entry is not None and entry.stored + entry.ttl > time.monotonic():
            self.entries.move_to_end(key)
            self.stats.cache_hits += 1
            # Positional (result, wire, answer, list, rule, upstream, note, keep): every hit.
            return Reply("servfail" if entry.rcode == SERVFAIL else "cached", None, entry,
                         None, None, None, None, self.hit)
        self.stats.cache_misses += 1
        if not q.flags & 0x0100:   # RD=0 (an access.allow_snoop client): the cache only
            return Reply("servfail", wire=build_reply(q, SERVFAIL, opt=_NOT_CACHED[q.do]),
                         note="not in the cache (RD=0 asks for the cache only)")
        return None

    def on_answer(self, q: Request, reply: Reply) -> Reply:
        answer = reply.answer
        if answer is None:
            return reply
        key = q.key
        now = time.monotonic()
        if answer.rcode == SERVFAIL:
            entry = self.entries.get(key)
            if entry is not None and entry.rcode != SERVFAIL:
                if entry.stored + entry.ttl > now:   # refreshed meanwhile by another query
                    return Reply("cached", answer=entry)
                expired_at = entry.expired_at or entry.stored + entry.ttl
                if now - expired_at <= self.cfg.serve_stale:
                    # Serve the stale answer and do not ask upstream again for STALE_TTL.
                    stale = entry.with_ttl(STALE_TTL, now)
                    stale.ede = EDE_STALE_ANSWER
                    stale.expired_at = expired_at
                    self._store(key, stale)
                    return Reply("cached", answer=stale)
            ttl = self.cfg.servfail_ttl
            if ttl > 0:
                answer.ttl = ttl
                answer.stored = now
                self._store(key, answer)
            return reply
        if answer.ttl > 0:
            answer.stored = now
            self._store(key, answer)
        return reply

    def _store(self, key: bytes, answer: Answer) -> None:
        entries = self.entries
        entries[key] = answer
        entries.move_to_end(key)
        if len(entries) > self.cfg.max_entries:
            entries.popitem(last=False)
            self.stats.cache_evictions += 1

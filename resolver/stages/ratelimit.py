"""Per-client rate limit: a token bucket per client address.

Why: one stuck app or infected device looping on DNS must not starve the rest
of the LAN (or make hushdns a reflector for spoofed floods).  Each address
gets ``burst`` tokens refilled at ``qps`` per second; a query without a token
is dropped, answered REFUSED, or answered TC (over UDP: the client may retry
over TCP, which proves its address).  The bucket table is bounded: beyond
``max_buckets`` addresses the oldest bucket is forgotten.

``per_query`` is True: the reply memo spends a token for every answer it gives.
"""

from __future__ import annotations

import time

from ..config import RateLimit as RateLimitConfig
from ..reply import Reply
from ..stats import Stats
from ..wire import REFUSED, Request, build_reply, truncate

MAX_BUCKETS = 65_536


class RateLimit:
    per_query = True

    def __init__(self, cfg: RateLimitConfig, stats: Stats, max_buckets: int = MAX_BUCKETS,
                 buckets: dict[str, list[float]] | None = None) -> None:
        self.rate = cfg.qps
        self.burst = max(cfg.burst, 1.0)
        self.action = cfg.action
        self.stats = stats
        self.max_buckets = max_buckets
        # address -> [tokens, last refill]; dicts keep insertion order, so the
        # first key is the oldest bucket.
        self.buckets: dict[str, list[float]] = buckets if buckets is not None else {}

    def on_query(self, q: Request) -> Reply | None:
        if self.take(q.client, time.monotonic()):
            return None
        return self.limited(q)

    def take(self, client: str, now: float) -> bool:
        """Spend one of ``client``'s tokens; False when it has none left (nothing is spent)."""
        b = self.buckets.get(client)
        if b is None:
            if len(self.buckets) >= self.max_buckets:
                del self.buckets[next(iter(self.buckets))]
            b = self.buckets[client] = [self.burst, now]
        else:
            tokens = b[0] + (now - b[1]) * self.rate
            b[0] = tokens if tokens < self.burst else self.burst
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def limited(self, q: Request) -> Reply:
        key = (q.info.label, "ratelimit")
        self.stats.limited[key] = self.stats.limited.get(key, 0) + 1
        action = self.action
        if action == "tc" and q.proto == "udp":
            return Reply("refused", wire=truncate(q, build_reply(q, 0)), note="rate limited (TC)")
        if action == "drop" and q.proto == "udp":
            return Reply("dropped", note="rate limited (dropped)")
        # Over TCP the address is proven and a silent drop would stall the
        # client's pipelined stream: answer REFUSED instead.
        return Reply("refused", wire=build_reply(q, REFUSED), note="rate limited (REFUSED)")

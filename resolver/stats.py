"""Plain counters that the hot path increments and the Prometheus collector reads.

Why plain dicts and ints: a prometheus-client ``Counter.labels(...).inc()`` per
query costs more than answering a blocked query.  The hot path does one dict
increment per fact; ``resolver.metrics`` turns these into samples at scrape time.
Counts are exact (asyncio runs the hot path on one thread).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .counting import count_query

# Seconds. Blocked/cached answers take tens of microseconds, forwarded ones
# milliseconds to seconds; the buckets cover both ends.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# Every value the ``result`` label can take (documented in the README).
RESULTS: tuple[str, ...] = (
    "forwarded", "cached", "blocked", "refused", "servfail",
    "formerr", "notimp", "dropped", "local",
)


@dataclass
class Histogram:
    """Cumulative-at-scrape histogram: per-bucket counts (non-cumulative) and a sum."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def n(self) -> int:
        """Observations so far: the buckets' sum (one increment less per query)."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Stats:
    """Every counter hushdns exports, as plain Python data."""

    def __init__(self) -> None:
        self.started = time.time()
        # (client, qtype, result) -> count
        self.queries: dict[tuple[str, str, str], int] = {}
        # (client, list) -> count
        self.blocked: dict[tuple[str, str], int] = {}
        # (list, domain) -> count; only for lists with track_domains: true
        self.blocked_domains: dict[tuple[str, str], int] = {}
        # result -> Histogram
        self.request_duration: dict[str, Histogram] = {}
        # (upstream, outcome) -> count; outcome in ok, timeout, error, truncated, spoof_rejected
        self.upstream_requests: dict[tuple[str, str], int] = {}
        # upstream -> Histogram
        self.upstream_duration: dict[str, Histogram] = {}
        # Client connections accepted per stream transport: tcp, tls (DoT), https (DoH)
        self.connections: dict[str, int] = {}
        # upstream -> its transport (udp, tls, https): the ``transport`` label
        self.upstream_transport: dict[str, str] = {}
        # upstream -> 1 (answering) / 0 (in back-off after repeated failures)
        self.upstream_state: dict[str, int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_evictions = 0
        # Set by the cache stage so the collector can read the live size.
        self.cache_entries: Callable[[], int] = lambda: 0
        # list name -> entries / unix time of last successful load / failures
        self.list_entries: dict[str, int] = {}
        self.list_last_success: dict[str, float] = {}
        self.list_load_failures: dict[str, int] = {}
        self.config_reload_success = 1
        # Requests turned away by bounds (in-flight cap, rate limit, ...): (client, reason) -> count
        self.limited: dict[tuple[str, str], int] = {}
        # A/AAAA records with private/loopback addresses removed from public answers
        self.rebind_removed = 0
        # Household controls (resolver/control): group -> 1 while blocking is paused for it,
        # paused device -> 1, refused control requests by (listener, reason),
        # lookups of bypass names by (client, kind).
        self.paused: dict[str, int] = {}
        self.paused_devices: dict[str, int] = {}
        self.control_refused: dict[tuple[str, str], int] = {}
        self.bypass_lookups: dict[tuple[str, str], int] = {}
        # The query log (resolver/querylog): rows written; rows dropped by reason
        # (queue_full, disk_full, locked, corrupt, unavailable, error); per device
        # (client label) the (device, name) pairs never seen before.  Added up by the
        # query log (on the event loop) from the writer process's reports, read at scrape time.
        self.querylog_written = 0
        self.querylog_dropped: dict[str, int] = {}
        self.device_new_names: dict[str, int] = {}
        # client label -> unix time its query count last grew (0: a known device that never
        # asked); kept by resolver/devices/service.py every few seconds, not per query
        self.device_last_query: dict[str, float] = {}
        # Client label values released after metrics.client_idle without a query
        self.client_labels_released = 0
        # PROXY protocol v2: reason -> datagrams / connections dropped (resolver/proxy_protocol.py)
        self.proxy_dropped: dict[str, int] = {}
        # dnstap: messages not sent because the queue was full or the collector gone
        self.dnstap_dropped = 0
        # ... and those lost in a write to a collector that went away (the writer thread's count)
        self.dnstap_lost: Callable[[], int] = lambda: 0
        # The reply memo's (answers given, replies remembered), read by the metrics
        self.memo_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def query(self, client: str, qtype: str, result: str, duration: float) -> None:
        """Count one answered (or dropped) query. The hot path calls the same function,
        ``resolver.counting.count_query``, directly (compiled, without this frame)."""
        count_query(self, client, qtype, result, duration)

    @staticmethod
    def new_histogram() -> Histogram:
        """A request-duration histogram for a result word seen the first time."""
        return Histogram()

    def block(self, client: str, list_name: str, domain: str | None) -> None:
        """Count a blocked query per client and list (and per domain when tracked)."""
        key = (client, list_name)
        self.blocked[key] = self.blocked.get(key, 0) + 1
        if domain is not None:
            dkey = (list_name, domain)
            self.blocked_domains[dkey] = self.blocked_domains.get(dkey, 0) + 1

    def upstream(self, upstream: str, outcome: str, duration: float | None = None) -> None:
        """Count one upstream exchange outcome (and its duration when it got an answer)."""
        key = (upstream, outcome)
        self.upstream_requests[key] = self.upstream_requests.get(key, 0) + 1
        if duration is not None:
            h = self.upstream_duration.get(upstream)
            if h is None:
                h = self.upstream_duration[upstream] = Histogram()
            h.observe(duration)

"""count_query (what the hot path calls, and Stats.query too) moves the counters as
Histogram.observe and a plain count would: the inlined bucket choice included."""

from __future__ import annotations

import random

from resolver.counting import count_query
from resolver.stats import DURATION_BUCKETS, Histogram, Stats


def test_count_query_matches_stats_query() -> None:
    rng = random.Random(15)
    ref, got = Stats(), Stats()
    durations = [*DURATION_BUCKETS, 0.0, 1e-9, 99.0, float("nan")]
    for _ in range(2000):
        args = (rng.choice(("a", "b", "other")), rng.choice(("A", "AAAA", "none")),
                rng.choice(("blocked", "cached", "forwarded")),
                rng.choice(durations) if rng.random() < 0.3 else rng.random() / 10)
        client, qtype, result, duration = args
        ref.queries[(client, qtype, result)] = ref.queries.get((client, qtype, result), 0) + 1
        ref.request_duration.setdefault(result, Histogram()).observe(duration)
        if rng.random() < 0.5:
            count_query(got, *args)   # the hot path's call
        else:
            got.query(*args)          # everyone else's
    assert got.queries == ref.queries
    assert got.request_duration.keys() == ref.request_duration.keys()
    for result, h in ref.request_duration.items():
        assert got.request_duration[result].counts == h.counts
        assert repr(got.request_duration[result].total) == repr(h.total)

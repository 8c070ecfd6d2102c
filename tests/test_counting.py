"""count_query (what the compiled hot path calls) moves the counters exactly as Stats.query does."""

from __future__ import annotations

import random

from resolver.counting import count_query
from resolver.stats import DURATION_BUCKETS, Stats


def test_count_query_matches_stats_query() -> None:
    rng = random.Random(15)
    ref, got = Stats(), Stats()
    durations = [*DURATION_BUCKETS, 0.0, 1e-9, 99.0, float("nan")]
    for _ in range(2000):
        args = (rng.choice(("a", "b", "other")), rng.choice(("A", "AAAA", "none")),
                rng.choice(("blocked", "cached", "forwarded")),
                rng.choice(durations) if rng.random() < 0.3 else rng.random() / 10)
        ref.query(*args)
        count_query(got, *args)
    assert got.queries == ref.queries
    assert got.request_duration.keys() == ref.request_duration.keys()
    for result, h in ref.request_duration.items():
        assert got.request_duration[result].counts == h.counts
        assert repr(got.request_duration[result].total) == repr(h.total)

"""The rate-limit stage against the stage contract."""

from __future__ import annotations

from pathlib import Path

import dnslib

from resolver.config import RateLimit as RateLimitConfig
from resolver.stages.ratelimit import RateLimit
from resolver.stats import Stats
from tests.stagekit import query, rcode, setup


def test_passes_within_the_burst_then_answers_per_action(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    for action, proto, want in (("refused", "udp", "refused"), ("drop", "udp", "dropped"),
                                ("drop", "tcp", "refused"), ("tc", "udp", "refused")):
        stats = Stats()
        stage = RateLimit(RateLimitConfig(qps=0.001, burst=2, action=action), stats)
        assert [stage.on_query(query("a.example", "10.0.0.7", table, proto=proto))
                for _ in range(2)] == [None, None]
        out = stage.on_query(query("a.example", "10.0.0.7", table, proto=proto))
        assert out is not None and out.result == want, (action, proto)
        assert out.keep is None
        if action == "tc":
            assert dnslib.DNSRecord.parse(out.wire).header.tc == 1
        elif want == "refused":
            assert rcode(out) == 5
        assert stats.limited == {("10.0.0.7", "ratelimit"): 1}


def test_buckets_are_per_client_and_can_be_carried_over(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    cfg = RateLimitConfig(qps=0.001, burst=1, action="refused")
    stage = RateLimit(cfg, Stats())
    assert stage.on_query(query("a.example", "10.0.0.7", table)) is None
    assert stage.on_query(query("a.example", "10.0.0.8", table)) is None
    again = RateLimit(cfg, Stats(), buckets=stage.buckets)   # what a reload hands over
    assert again.on_query(query("a.example", "10.0.0.7", table)) is not None


def test_must_see_every_query() -> None:
    assert RateLimit.per_query is True   # the reply memo runs it for each answer it gives

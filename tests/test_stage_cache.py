"""The cache stage against the stage contract: on_query answers hits, on_answer stores."""

from __future__ import annotations

import time
from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.memo import Cached, CacheHit
from resolver.stages.cache import Cache
from resolver.stats import Stats
from resolver.wire import SERVFAIL
from tests.stagekit import query, setup, upstream_reply


def test_a_stored_answer_is_a_hit_with_the_clients_id_and_counted_down_ttl(tmp_path: Path) -> None:
    cfg, _, table = setup(tmp_path)
    stats = Stats()
    cache = Cache(cfg.cache, stats)
    q1 = query("www.example", "10.0.0.2", table)
    assert cache.on_query(q1) is None and stats.cache_misses == 1
    up = upstream_reply(q1)
    assert cache.on_answer(q1, up) is up
    q2 = query("WWW.example", "10.0.0.3", table)
    hit = cache.on_query(q2)
    assert hit is not None and hit.result == "cached" and stats.cache_hits == 1
    assert isinstance(hit.keep, CacheHit)                   # one per cache: nothing built per hit
    kept = hit.keep.hold(q2, hit, hit.answer.stored + 10)   # what the memo stores, if it does
    assert isinstance(kept, Cached) and kept.age == 10 and kept.valid(hit.answer.stored + 10.5)
    assert not kept.valid(hit.answer.stored + 11)           # a second older: the TTLs would differ
    out = dnslib.DNSRecord.parse(hit.answer.render(q2, hit.answer.stored + 10))
    assert out.header.id == q2.qid and out.rr[0].ttl == 50


def test_is_bounded_lru(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("upstreams: ['127.0.0.1:1']\ncache: {max_entries: 3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    table = ClientTable(cfg, load_all(cfg), LabelBound(512))
    stats = Stats()
    cache = Cache(cfg.cache, stats)
    for i in range(10):
        q = query(f"n{i}.example", "10.0.0.2", table)
        assert cache.on_query(q) is None
        cache.on_answer(q, upstream_reply(q))
    assert len(cache.entries) == 3 and stats.cache_evictions == 7 and stats.cache_entries() == 3


def test_keeps_servfail_only_briefly_and_serves_stale(tmp_path: Path) -> None:
    cfg, _, table = setup(tmp_path, "cache: {servfail_ttl: 2}\n")

    def fail(rec: dnslib.DNSRecord) -> None:
        rec.header.rcode = SERVFAIL

    cache = Cache(cfg.cache, Stats())
    q = query("down.example", "10.0.0.2", table)
    out = cache.on_answer(q, upstream_reply(q, fail))
    assert out.result == "servfail" and next(iter(cache.entries.values())).ttl == 2
    # Serve-stale: a good answer that expired, then upstream failure -> the stale answer.
    good = Cache(cfg.cache, Stats())
    q = query("stale.example", "10.0.0.2", table)
    good.on_answer(q, upstream_reply(q))
    entry = next(iter(good.entries.values()))
    entry.stored = time.monotonic() - 120   # expired 60 s ago
    assert good.on_query(q) is None
    out = good.on_answer(q, upstream_reply(q, fail))
    assert out.result == "cached" and out.answer.ttl == 30 and out.answer.ede == 3


def test_replies_without_an_answer_pass_untouched(tmp_path: Path) -> None:
    cfg, _, table = setup(tmp_path)
    from resolver.reply import Reply

    cache = Cache(cfg.cache, Stats())
    limited = Reply("servfail", wire=b"x")
    assert cache.on_answer(query("a.example", "10.0.0.2", table), limited) is limited
    assert not cache.entries

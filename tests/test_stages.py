"""Each stage alone, with a fake next stage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.response import Response
from resolver.stages.access import Access
from resolver.stages.blocking import Blocking
from resolver.stages.cache import Cache
from resolver.stages.forward import Forward
from resolver.stats import Stats
from resolver.wire import SERVFAIL, parse_answer, parse_query


class FakeNext:
    """Answers every question with one A record (or what ``make`` builds), counting calls."""

    def __init__(self, make=None) -> None:
        self.calls = 0
        self.make = make

    async def resolve(self, req):
        self.calls += 1
        rec = dnslib.DNSRecord.parse(req.data).reply()
        if self.make:
            self.make(rec)
        else:
            rec.add_answer(dnslib.RR(rec.q.qname, 1, ttl=60, rdata=dnslib.A("192.0.2.1")))
        answer = parse_answer(rec.pack(), req, 0, 86400, 3600)
        return Response("servfail" if answer.rcode == SERVFAIL else "forwarded", answer=answer)


def run(coro):
    return asyncio.run(coro)


def _setup(tmp_path: Path, extra: str = "", lists: str = "tracker.example\n"):
    (tmp_path / "l.txt").write_text(lists)
    (tmp_path / "a.txt").write_text("ok.tracker.example\n")
    (tmp_path / "c.yaml").write_text(
        "upstreams: ['127.0.0.1:1']\nblocking:\n  lists: {l: l.txt}\n  allow: {a: a.txt}\n" + extra)
    cfg = load_config(tmp_path / "c.yaml")
    lists = load_all(cfg)
    return cfg, lists, ClientTable(cfg, lists, LabelBound(512))


def _req(name: str, client: str, table: ClientTable, qtype: str = "A"):
    req = parse_query(dnslib.DNSRecord.question(name, qtype).pack())
    req.client = client
    req.info = table.lookup(client)
    return req


def test_access_refuses_outsiders_and_passes_insiders(tmp_path: Path) -> None:
    _, _, table = _setup(tmp_path)
    nxt = FakeNext()
    stage = Access(nxt)
    out = run(stage.resolve(_req("x.example", "203.0.113.5", table)))
    assert out.result == "refused" and dnslib.DNSRecord.parse(out.wire).header.rcode == 5
    assert nxt.calls == 0
    assert run(stage.resolve(_req("x.example", "192.168.1.9", table))).result == "forwarded"


def test_blocking_blocks_lists_allows_allowlist_and_counts(tmp_path: Path) -> None:
    cfg, lists, table = _setup(tmp_path, "clients: {tv: ['192.168.1.50']}\n")
    stats = Stats()
    nxt = FakeNext()
    stage = Blocking(nxt, lists, cfg.blocking, stats)
    out = run(stage.resolve(_req("a.tracker.example", "192.168.1.50", table)))
    assert out.result == "blocked" and out.list == "l" and out.rule == "tracker.example"
    assert dnslib.DNSRecord.parse(out.wire).header.rcode == 3
    assert stats.blocked == {("tv", "l"): 1}
    assert run(stage.resolve(_req("ok.tracker.example", "192.168.1.50", table))).result == "forwarded"
    assert nxt.calls == 1


def test_blocking_catches_cname_cloaking(tmp_path: Path) -> None:
    cfg, lists, table = _setup(tmp_path)

    def cloak(rec):
        rec.add_answer(dnslib.RR(rec.q.qname, 5, ttl=60, rdata=dnslib.CNAME("x.tracker.example")))
        rec.add_answer(dnslib.RR("x.tracker.example", 1, ttl=60, rdata=dnslib.A("192.0.2.7")))

    stage = Blocking(FakeNext(cloak), lists, cfg.blocking, Stats())
    out = run(stage.resolve(_req("metrics.shop.example", "10.0.0.2", table)))
    assert out.result == "blocked" and out.rule == "tracker.example"


def test_blocking_modes(tmp_path: Path) -> None:
    for mode, qtype, rcode, answers in [
        ("refused", "A", 5, []), ("nodata", "A", 0, []), ("null", "A", 0, ["0.0.0.0"]),
        ("null", "AAAA", 0, ["::"]), ("null", "MX", 0, []),
        ("['10.0.0.1', '::1']", "A", 0, ["10.0.0.1"]), ("['10.0.0.1', '::1']", "AAAA", 0, ["::1"]),
    ]:
        (tmp_path / "l.txt").write_text("tracker.example\n")
        (tmp_path / "c.yaml").write_text(
            f"upstreams: ['127.0.0.1:1']\nblocking:\n  mode: {mode}\n  ttl: 42\n  lists: {{l: l.txt}}\n")
        cfg = load_config(tmp_path / "c.yaml")
        lists = load_all(cfg)
        table = ClientTable(cfg, lists, LabelBound(512))
        stage = Blocking(FakeNext(), lists, cfg.blocking, Stats())
        out = run(stage.resolve(_req("tracker.example", "10.0.0.2", table, qtype)))
        rec = dnslib.DNSRecord.parse(out.wire)
        assert rec.header.rcode == rcode, mode
        assert [str(r.rdata) for r in rec.rr] == answers, (mode, qtype)
        assert all(r.ttl == 42 for r in rec.rr + rec.auth)
        if not answers and rcode == 0:
            assert rec.auth and rec.auth[0].rtype == 6   # NODATA carries an SOA (RFC 2308)


def test_cache_hits_serve_with_client_id_and_counted_down_ttl(tmp_path: Path) -> None:
    cfg, _, table = _setup(tmp_path)
    stats = Stats()
    nxt = FakeNext()
    cache = Cache(nxt, cfg.cache, stats)
    r1 = run(cache.resolve(_req("www.example", "10.0.0.2", table)))
    assert r1.result == "forwarded" and nxt.calls == 1
    r2 = _req("WWW.example", "10.0.0.3", table)
    hit = run(cache.resolve(r2))
    assert hit.result == "cached" and nxt.calls == 1 and stats.cache_hits == 1
    out = dnslib.DNSRecord.parse(hit.answer.render(r2, hit.answer.stored + 10))
    assert out.header.id == r2.qid and out.rr[0].ttl == 50


def test_cache_is_bounded_lru(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("x.example\n")
    (tmp_path / "c.yaml").write_text("upstreams: ['127.0.0.1:1']\ncache: {max_entries: 3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    table = ClientTable(cfg, load_all(cfg), LabelBound(512))
    stats = Stats()
    cache = Cache(FakeNext(), cfg.cache, stats)
    for i in range(10):
        run(cache.resolve(_req(f"n{i}.example", "10.0.0.2", table)))
    assert len(cache.entries) == 3 and stats.cache_evictions == 7 and stats.cache_entries() == 3


def test_cache_keeps_servfail_only_briefly_and_serves_stale(tmp_path: Path) -> None:
    cfg, _, table = _setup(tmp_path, "cache: {servfail_ttl: 2}\n")
    failing = FakeNext(lambda rec: setattr(rec.header, "rcode", SERVFAIL))
    cache = Cache(failing, cfg.cache, Stats())
    out = run(cache.resolve(_req("down.example", "10.0.0.2", table)))
    assert out.result == "servfail"
    assert next(iter(cache.entries.values())).ttl == 2
    # Serve-stale: a good answer that expired, then upstream failure -> the stale answer.
    good = Cache(FakeNext(), cfg.cache, Stats())
    run(good.resolve(_req("stale.example", "10.0.0.2", table)))
    entry = next(iter(good.entries.values()))
    entry.stored = time.monotonic() - 120   # expired 60 s ago
    good.next = failing
    out = run(good.resolve(_req("stale.example", "10.0.0.2", table)))
    assert out.result == "cached" and out.answer.ttl == 30 and out.answer.ede == 3


def test_forward_routes_forward_zones_by_longest_suffix(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "upstreams: ['192.0.2.1']\nforward_zones: {lan: ['192.168.1.1'], "
        "'in.lan': ['192.168.1.2:5533'], '168.192.in-addr.arpa': ['192.168.1.1']}\n")
    fwd = Forward(load_config(tmp_path / "c.yaml"), Stats())
    assert [u.label for u in fwd.route("nas.lan")] == ["192.168.1.1:53"]
    assert [u.label for u in fwd.route("tv.in.lan")] == ["192.168.1.2:5533"]
    assert [u.label for u in fwd.route("5.1.168.192.in-addr.arpa")] == ["192.168.1.1:53"]
    assert [u.label for u in fwd.route("example.com")] == ["192.0.2.1:53"]
    assert [u.label for u in fwd.route("plan")] == ["192.0.2.1:53"]


def test_client_labels_are_bounded(tmp_path: Path) -> None:
    labels = LabelBound(2)
    assert [labels(x) for x in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]

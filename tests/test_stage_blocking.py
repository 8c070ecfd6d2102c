"""The blocking stage against the stage contract."""

from __future__ import annotations

from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.memo import Listed
from resolver.stages.blocking import Blocking
from resolver.stats import Stats
from tests.stagekit import query, rcode, setup, upstream_reply


def test_blocks_lists_allows_allowlist_and_counts(tmp_path: Path) -> None:
    cfg, lists, table = setup(tmp_path, "clients: {tv: ['192.168.1.50']}\n")
    stats = Stats()
    stage = Blocking(lists, cfg.blocking, stats)
    out = stage.on_query(query("a.tracker.example", "192.168.1.50", table))
    assert out is not None and out.result == "blocked"
    assert out.list == "l" and out.rule == "tracker.example" and rcode(out) == 3
    assert isinstance(out.keep, Listed)   # the memo may give it again while the lists stand
    assert stats.blocked == {("tv", "l"): 1}
    assert stage.on_query(query("ok.tracker.example", "192.168.1.50", table)) is None
    assert stage.on_query(query("other.example", "192.168.1.50", table)) is None
    assert stats.blocked == {("tv", "l"): 1}


def test_explains_the_allow_rule_that_let_a_name_through(tmp_path: Path) -> None:
    cfg, lists, table = setup(tmp_path)
    stage = Blocking(lists, cfg.blocking, Stats())
    note = stage.explain(query("x.ok.tracker.example", "10.0.0.2", table))
    assert note is not None and (note.list, note.rule) == ("a", "ok.tracker.example")
    assert stage.explain(query("elsewhere.example", "10.0.0.2", table)) is None


def test_on_answer_catches_cname_cloaking_and_passes_the_rest(tmp_path: Path) -> None:
    cfg, lists, table = setup(tmp_path)

    def cloak(rec: dnslib.DNSRecord) -> None:
        rec.add_answer(dnslib.RR(rec.q.qname, 5, ttl=60, rdata=dnslib.CNAME("x.tracker.example")))
        rec.add_answer(dnslib.RR("x.tracker.example", 1, ttl=60, rdata=dnslib.A("192.0.2.7")))

    stats = Stats()
    stage = Blocking(lists, cfg.blocking, stats)
    q = query("metrics.shop.example", "10.0.0.2", table)
    out = stage.on_answer(q, upstream_reply(q, cloak))
    assert out.result == "blocked" and out.rule == "tracker.example"
    assert out.keep is None   # depends on an answer, not only on the lists
    assert stats.blocked == {("10.0.0.2", "l"): 1}
    plain = upstream_reply(q)
    assert stage.on_answer(q, plain) is plain


def test_block_modes(tmp_path: Path) -> None:
    for mode, qtype, code, answers in [
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
        out = Blocking(lists, cfg.blocking, Stats()).on_query(
            query("tracker.example", "10.0.0.2", table, qtype))
        assert out is not None
        rec = dnslib.DNSRecord.parse(out.wire)
        assert rec.header.rcode == code, mode
        assert [str(r.rdata) for r in rec.rr] == answers, (mode, qtype)
        assert all(r.ttl == 42 for r in rec.rr + rec.auth)
        if not answers and code == 0:
            assert rec.auth and rec.auth[0].rtype == 6   # NODATA carries an SOA (RFC 2308)

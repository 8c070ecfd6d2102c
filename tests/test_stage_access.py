"""The access stage against the stage contract."""

from __future__ import annotations

from pathlib import Path

import dnslib

from resolver.stages.access import Access
from tests.stagekit import query, rcode, setup


def test_refuses_outsiders_and_passes_insiders(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    stage = Access()
    out = stage.on_query(query("x.example", "203.0.113.5", table))
    assert out is not None and out.result == "refused" and rcode(out) == 5
    assert out.keep is None   # never remembered
    assert stage.on_query(query("x.example", "192.168.1.9", table)) is None


def test_any_over_udp_gets_the_minimal_answer_and_over_tcp_passes(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    stage = Access()
    out = stage.on_query(query("example.org", "192.168.1.9", table, "ANY"))
    assert out is not None and out.result == "refused"
    rec = dnslib.DNSRecord.parse(out.wire)
    assert rec.header.rcode == 0 and rec.rr[0].rtype == dnslib.QTYPE.HINFO
    assert stage.on_query(query("example.org", "192.168.1.9", table, "ANY", "tcp")) is None


def test_is_memo_safe_and_has_no_way_out() -> None:
    assert Access().per_query is False and not hasattr(Access, "on_answer")

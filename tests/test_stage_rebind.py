"""The rebind stage against the stage contract: on_answer only, private addresses removed."""

from __future__ import annotations

from pathlib import Path

import dnslib

from resolver.config import load_config
from resolver.stages.rebind import Rebind
from resolver.stats import Stats
from tests.stagekit import query, setup, upstream_reply


def _private(rec: dnslib.DNSRecord) -> None:
    rec.add_answer(dnslib.RR(rec.q.qname, 1, ttl=60, rdata=dnslib.A("192.168.1.1")))
    rec.add_answer(dnslib.RR(rec.q.qname, 1, ttl=60, rdata=dnslib.A("192.0.2.1")))


def test_strips_private_addresses_from_public_names_only(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    cfg = load_config(None, text="upstreams: [127.0.0.1]\nforward_zones: {lan: [192.168.1.1]}\n"
                      "rebind_protection: true")
    stats = Stats()
    stage = Rebind(cfg, stats)
    assert not hasattr(stage, "on_query")   # it only looks at answers
    q = query("attacker.example", "10.0.0.2", table)
    out = stage.on_answer(q, upstream_reply(q, _private))
    rec = dnslib.DNSRecord.parse(out.answer.render(q, out.answer.stored))
    assert [str(r.rdata) for r in rec.rr] == ["192.0.2.1"] and stats.rebind_removed == 1
    q = query("nas.lan", "10.0.0.2", table)
    same = upstream_reply(q, _private)
    assert stage.on_answer(q, same) is same   # the LAN's own zone keeps its answers

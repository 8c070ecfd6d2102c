"""The forwarding terminal: routes, the callback contract, de-duplication and its bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.stages.forward import Forward
from resolver.stats import Stats
from tests.fakes import FakeUpstream
from tests.stagekit import query


def test_routes_forward_zones_by_longest_suffix(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "upstreams: ['192.0.2.1']\nforward_zones: {lan: ['192.168.1.1'], "
        "'in.lan': ['192.168.1.2:5533'], '168.192.in-addr.arpa': ['192.168.1.1']}\n")
    fwd = Forward(load_config(tmp_path / "c.yaml"), Stats())
    assert [u.label for u in fwd.route("nas.lan")] == ["192.168.1.1:53"]
    assert [u.label for u in fwd.route("tv.in.lan")] == ["192.168.1.2:5533"]
    assert [u.label for u in fwd.route("5.1.168.192.in-addr.arpa")] == ["192.168.1.1:53"]
    assert [u.label for u in fwd.route("example.com")] == ["192.0.2.1:53"]
    assert [u.label for u in fwd.route("plan")] == ["192.0.2.1:53"]
    assert fwd.zone("tv.in.lan") == "in.lan" and fwd.zone("example.com") is None


def test_one_upstream_query_calls_back_every_waiter(tmp_path: Path) -> None:
    up = FakeUpstream(delay=0.2)
    try:
        (tmp_path / "c.yaml").write_text(f"upstreams: ['{up.address}']\nserver: {{max_waiters: 2}}\n")
        cfg = load_config(tmp_path / "c.yaml")
        fwd = Forward(cfg, Stats())
        table = ClientTable(cfg, load_all(cfg), LabelBound(512))
        got: list[tuple[int, str]] = []

        async def run() -> None:
            done = asyncio.get_running_loop().create_future()

            def back(q, reply) -> None:   # type: ignore[no-untyped-def]
                got.append((q.qid, reply.result))
                if len(got) == 4:
                    done.set_result(None)

            for _ in range(4):   # the asker, two waiters, one over max_waiters
                fwd.start(query("same.example", "10.0.0.2", table), back)
            assert len(fwd.inflight) == 1
            await asyncio.wait_for(done, 5)

        asyncio.run(run())
        assert [r for _, r in got] == ["servfail", "forwarded", "forwarded", "forwarded"]
        assert len(up.queries()) == 1 and not fwd.inflight
        rec = dnslib.DNSRecord.parse(up.queries()[0].data)
        assert str(rec.q.qname) == "same.example."
    finally:
        up.close()

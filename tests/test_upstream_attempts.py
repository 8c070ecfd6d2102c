"""The upstream seam: a policy (Upstreams) over one Attempt per transport (UDP, TCP)."""

from __future__ import annotations

import asyncio

import dnslib

from resolver.config import ServerOptions
from resolver.stats import Stats
from resolver.upstream import Attempt, TcpAttempt, Upstream, Upstreams, close_idle_sockets
from resolver.wire import parse_query
from tests.fakes import FakeUpstream


def _run(coro):   # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        close_idle_sockets(loop)
        loop.close()


def test_a_truncated_udp_answer_is_followed_by_a_tcp_attempt() -> None:
    up_srv = FakeUpstream(truncate_udp=True)
    try:
        stats = Stats()
        ups = Upstreams(ServerOptions(), stats)
        up = Upstream("127.0.0.1", up_srv.port)
        q = parse_query(dnslib.DNSRecord.question("big.example").pack())
        data, who, parsed = _run(ups.query_checked(q, [up], lambda d: len(d)))
        rec = dnslib.DNSRecord.parse(data)
        assert not rec.header.tc and rec.rr and who is up and parsed == len(data)
        assert stats.upstream_requests[(up.label, "truncated")] == 1
        assert stats.upstream_requests[(up.label, "ok")] == 1
        assert [s.proto for s in up_srv.seen] == ["udp", "tcp"]
    finally:
        up_srv.close()


def test_a_failed_tcp_attempt_counts_against_the_upstream() -> None:
    async def run() -> TcpAttempt:
        done = asyncio.get_running_loop().create_future()
        q = parse_query(dnslib.DNSRecord.question("x.example").pack())
        a = TcpAttempt(Upstream("127.0.0.1", 1), q, True, None,
                       lambda: done.set_result(None), 2.0)   # nothing listens on port 1
        await asyncio.wait_for(done, 5)
        return a

    a = _run(run())
    assert isinstance(a, Attempt) and a.transport == "tcp"
    assert a.done and a.data is None and isinstance(a.error, OSError)
    stats = Stats()
    ups = Upstreams(ServerOptions(), stats)
    assert ups._outcome(a) is None
    assert stats.upstream_requests[("127.0.0.1:1", "error")] == 1 and a.up.failures == 1

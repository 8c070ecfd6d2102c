"""Upstream sockets are recycled, and recycling keeps every promise of a socket per query.

A socket whose query got its answer is drained, disconnected (which frees its
port) and kept for a later query, whose ``connect`` draws a new random port.
These tests drive ``Upstreams`` on a real event loop against a FakeUpstream
over 127.0.0.1 and check: the port is still new and random per query, nothing
that reached one query's port is read by the next, failed sockets are not
kept, the pool is bounded, a kernel that would keep the port gets a socket per
query, and shutdown closes what is kept.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import dnslib
import pytest

from resolver import upstream as upstream_mod
from resolver.config import ServerOptions
from resolver.stats import Stats
from resolver.upstream import Upstream, UpstreamFailure, Upstreams, close_idle_sockets
from resolver.wire import parse_query
from tests.conftest import ask
from tests.fakes import FakeUpstream

pytestmark = pytest.mark.skipif(upstream_mod._disconnect is None,
                                reason="socket recycling needs Linux and ctypes")


def question(name: str) -> object:
    return parse_query(dnslib.DNSRecord.question(name).pack())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    close_idle_sockets(lp)
    lp.close()


def _mux(loop: asyncio.AbstractEventLoop) -> upstream_mod._Mux:
    mux = upstream_mod._MUXES[loop]
    assert isinstance(mux, upstream_mod._Mux)
    return mux


def test_one_socket_serves_sequential_queries_each_from_a_new_random_port(loop, upstream):
    ups = Upstreams(ServerOptions(), Stats())
    up = Upstream("127.0.0.1", upstream.port)
    kept: set[int] = set()

    async def run() -> None:
        for i in range(300):
            data, _ = await ups.query(question(f"n{i}.reuse.test"), [up])
            assert dnslib.DNSRecord.parse(data).a.rdata == dnslib.A("192.0.2.1")
            free = _mux(asyncio.get_running_loop()).free[socket.AF_INET]
            assert len(free) == 1
            kept.add(id(free[0]))

    loop.run_until_complete(run())
    assert len(kept) == 1, "every query after the first reused the kept socket"
    ports = [s.addr[1] for s in upstream.queries("udp")]
    assert len(ports) == 300
    # New and random per query, as with a new socket: ~1.6 repeats expected in 300 draws
    # from the ~28k ephemeral ports; no sequence.
    assert len(set(ports)) >= 290
    assert max(ports) - min(ports) > 10_000
    assert sum(1 for a, b in zip(ports, ports[1:], strict=False) if 0 < b - a <= 2) < 10
    # Kept between queries, the socket holds no port: nothing can reach it.
    sock = _mux(loop).free[socket.AF_INET][0]
    assert sock.getsockname()[1] == 0


def test_datagrams_after_the_answer_never_reach_the_next_query(loop):
    """An upstream (or a forger who found the port) sends more after the answer:
    a duplicate, then a forged answer carrying the *next* query's question.  The
    next query on the same socket has a new port and sees none of it."""
    up_srv = FakeUpstream()
    # After the genuine reply the fake sends, from the upstream's own address and
    # port, a copy of it and a forged answer to the next question.  Whether either
    # is read at all is what is checked: a rejected forgery is counted, so the
    # counter shows any datagram a later query read.
    orig = up_srv._send_later

    def send_with_more(replies: list[bytes], addr: tuple) -> None:
        orig(replies, addr)
        for r in replies:
            q = dnslib.DNSRecord.parse(r)
            forged = dnslib.DNSRecord(dnslib.DNSHeader(id=q.header.id, qr=1, rd=1, ra=1),
                                      q=dnslib.DNSQuestion("next.reuse.test"))
            forged.add_answer(dnslib.RR("next.reuse.test", rdata=dnslib.A("6.6.6.6")))
            try:
                up_srv.udp.sendto(r, addr)                    # a duplicate
                up_srv.udp.sendto(forged.pack(), addr)
            except OSError:   # closed at the end of the test
                return

    up_srv._send_later = send_with_more   # type: ignore[method-assign]
    stats = Stats()
    ups = Upstreams(ServerOptions(), stats)
    up = Upstream("127.0.0.1", up_srv.port)
    try:
        async def run() -> None:
            for i in range(100):
                await ups.query(question(f"n{i}.reuse.test"), [up])
                await asyncio.sleep(0.002)   # let the extras arrive before the next query
            data, _ = await ups.query(question("next.reuse.test"), [up])
            assert dnslib.DNSRecord.parse(data).a.rdata == dnslib.A("192.0.2.1")

        loop.run_until_complete(run())
    finally:
        up_srv.close()
    # Read by no query: not even rejected as a forgery (that would mean a later query saw it).
    assert stats.upstream_requests.get((up.label, "spoof_rejected"), 0) == 0
    assert stats.upstream_requests[(up.label, "ok")] == 101


def test_a_socket_whose_query_failed_is_closed_not_kept(loop):
    # A port nobody listens on: the kernel reports "connection refused" on the socket.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    ups = Upstreams(ServerOptions(upstream_timeout=0.2, upstream_total_timeout=0.5), Stats())

    async def run() -> None:
        with pytest.raises(UpstreamFailure):
            await ups.query(question("dead.reuse.test"), [Upstream("127.0.0.1", dead_port)])

    loop.run_until_complete(run())
    assert not _mux(loop).free.get(socket.AF_INET)


def test_the_pool_is_bounded(loop, upstream, monkeypatch):
    monkeypatch.setattr(upstream_mod, "POOL_MAX", 8)
    ups = Upstreams(ServerOptions(), Stats())
    up = Upstream("127.0.0.1", upstream.port)

    async def run() -> None:
        answers = await asyncio.gather(*(ups.query(question(f"c{i}.reuse.test"), [up])
                                         for i in range(50)))
        assert len(answers) == 50

    loop.run_until_complete(run())
    assert len(_mux(loop).free[socket.AF_INET]) == 8
    assert len({s.addr[1] for s in upstream.queries("udp")}) >= 48


def test_a_kernel_that_keeps_the_port_gets_a_socket_per_query(loop, upstream, monkeypatch):
    """Recycling is trusted only after a disconnect was seen to free the port."""
    monkeypatch.setattr(upstream_mod, "_disconnect", lambda fd: True)   # "succeeds", frees nothing
    ups = Upstreams(ServerOptions(), Stats())
    up = Upstream("127.0.0.1", upstream.port)

    async def run() -> None:
        for i in range(20):
            await ups.query(question(f"k{i}.reuse.test"), [up])

    loop.run_until_complete(run())
    mux = _mux(loop)
    assert mux.frees_port[socket.AF_INET] is False
    assert not mux.free[socket.AF_INET]
    assert len({s.addr[1] for s in upstream.queries("udp")}) >= 19


def test_server_stop_closes_the_kept_sockets(serve, upstream):
    srv = serve()
    for i in range(5):
        ask(srv, f"s{i}.reuse.test")
    mux = upstream_mod._MUXES[srv.loop]
    kept = list(mux.free[socket.AF_INET])
    assert kept
    srv.stop()
    assert all(s.fileno() == -1 for s in kept)

"""Upstream sockets are recycled, and recycling keeps every promise of a socket per query.

A socket whose query got its answer is disconnected (which frees its port), then
drained, and kept for a later query, whose ``connect`` draws a new random port.
These tests drive ``Upstreams`` on a real event loop against a FakeUpstream
over 127.0.0.1 and check: the port is still new and random per query, nothing
that reached one query's port is read by the next, failed sockets are not
kept, the pool is bounded, a kernel that would keep the port gets a socket per
query, and shutdown closes what is kept.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dnslib
import pytest

from resolver import upstream as upstream_mod
from resolver.config import ServerOptions
from resolver.stats import Stats
from resolver.upstream import Upstream, UpstreamFailure, Upstreams, close_idle_sockets
from resolver.wire import parse_query
from tests.conftest import ask
from tests.fakes import FakeUpstream, Seen, free_port

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


class _DuplicatingUpstream(FakeUpstream):
    """Answers every query ``copies`` times (a duplicating network path, or a LAN host
    spraying the upstream's address at the port range): the answer, then the copies paced
    ~0.1 ms apart so that they keep arriving while the answered socket is recycled.

    It stops copying to a port as soon as a new query comes from it: the kernel may give
    a freed port to a new query's socket (uniformly drawn, but one such draw in a few runs
    of 1,000 queries), and 19 copies then land on a socket that never asked.  That is not
    what the test measures (a socket per query would read them too), and it made the test
    fail one run in five.  Queries read while pacing wait in ``backlog`` for their turn."""

    copies = 20

    def _udp_loop(self) -> None:
        backlog: collections.deque[tuple[bytes, tuple]] = collections.deque()
        self.cut_short = 0   # copy runs stopped because their port asked again
        while not self._stop:
            try:
                data, addr = backlog.popleft() if backlog else self.udp.recvfrom(65535)
            except OSError:
                return
            self.seen.append(Seen(data, addr, "udp", time.monotonic()))
            replies = self._reply(data, "udp")
            try:
                for _ in range(self.copies):
                    for r in replies:
                        self.udp.sendto(r, addr)
                    if self._take_in(backlog, addr, 0.0001):
                        self.cut_short += 1
                        break
            except (OSError, ValueError):   # closed under us: the test is over
                return

    def _take_in(self, backlog: collections.deque, addr: tuple, wait: float) -> bool:
        """Queue what arrives within ``wait`` seconds; True if any of it came from ``addr``."""
        asked_again = False
        readable, _, _ = select.select([self.udp], [], [], wait)
        while readable:
            try:
                data, src = self.udp.recvfrom(65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            backlog.append((data, src))
            asked_again |= src == addr
        return asked_again


def test_a_datagram_arriving_while_the_socket_is_recycled_is_never_left_queued(loop, monkeypatch):
    """Deterministic: the upstream's duplicate lands on the port at the very moment the
    socket is being recycled (just before the disconnect).  It must not stay queued on the
    kept socket (where the next query would read it, and the level-triggered epoll would
    report the socket ready on every loop iteration)."""
    up_srv = FakeUpstream()
    real = upstream_mod._disconnect
    assert real is not None
    landed: list[bytes] = []

    def disconnect_after_a_late_duplicate(fd: int) -> bool:
        with socket.socket(fileno=os.dup(fd)) as view:
            port = view.getsockname()[1]
        dup = b"\x12\x34\x81\x80" + b"\x00" * 8   # any datagram from the upstream's address
        up_srv.udp.sendto(dup, ("127.0.0.1", port))  # loopback: queued before sendto returns
        landed.append(dup)
        return real(fd)

    monkeypatch.setattr(upstream_mod, "_disconnect", disconnect_after_a_late_duplicate)
    stats = Stats()
    ups = Upstreams(ServerOptions(), stats)
    up = Upstream("127.0.0.1", up_srv.port)
    try:
        async def run() -> None:
            for i in range(20):
                await ups.query(question(f"late{i}.reuse.test"), [up])

        loop.run_until_complete(run())
    finally:
        up_srv.close()
    assert len(landed) == 20
    mux = _mux(loop)
    kept = mux.free[socket.AF_INET]
    assert len(kept) == 1
    with pytest.raises(BlockingIOError):
        kept[0].recv(4096)                     # nothing left queued on the kept socket
    assert mux.ep.poll(0) == []                # so the epoll reports nothing while idle
    assert stats.upstream_requests.get((up.label, "spoof_rejected"), 0) == 0   # no stale reads


def test_a_ready_socket_that_no_query_waits_on_is_drained_not_spun_on(loop):
    """Whatever leaves a datagram on a socket with no waiter, one wakeup empties it."""
    mux = upstream_mod._mux_for(loop)
    assert isinstance(mux, upstream_mod._Mux)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        sock = mux.open(socket.AF_INET)        # in the epoll set, no query waiting on it
        sock.connect(peer.getsockname())
        for _ in range(3):
            peer.sendto(b"stray", sock.getsockname())
        assert mux.ep.poll(0) != []
        mux._ready()
        assert mux.ep.poll(0) == [], "still reported ready: the loop would spin"
        sock.close()
    finally:
        peer.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_behind_a_duplicating_upstream_the_idle_server_sleeps_and_reads_nothing_stale(tmp_path):
    """The issue's measurement, on the real server process: 1,000 misses (64 in flight)
    behind an upstream that answers each one 20 times, then 2 s idle.  Drained before the
    disconnect, measured here: ~100 stale reads (a later query read an earlier answer's
    copy: counted as spoof_rejected) and 1.0 CPU-second per idle second.

    Stale reads are allowed up to 2: a copy still on its way may find its port drawn
    again by a new query's socket (the kernel's choice, ~1 in 28k per connect), which is
    what a socket per query would see too."""
    up_srv = _DuplicatingUpstream()
    # Free for TCP too: /metrics is TCP, and a UDP port's TCP twin may be taken (a full
    # run once gave the server a metrics port it could not bind).
    port, mport = free_port(), free_port()
    conf = tmp_path / "c.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{up_srv.address}"]\n'
                    f'metrics: {{listen: "127.0.0.1:{mport}"}}\n'
                    f'state_dir: "{tmp_path / "state"}"\n')
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(conf)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                dns.query.udp(dns.message.make_query("ready.dup.test", "A"), "127.0.0.1",
                              port=port, timeout=0.2, ignore_unexpected=True)
                break
            except (dns.exception.Timeout, ConnectionRefusedError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        # ignore_unexpected: a client socket may draw a port an upstream socket just gave
        # back, and the duplicating upstream's late copies then land on it.
        def ask_one(i: int) -> int:
            return dns.query.udp(dns.message.make_query(f"q{i}.dup.test", "A"), "127.0.0.1",
                                 port=port, timeout=3, ignore_unexpected=True).rcode()

        with ThreadPoolExecutor(64) as pool:   # concurrent, as a LAN's misses are
            assert set(pool.map(ask_one, range(1000))) == {dns.rcode.NOERROR}
        time.sleep(0.3)   # the last copies arrive
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        idle = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
        up_srv.close()
    stale = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("hushdns_upstream_requests_total")
                and 'outcome="spoof_rejected"' in line)
    print(f"stale reads {stale:.0f}, idle CPU {idle:.3f} s/s, "
          f"copy runs cut short by a redrawn port {up_srv.cut_short}")
    assert stale <= 2, f"{stale:.0f} stale datagrams read by later queries"
    assert idle < 0.15, f"idle server used {idle:.2f} CPU-seconds per second"

"""TCP abuse: one client holding idle connections, clients that never read, idle /metrics
connections.  Real sockets on loopback addresses (127.0.0.x stand for different clients)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.request

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.conftest import ask
from tests.fakes import free_port


def frame(name: str, qid: int, qtype: str = "A") -> bytes:
    q = dns.message.make_query(name, qtype)
    q.id = qid
    w = q.to_wire()
    return struct.pack("!H", len(w)) + w


def tcp_ask(srv, name: str, source: str, timeout: float = 2.0) -> bool:
    try:
        r = dns.query.tcp(dns.message.make_query(name, "A"), srv.host, port=srv.port,
                          timeout=timeout, source=source)
        return r.rcode() == dns.rcode.NOERROR
    except (OSError, EOFError, dns.exception.DNSException):
        return False


def idle(srv, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect((srv.host, srv.port))
    return s


def test_per_client_cap_and_idle_hog_is_evicted_for_others(serve) -> None:
    srv = serve("server: {tcp_max_connections: 8, tcp_max_per_client: 6}\n")
    hog = [idle(srv, "127.0.0.9") for _ in range(6)]
    time.sleep(0.2)
    # The hog's 7th costs it its own longest-idle one: it never holds more than its share.
    extra = idle(srv, "127.0.0.9")
    hog[0].settimeout(2)
    assert hog[0].recv(1) == b""
    time.sleep(0.1)
    assert len(srv.server.tcp_connections.by_client["127.0.0.9"]) == 6
    # Two other clients fill the table; the next newcomer takes one of the hog's idle slots.
    assert tcp_ask(srv, "a.test", "127.0.0.2") and tcp_ask(srv, "b.test", "127.0.0.3")
    keep = [idle(srv, "127.0.0.2"), idle(srv, "127.0.0.3")]
    time.sleep(0.2)
    assert len(srv.server.tcp_connections) == 8
    assert tcp_ask(srv, "c.test", "127.0.0.4")
    evicted = srv.stats.limited.get(("127.0.0.9", "tcp_evicted"), 0)
    assert evicted >= 1
    for s in hog + keep + [extra]:
        s.close()


def test_a_client_reopening_idle_connections_cannot_starve_others(serve) -> None:
    srv = serve("server: {tcp_max_connections: 16}\n")
    stop = threading.Event()

    def reopen() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(idle(srv, "127.0.0.9"))
            held = held[-64:]
            time.sleep(0.002)
        for s in held:
            s.close()

    t = threading.Thread(target=reopen, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        ok = sum(tcp_ask(srv, f"n{i}.fair.test", f"127.0.0.{2 + i % 5}") for i in range(40))
    finally:
        stop.set()
        t.join(5)
    assert ok >= 38, ok


def test_non_reading_pipelines_do_not_starve_udp(serve) -> None:
    srv = serve("")
    assert ask(srv, "cached.test").rcode() == dns.rcode.NOERROR
    pipes = []
    blob = b"".join(frame("cached.test", i % 65536) for i in range(2000))
    for i in range(100):
        s = idle(srv, f"127.0.1.{i + 1}")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.send(blob)
        pipes.append(s)
    lost = 0
    for i in range(200):
        try:
            r = dns.query.udp(dns.message.make_query(f"u{i}.udp.test", "A"), srv.host,
                              port=srv.port, timeout=1.0)
            assert r.rcode() == dns.rcode.NOERROR
        except dns.exception.Timeout:
            lost += 1
    assert lost <= 2, lost   # the unfixed server lost 3 or more here; a loaded CI box may lose 1
    buffered = [c.transport.get_write_buffer_size() for c in srv.server.tcp_connections]
    assert max(buffered, default=0) <= 64 * 1024
    for s in pipes:
        s.close()


def test_metrics_scrape_unaffected_by_idle_dns_and_metrics_connections(serve) -> None:
    mport = free_port()
    srv = serve(f'metrics: {{listen: "127.0.0.1:{mport}"}}\n')
    dns_idle = [idle(srv, "127.0.0.1") for _ in range(64)]
    http_idle = [socket.create_connection(("127.0.0.1", mport)) for _ in range(64)]
    http_idle += [socket.create_connection(("127.0.0.1", mport),
                                           source_address=("127.0.0.5", 0)) for _ in range(64)]
    time.sleep(0.3)
    for _ in range(3):
        t0 = time.monotonic()
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read()
        assert b"hushdns_queries_total" in body
        assert time.monotonic() - t0 < 2.0
    for s in dns_idle + http_idle:
        s.close()

"""Bad input over the wire: odd query types and hostile TCP clients, each while others are served."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dnslib
import pytest

from tests.conftest import ask
from tests.fakes import FakeUpstream, default_answer

# --- query types (RFC 8482, RFC 6895) ------------------------------------------------------


def raw_query(name: str, qtype: int, qclass: int = 1, opcode: int = 0, qid: int = 0x1234) -> bytes:
    q = dns.message.make_query(name, dns.rdatatype.A, use_edns=0)
    wire = bytearray(q.to_wire())
    wire[0:2] = qid.to_bytes(2, "big")
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    qend = 12 + len(dns.name.from_text(name).to_wire())
    wire[qend:qend + 4] = struct.pack("!HH", qtype, qclass)
    return bytes(wire)


def udp_exchange(srv, wire: bytes, timeout: float = 2.0) -> dns.message.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (srv.host, srv.port))
        return dns.message.from_wire(s.recv(65535))


def test_any_over_udp_is_answered_minimally_and_forwarded_over_tcp(serve, upstream):
    srv = serve()
    r = ask(srv, "any.test", "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert [(rr.rdtype, len(rr)) for rr in r.answer] == [(dns.rdatatype.HINFO, 1)]
    assert r.answer[0][0].cpu == b"RFC8482"
    assert not upstream.queries()
    # Over TCP the source address is proven: the question goes upstream.
    r = ask(srv, "any.test", "ANY", tcp=True)
    assert r.rcode() == dns.rcode.NOERROR
    assert [s.record.q.qtype for s in upstream.queries()] == [dnslib.QTYPE.ANY]


@pytest.mark.parametrize("qtype,rcode", [
    (dns.rdatatype.AXFR, dns.rcode.REFUSED),
    (dns.rdatatype.IXFR, dns.rcode.REFUSED),
    (dns.rdatatype.MAILA, dns.rcode.NOTIMP),
    (dns.rdatatype.MAILB, dns.rcode.NOTIMP),
    (dns.rdatatype.TSIG, dns.rcode.FORMERR),
    (dns.rdatatype.TKEY, dns.rcode.FORMERR),
    (128, dns.rcode.FORMERR),
    (dns.rdatatype.OPT, dns.rcode.FORMERR),
    (0, dns.rcode.FORMERR),
])
def test_zone_transfers_refused_meta_types_formerr_or_notimp(serve, upstream, qtype, rcode):
    srv = serve()
    wire = raw_query("zone.test", qtype)
    r = udp_exchange(srv, wire)
    assert (r.id, r.rcode()) == (0x1234, rcode)
    with socket.create_connection((srv.host, srv.port), timeout=2) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        r = dns.query.receive_tcp(s, expiration=time.time() + 2)[0]
        assert r.rcode() == rcode
    assert not upstream.queries()


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY,
                                    dns.opcode.UPDATE, 15])
def test_other_opcodes_get_notimp(serve, upstream, opcode):
    srv = serve()
    r = udp_exchange(srv, raw_query("op.test", 1, opcode=opcode))
    assert r.rcode() == dns.rcode.NOTIMP
    assert not upstream.queries()


def test_other_classes_are_refused(serve, upstream):
    srv = serve()
    for cls in (dns.rdataclass.CH, dns.rdataclass.HS, dns.rdataclass.ANY):
        r = udp_exchange(srv, raw_query("version.bind", dns.rdatatype.TXT, qclass=cls))
        assert r.rcode() == dns.rcode.REFUSED
    assert not upstream.queries()


# --- TCP ------------------------------------------------------------------------------------


def frame(name: str, qid: int, qtype: str = "A") -> bytes:
    q = dns.message.make_query(name, qtype)
    q.id = qid
    w = q.to_wire()
    return struct.pack("!H", len(w)) + w


def read_frame(s: socket.socket) -> dns.message.Message:
    hdr = recv_exactly(s, 2)
    return dns.message.from_wire(recv_exactly(s, struct.unpack("!H", hdr)[0]))


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed by the server")
        buf += chunk
    return buf


def closed_by_server(s: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``s`` (reading and discarding), or None."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < within:
        try:
            if not s.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
    return None


def still_served(srv) -> None:
    """A well-behaved client, over UDP and TCP, gets its answer right now."""
    t0 = time.monotonic()
    assert ask(srv, "other-client.test", timeout=2).rcode() == dns.rcode.NOERROR
    assert ask(srv, "other-client.test", tcp=True, timeout=2).rcode() == dns.rcode.NOERROR
    assert time.monotonic() - t0 < 1.0


@pytest.fixture
def conn(serve) -> Iterator:
    socks: list[socket.socket] = []

    def _open(srv) -> socket.socket:
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        socks.append(s)
        return s

    yield _open
    for s in socks:
        s.close()


def test_query_split_byte_by_byte(serve, conn):
    srv = serve()
    s = conn(srv)
    for b in frame("split.test", 7):
        s.send(bytes([b]))
        time.sleep(0.005)
    r = read_frame(s)
    assert (r.id, r.rcode()) == (7, dns.rcode.NOERROR)
    still_served(srv)


def test_several_queries_in_one_segment_all_answered(serve, conn):
    srv = serve()
    s = conn(srv)
    s.sendall(b"".join(frame(f"q{i}.seg.test", 100 + i) for i in range(8)))
    ids = {read_frame(s).id for _ in range(8)}
    assert ids == set(range(100, 108))
    # A frame split across segments right after a complete one.
    two = frame("a.seg.test", 1) + frame("b.seg.test", 2)
    s.sendall(two[:len(two) - 5])
    time.sleep(0.05)
    s.sendall(two[len(two) - 5:])
    assert {read_frame(s).id, read_frame(s).id} == {1, 2}


@pytest.mark.parametrize("junk", [b"\x00\x03abc", b"\x00\x00", b"\x00\x0bhello world"])
def test_garbage_length_prefix_closes_only_that_connection(serve, conn, junk):
    srv = serve()
    bystander = conn(srv)
    bystander.sendall(frame("bystander.test", 1))
    assert read_frame(bystander).id == 1
    s = conn(srv)
    s.sendall(junk)
    assert closed_by_server(s, 3.0) is not None
    still_served(srv)
    bystander.sendall(frame("bystander.test", 2))     # the open connection is untouched
    assert read_frame(bystander).id == 2


def test_garbage_message_in_a_good_frame_does_not_end_the_stream(serve, conn):
    srv = serve()
    s = conn(srv)
    junk = bytes(range(40))                      # ID 0x0001, QDCOUNT 0x0405...: FORMERR
    s.sendall(struct.pack("!H", len(junk)) + junk + frame("after.test", 9))
    replies = {read_frame(s).id: None for _ in range(2)}
    assert 9 in replies


def big_txt(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    if q.q.qtype == dnslib.QTYPE.TXT and str(q.q.qname).startswith("big"):
        r = q.reply()
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.TXT, ttl=3600,
                               rdata=dnslib.TXT(["x" * 250] * 24)))
        return r
    return default_answer(q)


def test_client_that_never_reads_is_closed_and_others_still_served(serve, conn):
    up = FakeUpstream(answer=big_txt)
    try:
        srv = serve("server: {tcp_idle_timeout: 1.5}\n", up=up)
        assert len(ask(srv, "big.test", "TXT", tcp=True).to_wire()) > 6000   # now cached
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((srv.host, srv.port))
        s.settimeout(0.5)
        q = frame("big.test", 5, "TXT")          # ~6 KB answer per 30-byte question
        sent = 0
        try:
            while sent < 200_000:                # until the kernel buffers are full
                s.sendall(q * 50)
                sent += 50
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        answered = sum(n for (_, qtype, _), n in srv.stats.queries.items() if qtype == "TXT")
        # Megabytes of questions are queued in the kernel; hushdns answered only what
        # fits its write buffer and then stopped reading.
        assert sent > 10 * answered
        assert answered < 2_000
        buffered = [c.transport.get_write_buffer_size() for c in list(srv.server.tcp_connections)]
        assert max(buffered, default=0) < 1_000_000
        still_served(srv)
        # Closed by the server (seen from its side: reading here would unblock it).
        t0 = time.monotonic()
        while srv.server.tcp_connections and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        assert not srv.server.tcp_connections
        assert 1.0 < time.monotonic() - t0 < 4.0
        with pytest.raises(OSError):
            s.settimeout(0.5)
            for _ in range(100):                 # the first sends may still be buffered
                s.sendall(q)
                time.sleep(0.01)
        s.close()
        still_served(srv)
    finally:
        up.close()


def test_slowloris_one_byte_a_second_is_closed_after_the_idle_timeout(serve, conn):
    srv = serve("server: {tcp_idle_timeout: 2}\n")
    s = conn(srv)
    data = frame("slow.test", 3)
    stop = threading.Event()

    def dribble() -> None:
        for b in data:
            if stop.wait(1.0):
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    t0 = time.monotonic()
    time.sleep(1.5)
    still_served(srv)
    took = closed_by_server(s, 6.0)
    stop.set()
    assert took is not None
    assert 1.5 <= time.monotonic() - t0 <= 5.0    # idle timeout counts from the frame's start
    still_served(srv)


def test_pipelining_is_capped_per_connection(serve, conn):
    up = FakeUpstream(delay=0.8)
    try:
        srv = serve("server: {tcp_max_pipelined: 4}\n", up=up)
        s = conn(srv)
        s.sendall(b"".join(frame(f"p{i}.pipe.test", i) for i in range(12)))
        time.sleep(0.4)
        assert len(up.queries()) == 4          # the other 8 wait in the buffer
        ids = {read_frame(s).id for _ in range(12)}
        assert ids == set(range(12))
        assert len(up.queries()) == 12
    finally:
        up.close()


def test_connection_limit_turns_away_extra_clients_and_recovers(serve, conn):
    srv = serve("server: {tcp_max_connections: 3}\n")
    held = []
    for i in range(3):
        s = conn(srv)
        s.sendall(frame("held.test", i))
        assert read_frame(s).id == i
        held.append(s)
    extra = conn(srv)
    assert closed_by_server(extra, 2.0) is not None
    assert srv.stats.limited[("127.0.0.1", "tcp_connections")] >= 1
    assert ask(srv, "udp-still.test").rcode() == dns.rcode.NOERROR
    held.pop().close()
    time.sleep(0.2)
    s = conn(srv)
    s.sendall(frame("after.test", 42))
    assert read_frame(s).id == 42


def test_idle_connection_closed_after_tcp_idle_timeout(serve, conn):
    srv = serve("server: {tcp_idle_timeout: 1}\n")
    s = conn(srv)
    s.sendall(frame("idle.test", 1))
    assert read_frame(s).id == 1
    took = closed_by_server(s, 4.0)
    assert took is not None and 0.8 <= took <= 2.5

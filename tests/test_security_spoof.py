"""Spoofing and cache poisoning (RFC 5452, DNSpooq, TuDoor), tried against the real server.

Every test drives hushdns over real sockets with dnspython and a FakeUpstream
that races the genuine answer with forged ones.
"""

from __future__ import annotations

import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dnslib

from tests.conftest import ask
from tests.fakes import FakeUpstream, Seen, default_answer

POISON = "6.6.6.6"


def addresses(msg: dns.message.Message) -> set[str]:
    return {rd.address for rrset in msg.answer for rd in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)}


def forged(data: bytes, *, qid_delta: int = 0, qname: str | None = None, qtype: int | None = None,
           qclass: int | None = None) -> bytes:
    """A well-formed answer to the query in ``data`` pointing at POISON, with one thing changed."""
    q = dnslib.DNSRecord.parse(data)
    name = qname or str(q.q.qname)
    r = dnslib.DNSRecord(dnslib.DNSHeader(id=(q.header.id + qid_delta) & 0xFFFF, qr=1, rd=1, ra=1),
                         q=dnslib.DNSQuestion(name, qtype or q.q.qtype, qclass or q.q.qclass))
    r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=86400, rdata=dnslib.A(POISON)))
    return r.pack()


def question_end(d: bytes) -> int:
    pos = 12
    while d[pos]:
        pos += d[pos] + 1
    return pos + 1 + 4


def spoofed(upstream: FakeUpstream, srv) -> int:
    return srv.stats.upstream_requests.get((upstream.address, "spoof_rejected"), 0)


# --- IDs and ports ------------------------------------------------------------------


def test_1000_upstream_queries_spread_ids_and_ports_never_the_clients_id(serve, upstream):
    srv = serve()
    client_id = 4242
    ids, ports, same = [], [], 0
    for i in range(1000):
        q = dns.message.make_query(f"n{i}.spread.test", "A")
        q.id = client_id
        r = dns.query.udp(q, srv.host, port=srv.port, timeout=5)
        assert r.id == client_id and r.rcode() == dns.rcode.NOERROR
    seen = upstream.queries("udp")
    assert len(seen) == 1000
    for s in seen:
        qid = struct.unpack("!H", s.data[:2])[0]
        ids.append(qid)
        ports.append(s.addr[1])
        same += qid == client_id
    # 1000 draws from 65536 IDs: ~7.6 collisions expected; 25 would be absurd.
    assert len(set(ids)) >= 975
    # Each of the 16 bits is set about half the time (a counter or a weak PRNG is not).
    for bit in range(16):
        share = sum(1 for x in ids if x >> bit & 1) / len(ids)
        assert 0.40 < share < 0.60, f"ID bit {bit} set in {share:.0%} of queries"
    # The client's ID is never copied upstream (3 chance matches: p < 1e-6).
    assert same <= 2
    # A fresh, random source port per query: spread over the ephemeral range, no sequence.
    assert len(set(ports)) >= 950
    assert max(ports) - min(ports) > 10_000
    steps = sum(1 for a, b in zip(ports, ports[1:], strict=False) if 0 < b - a <= 2)
    assert steps < 20


# --- forged replies are ignored and counted --------------------------------------------


def test_wrong_id_question_class_and_garbage_are_ignored_and_counted(serve):
    bad = [
        lambda d: forged(d, qid_delta=1),                       # wrong ID
        lambda d: forged(d, qname="other.test."),               # wrong name
        lambda d: forged(d, qtype=dnslib.QTYPE.AAAA),           # wrong type
        lambda d: forged(d, qclass=3),                          # wrong class (CH)
        lambda d: d[:2] + b"\x81\x80\x00\x00\x00\x00\x00\x00\x00\x00",       # QDCOUNT 0
        lambda d: forged(d)[:4] + b"\x00\x02" + forged(d)[6:],  # QDCOUNT 2
        lambda d: forged(d)[:2] + b"\x01\x00" + forged(d)[4:],  # QR clear: not a response
        b"\x00",                                                 # runt
        b"garbage" * 20,                                         # noise
    ]
    up = FakeUpstream(before=bad, delay=0.05)
    try:
        srv = serve(up=up)
        r = ask(srv, "victim.test")
        assert addresses(r) == {"192.0.2.1"}
        assert spoofed(up, srv) == len(bad)
        # What was cached is the genuine answer.
        r2 = ask(srv, "victim.test")
        assert addresses(r2) == {"192.0.2.1"}
        assert len(up.queries()) == 1
    finally:
        up.close()


def test_malformed_datagram_first_does_not_stop_the_genuine_answer(serve):
    """TuDoor (CVE-2023-29483): right ID and question, broken body, then the real answer."""

    def broken_body(d: bytes) -> bytes:
        good = forged(d)
        # Claim two answers but carry one, and cut its rdata short.
        return good[:6] + b"\x00\x02" + good[8:-2]

    def bad_pointer(d: bytes) -> bytes:
        good = forged(d)
        qend = question_end(d)
        # Answer owner: a compression pointer that points at itself (a loop).
        return good[:qend] + struct.pack("!H", 0xC000 | qend) + good[qend + 2:]

    up = FakeUpstream(before=[broken_body, bad_pointer], delay=0.05)
    try:
        srv = serve(up=up)
        r = ask(srv, "tudoor.test")
        assert r.rcode() == dns.rcode.NOERROR
        assert addresses(r) == {"192.0.2.1"}
        assert spoofed(up, srv) == 2
    finally:
        up.close()


def test_replies_from_the_wrong_address_or_port_never_win(serve):
    """Each upstream query has its own connected socket: the kernel discards datagrams from
    any other address or port before hushdns sees them (so they cannot be counted, only lost).
    Here forged answers with the right ID and question race the genuine one and lose."""
    other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_port.bind(("127.0.0.1", 0))
    other_host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = []

    def race(seen: Seen) -> None:
        wire = forged(seen.data)
        for sock in (other_port, other_host):
            for _ in range(3):
                sock.sendto(wire, seen.addr)
                sent.append(1)

    up = FakeUpstream(delay=0.2)
    # Same port number as the real upstream, on another loopback address.
    other_host.bind(("127.0.0.2", up.port))
    up.on_query = race
    try:
        srv = serve(up=up)
        for name in ("race1.test", "race2.test"):
            r = ask(srv, name)
            assert addresses(r) == {"192.0.2.1"}
        assert len(sent) == 12
        assert spoofed(up, srv) == 0   # dropped by the kernel, not seen
    finally:
        up.close()
        other_port.close()
        other_host.close()


# --- one upstream query per question in flight ---------------------------------------


def test_identical_questions_in_flight_make_one_upstream_query(serve):
    """Birthday attack defence (CVE-2020-25686): N clients, one question, one upstream query."""
    up = FakeUpstream(delay=0.6)
    try:
        srv = serve(up=up)
        names = [("bIrThDaY.TeSt" if i % 2 else "birthday.test") for i in range(60)]
        with ThreadPoolExecutor(60) as pool:
            replies = list(pool.map(lambda n: ask(srv, n), names))
        assert all(addresses(r) == {"192.0.2.1"} for r in replies)
        # Each client got its own ID and its own spelling of the name back.
        for r, n in zip(replies, names, strict=True):
            assert r.question[0].name.to_text() == n + "."
        assert len(up.queries()) == 1
    finally:
        up.close()


def test_waiters_on_one_question_are_capped(serve):
    up = FakeUpstream(delay=0.7)    # under upstream_timeout: no retransmission
    try:
        srv = serve("server: {max_waiters: 5}\n", up=up)
        start = threading.Barrier(20)

        def one(_: int) -> dns.message.Message:
            start.wait()
            return ask(srv, "popular.test")

        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(one, range(20)))
        rcodes = sorted(r.rcode() for r in replies)
        assert rcodes.count(dns.rcode.NOERROR) == 6          # the asker and 5 waiters
        assert rcodes.count(dns.rcode.SERVFAIL) == 14
        assert srv.stats.limited[("127.0.0.1", "waiters")] == 14
        assert len(up.queries()) == 1
        # The limit answer is not cached for everyone: the next asker gets the real answer.
        assert addresses(ask(srv, "popular.test")) == {"192.0.2.1"}
    finally:
        up.close()


# --- cache poisoning via extra records -----------------------------------------------------


def with_poison(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    r = default_answer(q)
    if str(q.q.qname).lower().startswith("cname-"):
        # A record for a name outside the question and its CNAME chain, in the answer section.
        r.add_answer(dnslib.RR("bank.test.", dnslib.QTYPE.A, ttl=86400, rdata=dnslib.A(POISON)))
        r.add_answer(dnslib.RR("shop.test.", dnslib.QTYPE.A, ttl=86400, rdata=dnslib.A(POISON)))
    return r


def test_out_of_chain_records_are_stripped_before_caching(serve):
    up = FakeUpstream(answer=with_poison)
    try:
        srv = serve(up=up)
        for _ in range(2):   # forwarded, then from the cache
            r = ask(srv, "cname-cdn--test.shop.test")
            owners = {rrset.name.to_text() for rrset in r.answer}
            assert owners == {"cname-cdn--test.shop.test.", "cdn.test."}
            assert addresses(r) == {"192.0.2.9"}                 # the in-chain target survives
            assert POISON not in addresses(r)
        assert len(up.queries()) == 1
        # The forged record was not cached under its own name either.
        assert addresses(ask(srv, "bank.test")) == {"192.0.2.1"}
        assert len(up.queries()) == 2
    finally:
        up.close()

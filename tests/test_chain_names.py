"""Which answer records are on the chain: DNAME and its RRSIGs, names compared on the wire.

Why: a record in the answer section that is neither the question's name nor on its
CNAME/DNAME chain is removed before caching (it would be cache poison downstream).
A DNAME (RFC 6672) and its signature are part of that chain: without them a validating
stub sees an unsigned synthesized CNAME (bogus), and a YXDOMAIN answer says nothing.
Names are compared as wire names with ASCII-only case folding (RFC 4343), never as
text, where ``a\\032b`` and ``a b`` or ``À`` and ``à`` may or may not come out equal.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dnslib
import pytest

from resolver import wire
from resolver.wire import parse_answer, parse_query
from tests.conftest import ask, kdig_missing
from tests.fakes import FakeUpstream, free_port

SIG = "{covered} 13 2 300 20300101000000 20200101000000 12345 dname.example. AAAA"


def _rr(name: str, rtype: str, *rdatas: str, ttl: int = 300) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", rtype, *rdatas)


def dname_upstream(q: dnslib.DNSRecord) -> bytes:
    """An authoritative-style answer through ``dname.example. DNAME target.example.``,
    signed (RRSIGs on every RRset, as a signed zone gives a DO=1 query)."""
    query = dns.message.from_wire(bytes(q.pack()))
    r = dns.message.make_response(query)
    qname = query.question[0].name
    r.answer.append(_rr("dname.example.", "DNAME", "target.example."))
    r.answer.append(_rr("dname.example.", "RRSIG", SIG.format(covered="DNAME")))
    if len(qname.to_wire()) + len("target") - len("dname") > 255:
        r.set_rcode(dns.rcode.YXDOMAIN)   # the substitution would exceed 255 octets
        return r.to_wire()
    target = qname.relativize(dns.name.from_text("dname.example.")).concatenate(
        dns.name.from_text("target.example."))
    r.answer.append(dns.rrset.from_text(qname, 300, "IN", "CNAME", target.to_text()))
    r.answer.append(_rr(target.to_text(), "A", "192.0.2.77"))
    r.answer.append(_rr(target.to_text(), "RRSIG", SIG.format(covered="A")))
    return r.to_wire()


def _types(msg: dns.message.Message) -> list[tuple[str, str]]:
    return [(rr.name.to_text().lower(), dns.rdatatype.to_text(rr.rdtype)) for rr in msg.answer]


@pytest.fixture
def dname_up() -> FakeUpstream:
    up = FakeUpstream(answer=dname_upstream)
    yield up
    up.close()


def test_dnssec_clients_get_the_dname_its_rrsig_the_cname_and_the_address(serve, dname_up):
    srv = serve(up=dname_up)
    for _ in range(2):   # forwarded, then from the cache
        r = ask(srv, "www.dname.example", edns=True, dnssec=True)
        assert r.rcode() == dns.rcode.NOERROR
        assert _types(r) == [("dname.example.", "DNAME"), ("dname.example.", "RRSIG"),
                             ("www.dname.example.", "CNAME"), ("www.target.example.", "A"),
                             ("www.target.example.", "RRSIG")]
    assert len(dname_up.queries()) == 1


def test_plain_clients_get_the_dname_too(serve, dname_up):
    """As nsd and unbound answer: the DNAME precedes the synthesized CNAME for every client
    (minimal responses only shorten the authority and additional sections)."""
    r = ask(serve(up=dname_up), "www.dname.example")
    assert ("dname.example.", "DNAME") in _types(r)
    assert ("www.dname.example.", "CNAME") in _types(r)
    assert r.find_rrset(r.answer, dns.name.from_text("www.target.example."),
                        dns.rdataclass.IN, dns.rdatatype.A)[0].address == "192.0.2.77"


def test_yxdomain_keeps_its_dname(serve, dname_up):
    long = ".".join(["l" * 60] * 3 + ["l" * 56]) + ".dname.example"   # 255 octets: one more
    assert len(dns.name.from_text(long).to_wire()) == 255          # after the substitution
    r = ask(serve(up=dname_up), long, edns=True, dnssec=True)
    assert r.rcode() == dns.rcode.YXDOMAIN
    assert _types(r) == [("dname.example.", "DNAME"), ("dname.example.", "RRSIG")]


def test_a_dname_off_the_chain_and_its_rrsig_are_still_removed(serve):
    """A DNAME that maps no chain name to a chain name is not part of this answer."""
    def answer(q: dnslib.DNSRecord) -> bytes:
        r = dns.message.make_response(dns.message.from_wire(bytes(q.pack())))
        r.answer.append(_rr("evil.example.", "DNAME", "attacker.test."))
        r.answer.append(_rr("evil.example.", "RRSIG", SIG.format(covered="DNAME")))
        r.answer.append(_rr("example.", "DNAME", "attacker.test."))   # an ancestor, unused
        r.answer.append(_rr("www.example.", "A", "192.0.2.5"))
        return r.to_wire()

    up = FakeUpstream(answer=answer)
    try:
        r = ask(serve(up=up), "www.example", edns=True, dnssec=True)
    finally:
        up.close()
    assert _types(r) == [("www.example.", "A")]


def _query(labels: list[bytes]) -> bytes:
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def _answer(query: bytes, records: list[tuple[list[bytes], bytes]]) -> bytes:
    """``query`` answered with A records at the given owners (uncompressed)."""
    body = b""
    for labels, addr in records:
        owner = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
        body += owner + struct.pack("!HHIH", 1, 1, 300, 4) + addr
    return query[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, len(records), 0, 0) + query[12:] + body


def test_a_label_spelled_like_an_escape_neither_recurses_nor_matches(monkeypatch):
    """Owner ``a b`` (a space) beside question ``a\\032b`` (a backslash and digits): two
    different names, which two text spellings took for one, so that the rebuild kept the
    record and the walk threw it out again, ~1000 levels deep, until SERVFAIL."""
    q = _query([b"a\\032b", b"example"])
    req = parse_query(q)
    data = _answer(q, [([b"a b", b"example"], bytes([203, 0, 113, 9])),
                       ([b"a\\032b", b"example"], bytes([192, 0, 2, 9]))])
    calls = []
    real = wire.parse_answer
    monkeypatch.setattr(wire, "parse_answer", lambda *a, **k: calls.append(1) or real(*a, **k))
    ans = parse_answer(data, req, 0, 86400, 3600)
    assert ans.an == 1 and ans.body.endswith(bytes([192, 0, 2, 9]))
    assert len(calls) <= 1   # at most one more walk after the rebuild


def test_names_fold_ascii_case_only():
    """``WWW.Example`` is the question's name; ``\\xc0`` and ``\\xe0`` (latin-1 À and à)
    are different octets, which DNS does not fold (RFC 4343)."""
    q = _query([b"\xe0b", b"example"])
    req = parse_query(q)
    data = _answer(q, [([b"\xc0B", b"EXAMPLE"], bytes([203, 0, 113, 9])),
                       ([b"\xe0B", b"EXAMPLE"], bytes([192, 0, 2, 9]))])
    ans = parse_answer(data, req, 0, 86400, 3600)
    assert ans.an == 1 and ans.body.endswith(bytes([192, 0, 2, 9]))


def test_a_cname_listed_after_its_target_keeps_the_chain_without_recursing():
    """Chain order is the upstream's business: a CNAME after the record it leads to."""
    q = dnslib.DNSRecord.question("www.order.example")
    r = q.reply()
    r.add_answer(dnslib.RR("cdn.order.example", rdata=dnslib.A("192.0.2.8")))
    r.add_answer(dnslib.RR("www.order.example", dnslib.QTYPE.CNAME,
                           rdata=dnslib.CNAME("cdn.order.example")))
    r.add_answer(dnslib.RR("stray.example", rdata=dnslib.A("203.0.113.1")))
    ans = parse_answer(r.pack(), parse_query(q.pack()), 0, 86400, 3600)
    assert ans.an == 2 and ans.cnames == ("cdn.order.example",)


# --- against nsd: a real DNAME zone --------------------------------------------------------

NSD_ZONE = """$ORIGIN example.
$TTL 300
@ IN SOA ns.example. admin.example. 1 3600 600 86400 300
@ IN NS ns.example.
ns IN A 127.0.0.1
dname IN DNAME target.example.
www.target IN A 192.0.2.55
"""


@pytest.mark.skipif(shutil.which("nsd") is None, reason="nsd not installed (Debian package nsd)")
def test_through_nsd_a_dname_answer_arrives_whole(tmp_path, serve):
    (tmp_path / "example.zone").write_text(NSD_ZONE)
    port = free_port()
    conf = tmp_path / "nsd.conf"
    conf.write_text(
        f"server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n"
        f'  chroot: ""\n  zonesdir: "{tmp_path}"\n  database: ""\n'
        f'  pidfile: "{tmp_path}/nsd.pid"\n  xfrdfile: "{tmp_path}/xfrd.state"\n'
        f'  zonelistfile: "{tmp_path}/zone.list"\n  server-count: 1\n  verbosity: 0\n'
        "  rrl-ratelimit: 0\nremote-control:\n  control-enable: no\n"
        "zone:\n  name: example.\n  zonefile: example.zone\n")
    nsd = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        q = dns.message.make_query("www.dname.example", "A")
        for _ in range(100):
            try:
                direct = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2)
                break
            except OSError:
                time.sleep(0.05)
            except dns.exception.Timeout:
                pass
        else:
            pytest.fail("nsd did not answer")
        srv = serve(f'upstreams: ["127.0.0.1:{port}"]\n')
        r = ask(srv, "www.dname.example", edns=True, dnssec=True)
        assert _types(r) == _types(direct) == [
            ("dname.example.", "DNAME"), ("www.dname.example.", "CNAME"),
            ("www.target.example.", "A")]
    finally:
        nsd.terminate()
        nsd.wait(10)


def test_through_the_server_the_crafted_owner_is_dropped_and_the_upstream_stays_up(serve):
    """The issue's case end to end: it used to stall the loop, answer SERVFAIL and count
    against the upstream's health."""
    def answer(q: dnslib.DNSRecord) -> bytes:
        raw = bytes(q.pack())
        qend = 12 + wire.check_name(raw, 12, len(raw)) - 12 + 4
        return _answer(raw[:qend], [([b"a b", b"example"], bytes([203, 0, 113, 9])),
                                    ([b"a\\032b", b"example"], bytes([192, 0, 2, 9]))])

    up = FakeUpstream(answer=answer)
    try:
        srv = serve(up=up)
        for i in range(4):
            r = ask(srv, "a\\\\032b.example", "A")
            assert r.rcode() == dns.rcode.NOERROR, i
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.9"]
        assert srv.stats.upstream_state[up.address] == 1
    finally:
        up.close()


@kdig_missing
def test_kdig_dnssec_sees_the_signed_dname_before_the_cname(serve, dname_up):
    """What a validating stub asks (DO=1): the DNAME and its RRSIG come first."""
    srv = serve(up=dname_up)
    out = subprocess.run(["kdig", f"@{srv.host}", "-p", str(srv.port), "+dnssec", "+noall",
                          "+answer", "www.dname.example", "A"],
                         capture_output=True, text=True, timeout=10).stdout
    rows = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    assert [(r[0].lower(), r[3]) for r in rows] == [
        ("dname.example.", "DNAME"), ("dname.example.", "RRSIG"),
        ("www.dname.example.", "CNAME"), ("www.target.example.", "A"),
        ("www.target.example.", "RRSIG")], out

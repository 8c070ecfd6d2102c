"""RFC edge cases of the cache and the forwarder, each against a fake upstream that does
exactly the thing, through the real server, asked with dnspython.

TTL with the top bit set (RFC 2181 s8), negative answers without an SOA (RFC 2308 s5),
additional-section TTLs, an upstream that REFUSES, the SOA of a block answer, and the AD
bit of an answer rebind protection changed.
"""

from __future__ import annotations

import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dnslib

from tests.conftest import ask
from tests.fakes import FakeUpstream


def _a(q: dnslib.DNSRecord, ttl: int, addr: str = "192.0.2.1") -> dnslib.DNSRecord:
    r = q.reply()
    r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=ttl, rdata=dnslib.A(addr)))
    return r


def test_a_ttl_with_the_top_bit_set_is_zero_not_max_ttl(serve):
    up = FakeUpstream(answer=lambda q: _a(q, 0x80000005))
    try:
        srv = serve(up=up)
        r = ask(srv, "topbit.example")
        assert r.answer[0].ttl == 0           # was served (and cached) as max_ttl, 86400
        ask(srv, "topbit.example")
        assert len(up.queries()) == 2          # TTL 0: not cached
    finally:
        up.close()


def test_a_negative_answer_without_soa_is_not_cached(serve):
    def answer(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        r.header.rcode = dnslib.RCODE.NXDOMAIN   # no SOA in the authority section
        return r

    up = FakeUpstream(answer=answer)
    try:
        srv = serve(up=up)
        for _ in range(3):
            assert ask(srv, "nosoa.example").rcode() == dns.rcode.NXDOMAIN
        assert len(up.queries()) == 3          # was cached for 30 s
    finally:
        up.close()


def test_additional_section_ttls_count_down_and_end_the_entry(serve):
    """An entry lives as long as its shortest record: the additional section's glue runs out
    first here, and was then served with TTL 0 for the rest of the answer's 300 s."""
    def answer(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.MX, ttl=300,
                               rdata=dnslib.MX("mail.extra.example")))
        r.add_ar(dnslib.RR("mail.extra.example", dnslib.QTYPE.A, ttl=2,
                           rdata=dnslib.A("192.0.2.25")))
        return r

    up = FakeUpstream(answer=answer)
    try:
        srv = serve("server: {minimal_responses: false}\n", up=up)
        first = ask(srv, "extra.example", "MX")
        assert first.additional[0].ttl == 2
        time.sleep(2.3)
        again = ask(srv, "extra.example", "MX")
        assert again.additional and again.additional[0].ttl > 0, again
        assert again.answer[0].ttl <= 300
        assert len(up.queries()) == 2          # the entry ended with its glue
    finally:
        up.close()


def _ede(r: dns.message.Message) -> list[int]:
    return [o.code for o in r.options if o.otype == dns.edns.EDE]


def test_an_upstream_that_refuses_is_not_asked_again_and_the_next_one_answers(serve):
    def refuse(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        r.header.rcode = dnslib.RCODE.REFUSED
        return r

    no = FakeUpstream(answer=refuse)
    yes = FakeUpstream()
    try:
        srv = serve(f'upstreams: ["{no.address}", "{yes.address}"]\n', up=no)
        r = ask(srv, "refused.example")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.1"
        assert len(no.queries()) == 1 and len(yes.queries()) == 1
    finally:
        no.close()
        yes.close()


def test_refused_by_every_upstream_is_servfail_with_the_reason(serve):
    def refuse(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        r.header.rcode = dnslib.RCODE.REFUSED
        return r

    up = FakeUpstream(answer=refuse)
    try:
        srv = serve(up=up)
        r = ask(srv, "refused.example", edns=True)
        assert r.rcode() == dns.rcode.SERVFAIL   # was REFUSED, passed on after 3 sends
        assert _ede(r) == [22]                   # No Reachable Authority
        assert len(up.queries()) == 1
    finally:
        up.close()


def test_the_soa_of_a_block_answer_is_owned_by_the_blocked_names_parent(serve):
    srv = serve(lists={"l": "tracker.example\nsingle\n"})
    for name, parent in (("tracker.example", "example."), ("a.b.tracker.example",
                                                            "b.tracker.example."),
                         ("single", ".")):
        for tcp in (False, True):          # the fast path (UDP) and the chain (TCP)
            for qtype in ("A", "TXT"):
                r = ask(srv, name, qtype, tcp=tcp)
                assert r.rcode() == dns.rcode.NXDOMAIN
                soa = r.authority[0]
                assert soa.rdtype == dns.rdatatype.SOA
                assert soa.name.to_text() == parent, (name, tcp, soa.name)


def test_rebind_stripping_clears_ad(serve):
    def answer(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        r.header.ad = 1
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.168.1.7")))
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.0.2.7")))
        return r

    up = FakeUpstream(answer=answer)
    try:
        srv = serve("rebind_protection: true\n", up=up)
        for _ in range(2):   # forwarded, then cached
            r = ask(srv, "signed.example", edns=True, dnssec=True)
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.7"]
            assert not r.flags & dns.flags.AD   # the upstream's AD=1 was for the other answer
    finally:
        up.close()


def _norec(srv, name: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0)
    q.flags &= ~dns.flags.RD
    f = dns.query.tcp if tcp else dns.query.udp
    return f(q, srv.host, port=srv.port, timeout=5)


def test_rd0_queries_are_refused_so_nobody_snoops_the_cache(serve, upstream):
    srv = serve(lists={"l": "tracker.example\n"})
    assert ask(srv, "visited.example").rcode() == dns.rcode.NOERROR   # someone resolved it
    for tcp in (False, True):
        for name in ("visited.example", "never.example", "tracker.example"):
            r = _norec(srv, name, tcp)
            assert r.rcode() == dns.rcode.REFUSED, (name, tcp)
            assert not r.answer
    assert len(upstream.queries()) == 1     # RD=0 was recursed before


def test_allow_snoop_clients_get_rd0_answers_from_the_cache_only(serve, upstream):
    srv = serve('access: {allow: ["10.0.0.0/8"], allow_snoop: ["127.0.0.1/32"]}\n')
    assert srv.config.access_allow_snoop
    assert ask(srv, "visited.example").rcode() == dns.rcode.NOERROR
    for tcp in (False, True):
        hit = _norec(srv, "visited.example", tcp)
        assert hit.rcode() == dns.rcode.NOERROR and hit.answer[0][0].address == "192.0.2.1"
        miss = _norec(srv, "never.example", tcp)
        assert miss.rcode() == dns.rcode.SERVFAIL and _ede(miss) == [0]
    assert len(upstream.queries()) == 1     # nothing forwarded for RD=0

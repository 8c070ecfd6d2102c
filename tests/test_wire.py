"""Wire format: query validation, replies, and walking upstream answers."""

from __future__ import annotations

import struct

import dnslib
import pytest

from resolver import wire
from resolver.wire import Drop, Reject, parse_answer, parse_query


def q(name: str = "Example.COM", qtype: str | int = "A", edns: bool = False, do: bool = False,
      qid: int = 0x1234) -> bytes:
    qt = qtype if isinstance(qtype, int) else getattr(dnslib.QTYPE, qtype)
    rec = dnslib.DNSRecord(q=dnslib.DNSQuestion(name, qt))
    rec.header.id = qid
    if edns:
        rec.add_ar(dnslib.EDNS0(udp_len=4096, flags="do" if do else ""))
    return rec.pack()


def test_parse_reads_question_lowercases_name_and_keeps_raw_bytes() -> None:
    data = q("WwW.Example.COM")
    r = parse_query(data)
    assert r.qname == "www.example.com" and r.qtype == 1 and r.qclass == 1 and r.qid == 0x1234
    assert not r.edns and r.max_udp(1232) == 512
    assert r.key == parse_query(q("www.example.com")).key   # case-insensitive cache key
    assert r.key != parse_query(q("www.example.com", edns=True, do=True)).key  # DO in the key


def test_parse_reads_edns() -> None:
    r = parse_query(q(edns=True, do=True))
    assert r.edns and r.do and r.udp_size == 4096 and r.max_udp(1232) == 1232


@pytest.mark.parametrize("data", [b"", b"\x00" * 11])
def test_short_datagrams_are_dropped(data: bytes) -> None:
    with pytest.raises(Drop):
        parse_query(data)


def test_responses_are_dropped() -> None:
    d = bytearray(q())
    d[2] |= 0x80
    with pytest.raises(Drop):
        parse_query(bytes(d))


def _rcode(exc: pytest.ExceptionInfo[Reject]) -> int:
    reply = dnslib.DNSRecord.parse(exc.value.reply)
    return reply.header.rcode | ((reply.ar[0].ttl >> 24) << 4 if reply.ar else 0)


def test_opcode_other_than_query_is_notimp() -> None:
    d = bytearray(q())
    d[2] |= 0x10  # opcode 2 (STATUS)
    with pytest.raises(Reject) as e:
        parse_query(bytes(d))
    assert e.value.rcode == wire.NOTIMP and _rcode(e) == wire.NOTIMP


def test_qdcount_not_one_and_malformed_question_are_formerr() -> None:
    d = bytearray(q())
    d[5] = 2
    with pytest.raises(Reject) as e:
        parse_query(bytes(d))
    assert e.value.rcode == wire.FORMERR
    with pytest.raises(Reject) as e:
        parse_query(q()[:-3])
    assert e.value.rcode == wire.FORMERR
    bad_label = q()[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
    with pytest.raises(Reject):
        parse_query(bad_label)


def test_two_opt_records_are_formerr() -> None:
    rec = dnslib.DNSRecord.question("example.com")
    rec.add_ar(dnslib.EDNS0())
    rec.add_ar(dnslib.EDNS0())
    with pytest.raises(Reject) as e:
        parse_query(rec.pack())
    assert e.value.rcode == wire.FORMERR


def test_edns_version_above_zero_is_badvers() -> None:
    rec = dnslib.DNSRecord.question("example.com")
    rec.add_ar(dnslib.EDNS0(version=1))
    with pytest.raises(Reject) as e:
        parse_query(rec.pack())
    assert _rcode(e) == wire.BADVERS


@pytest.mark.parametrize("qtype, rcode", [("AXFR", wire.REFUSED), ("IXFR", wire.REFUSED),
                                          (253, wire.NOTIMP), ("TSIG", wire.FORMERR),
                                          ("OPT", wire.FORMERR)])
def test_meta_and_transfer_types(qtype: str | int, rcode: int) -> None:
    with pytest.raises(Reject) as e:
        parse_query(q(qtype=qtype))
    assert e.value.rcode == rcode


def test_non_in_class_is_refused() -> None:
    rec = dnslib.DNSRecord.question("version.bind", "TXT", "CH")
    with pytest.raises(Reject) as e:
        parse_query(rec.pack())
    assert e.value.rcode == wire.REFUSED


def test_build_reply_echoes_id_question_case_and_rd() -> None:
    data = q("MiXeD.Example.com")
    r = parse_query(data)
    out = wire.build_reply(r, wire.NXDOMAIN)
    assert out[:2] == data[:2] and out[12:r.qend] == data[12:r.qend]
    flags = struct.unpack("!H", out[2:4])[0]
    assert flags & 0x8000 and flags & 0x0100 and flags & 0x0080 and flags & 0xF == wire.NXDOMAIN


def _upstream_answer(req_data: bytes, build) -> bytes:
    rec = dnslib.DNSRecord.parse(req_data)
    reply = rec.reply()
    build(reply)
    return reply.pack()


def test_parse_answer_clamps_ttls_and_renders_for_another_client() -> None:
    data = q("www.example.com", edns=True)
    req = parse_query(data)
    up = _upstream_answer(data, lambda r: (
        r.add_answer(dnslib.RR("www.example.com", 5, ttl=10, rdata=dnslib.CNAME("cdn.example.net"))),
        r.add_answer(dnslib.RR("cdn.example.net", 1, ttl=999999, rdata=dnslib.A("192.0.2.1"))),
        r.add_ar(dnslib.EDNS0())))
    ans = parse_answer(up, req, min_ttl=60, max_ttl=3600, negative_ttl=300)
    assert ans.cnames == ("cdn.example.net",) and ans.an == 2 and ans.ar == 0
    assert ans.ttl == 60   # min TTL clamps 10 up to 60; 999999 down to 3600
    other = parse_query(q("WWW.EXAMPLE.COM", qid=0xBEEF))
    out = dnslib.DNSRecord.parse(ans.render(other, now=ans.stored + 30))
    assert out.header.id == 0xBEEF and str(out.q.qname) == "WWW.EXAMPLE.COM."
    assert [rr.ttl for rr in out.rr] == [30, 3570]   # counted down by 30 s
    assert not out.ar   # no OPT: that client sent none


def test_negative_answer_ttl_comes_from_soa() -> None:
    data = q("nx.example.com")
    req = parse_query(data)
    up = _upstream_answer(data, lambda r: (
        setattr(r.header, "rcode", 3),
        r.add_auth(dnslib.RR("example.com", 6, ttl=900,
                             rdata=dnslib.SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 120))))))
    ans = parse_answer(up, req, 0, 86400, 3600)
    assert ans.negative and ans.ttl == 120 and ans.rcode == wire.NXDOMAIN
    capped = parse_answer(up, req, 0, 86400, 60)
    assert capped.ttl == 60


def test_out_of_chain_records_are_stripped() -> None:
    data = q("www.example.com")
    req = parse_query(data)
    up = _upstream_answer(data, lambda r: (
        r.add_answer(dnslib.RR("www.example.com", 1, ttl=60, rdata=dnslib.A("192.0.2.1"))),
        r.add_answer(dnslib.RR("bank.example.org", 1, ttl=60, rdata=dnslib.A("203.0.113.66")))))
    ans = parse_answer(up, req, 0, 86400, 3600)
    out = dnslib.DNSRecord.parse(ans.render(req, ans.stored))
    assert [str(rr.rname) for rr in out.rr] == ["www.example.com."]


def test_rebuilt_answers_replay_the_same_bytes_every_time() -> None:
    """The rebuild path hands parse_answer a bytearray; the cached body must not grow
    with every EDNS reply rendered from it (it once did: an OPT appended in place)."""
    data = bytes(dnslib.DNSRecord.question("www.example.com").pack())
    q_edns = dnslib.DNSRecord.question("www.example.com")
    q_edns.add_ar(dnslib.EDNS0(udp_len=1232))
    req, req_edns = parse_query(data), parse_query(bytes(q_edns.pack()))
    up = _upstream_answer(data, lambda r: (
        r.add_answer(dnslib.RR("www.example.com", 1, ttl=60, rdata=dnslib.A("192.0.2.1"))),
        r.add_answer(dnslib.RR("bank.example.org", 1, ttl=60, rdata=dnslib.A("203.0.113.66")))))
    for given in (up, bytearray(up)):
        ans = parse_answer(given, req, 0, 86400, 3600)
        assert type(ans.body) is bytes
        first = [ans.render(req_edns, ans.stored), ans.render(req, ans.stored)]
        again = [ans.render(req_edns, ans.stored), ans.render(req, ans.stored)]
        assert first == again
        assert len(dnslib.DNSRecord.parse(first[1]).ar) == 0


def _with_referral(name: str, build) -> tuple[bytes, object]:
    """An upstream answer as nsd sends it: the records ``build`` adds, then the zone's
    NS in authority, its address as glue and an OPT in additional."""
    data = q(name, edns=True)

    def full(r: dnslib.DNSRecord) -> None:
        build(r)
        r.add_auth(dnslib.RR("example.com", dnslib.QTYPE.NS, ttl=30,
                             rdata=dnslib.NS("ns.example.com")))
        r.add_ar(dnslib.RR("ns.example.com", 1, ttl=30, rdata=dnslib.A("192.0.2.53")))
        r.add_ar(dnslib.EDNS0())

    return _upstream_answer(data, full), parse_query(data)


def test_minimal_positive_answer_ends_with_its_answer_section() -> None:
    up, req = _with_referral("www.example.com", lambda r: r.add_answer(
        dnslib.RR("www.example.com", 1, ttl=300, rdata=dnslib.A("192.0.2.1"))))
    full = parse_answer(up, req, 0, 86400, 3600)
    minimal = parse_answer(up, req, 0, 86400, 3600, minimal=True)
    assert (full.an, full.ns, full.ar) == (1, 1, 1) and full.ttl == 30
    assert (minimal.an, minimal.ns, minimal.ar) == (1, 0, 0)
    assert minimal.ttl == 300   # the NS's 30 s no longer shortens the answer's life
    out = dnslib.DNSRecord.parse(minimal.render(req, minimal.stored))
    assert [str(r.rdata) for r in out.rr] == ["192.0.2.1"] and not out.auth
    assert [r.rtype for r in out.ar] == [dnslib.QTYPE.OPT]   # the client's own EDNS
    # What is not kept is not read either: a broken authority section does not matter.
    broken = up[:-40]
    with pytest.raises(wire.WireError):
        parse_answer(broken, req, 0, 86400, 3600)
    assert parse_answer(broken, req, 0, 86400, 3600, minimal=True).an == 1


def test_minimal_keeps_what_negative_and_partial_answers_need() -> None:
    # NXDOMAIN and NODATA: the SOA in authority is how clients cache them (RFC 2308).
    for rcode in (wire.NXDOMAIN, wire.NOERROR):
        data = q("nx.example.com")
        up = _upstream_answer(data, lambda r, rc=rcode: (
            setattr(r.header, "rcode", rc),
            r.add_auth(dnslib.RR("example.com", 6, ttl=900, rdata=dnslib.SOA(
                "ns.example.com", "h.example.com", (1, 2, 3, 4, 120))))))
        ans = parse_answer(up, parse_query(data), 0, 86400, 3600, minimal=True)
        assert ans.negative and ans.ns == 1 and ans.ttl == 120
    # A CNAME whose target has no record of the asked type: nothing is left out.
    up, req = _with_referral("www.example.com", lambda r: r.add_answer(
        dnslib.RR("www.example.com", 5, ttl=300, rdata=dnslib.CNAME("cdn.example.net"))))
    ans = parse_answer(up, req, 0, 86400, 3600, minimal=True)
    assert (ans.an, ans.ns, ans.ar) == (1, 1, 1)
    # A CNAME chain that does reach the asked type ends with the answer section.
    up, req = _with_referral("www.example.com", lambda r: (
        r.add_answer(dnslib.RR("www.example.com", 5, ttl=300, rdata=dnslib.CNAME("cdn.example.net"))),
        r.add_answer(dnslib.RR("cdn.example.net", 1, ttl=300, rdata=dnslib.A("192.0.2.1")))))
    ans = parse_answer(up, req, 0, 86400, 3600, minimal=True)
    assert (ans.an, ans.ns, ans.ar) == (2, 0, 0) and ans.cnames == ("cdn.example.net",)


def test_minimal_still_strips_out_of_chain_records() -> None:
    up, req = _with_referral("www.example.com", lambda r: (
        r.add_answer(dnslib.RR("www.example.com", 1, ttl=60, rdata=dnslib.A("192.0.2.1"))),
        r.add_answer(dnslib.RR("bank.example.org", 1, ttl=60, rdata=dnslib.A("203.0.113.66")))))
    ans = parse_answer(up, req, 0, 86400, 3600, minimal=True)
    out = dnslib.DNSRecord.parse(ans.render(req, ans.stored))
    assert [str(rr.rname) for rr in out.rr] == ["www.example.com."]
    assert (ans.ns, ans.ar) == (0, 0)


def test_a_skipped_record_leaves_nothing_of_itself_in_the_body() -> None:
    """An OPT in the answer section, with an owner that needs a full walk: it and what
    follows are left out, and so is its owner name (the body once kept those bytes)."""
    data = q("www.example.com")
    req = parse_query(data)
    a = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    opt = b"\x01x\xc0\x0c" + struct.pack("!HHIH", 41, 1232, 0, 0)
    up = _upstream_answer(data, lambda r: None)[:6] + struct.pack("!HHH", 2, 0, 0) \
        + data[12:] + a + opt
    ans = parse_answer(up, req, 0, 86400, 3600)
    assert ans.an == 1 and ans.body == a


def test_truncated_answers_are_errors() -> None:
    data = q("www.example.com")
    req = parse_query(data)
    up = _upstream_answer(data, lambda r: r.add_answer(
        dnslib.RR("www.example.com", 1, ttl=60, rdata=dnslib.A("192.0.2.1"))))
    with pytest.raises(wire.WireError):
        parse_answer(up[:-2], req, 0, 86400, 3600)


def test_compression_loops_are_rejected() -> None:
    loop = b"\x00" * 12 + b"\xc0\x0c"
    with pytest.raises(wire.WireError):
        wire.read_name(loop, 12)


def test_answer_rebuild_copies_records_it_does_not_understand() -> None:
    """The out-of-chain rebuild is done on the wire, record by record (it once went
    through dnslib, whose pack() raised on an NSEC without a type bitmap): such a record
    on the chain is kept as it came, the stray one removed."""
    data = q("www.example.com")
    req = parse_query(data)
    hdr = bytearray(data[:12])
    hdr[2] |= 0x80
    hdr[6:12] = struct.pack("!HHH", 2, 0, 0)
    nsec = b"\xc0\x0c" + struct.pack("!HHIH", 47, 1, 60, 3) + b"\x01b\x00"   # no bitmap
    stray = b"\x04evil\x00" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, 6])
    ans = parse_answer(bytes(hdr) + data[12:] + nsec + stray, req, 0, 86400, 3600)
    assert ans.an == 1 and ans.body == nsec


def test_a_pointer_whose_target_reads_past_the_pointer_is_refused() -> None:
    """Found by the fuzz test: the SOA owner points into the question's first label (offset
    13, read as a 48-octet label), a name that only "ends" by reading through later records.
    Cached, the additional section is cut and the same pointer spells a name that runs off
    the end of the reply; such a reply is refused as malformed."""
    query = (b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                  b"\x010\x010\x010\x0200\x00\x00\x01\x00\x01")
    answer = (b"\x00\x00\x85\x80\x00\x01\x00\x00\x00\x01\x00\x01"
                   b"\x010\x010\x010\x0200\x00\x00\x01\x00\x01"
                   b"\xc0\r\x00\x06\x00\x01\x00\x00\x00<\x00!\x02ns\x04test\x00\x01h\xc0)"
                   b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x05"
                   b"\x00\x00)\x04\xd0\x00\x00\x00\x00\x00\x00")
    req = parse_query(query)
    with pytest.raises(wire.WireError, match="pointer target"):
        parse_answer(answer, req, 0, 86400, 3600)


def test_pointers_to_earlier_whole_names_still_pass() -> None:
    """The usual compression (owner -> question name, rdata -> an earlier rdata name)."""
    q = dnslib.DNSRecord.question("a.example.com", "A")
    r = q.reply()
    r.add_answer(dnslib.RR("a.example.com", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("b.example.com"), ttl=60))
    r.add_answer(dnslib.RR("b.example.com", dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=60))
    ans = parse_answer(r.pack(), parse_query(q.pack()), 0, 86400, 3600)
    assert ans.ttl == 60

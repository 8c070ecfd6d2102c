"""The UDP fast path answers exactly what the chain would, and counts exactly what it would.

The property test feeds the same random datagram to ``FastPath.answer`` and to the
chain (``Server.handle``) and requires, whenever the fast path takes a query,
byte-identical replies and identical counter changes; when it declines, it must
have sent and counted nothing.  The other tests show that it really takes the
common queries (over real sockets, with dnspython) and that the rate limit,
groups and the query log still apply.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import dns.rcode
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import fastpath
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.server import Server
from resolver.wire import SERVFAIL, Request, parse_answer, parse_query
from tests.conftest import ask

NOW = 50_000.0
LISTED = ["tracker.example", "ads.vendor.test", "t.kids.example"]
ALLOWED = "ok.tracker.example"
CACHED = ["www.example.org", "cdn.example.net", "cloaked.example.com", "big.example.org",
          "old.example.org", "fail.example.org", "neg.example.org", "x1-9.example"]
CLIENTS = [("127.0.0.1", 5000), ("10.1.2.3", 5001), ("192.168.9.9", 5002),
           ("203.0.113.7", 5003)]   # the last one is outside access.allow
MODES = ["nxdomain", "refused", "null", "nodata", '["0.0.0.0", "::"]']


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    def sendto(self, wire: bytes | None, addr: object = None) -> None:
        self.sent.append(wire)


def _server(tmp_path: Path, mode: str, extra: str = "") -> Server:
    (tmp_path / "l.txt").write_text("tracker.example\nads.vendor.test\n")
    (tmp_path / "k.txt").write_text("t.kids.example\n/^regex[0-9]+\\.example$/\n")
    (tmp_path / "a.txt").write_text(f"{ALLOWED}\n")
    (tmp_path / "c.yaml").write_text(
        "listen: ['127.0.0.1:0']\nupstreams: ['127.0.0.1:1']\n"
        "clients: {kid: [10.1.2.0/24]}\n"
        f"blocking:\n  mode: {mode}\n"
        "  lists: {l: {source: l.txt, track_domains: true}, k: k.txt}\n  allow: {a: a.txt}\n"
        "groups:\n  default: {lists: [l]}\n  kids: {clients: [kid], lists: [l, k]}\n"
        + extra)
    cfg = load_config(tmp_path / "c.yaml")
    server = Server(cfg)
    server.lists = load_all(cfg)
    server._install(cfg, server.lists)
    for host, _ in CLIENTS:
        server.clients.lookup(host)   # the edge learns a client on its first query
    return server


def _fill_cache(server: Server) -> None:
    """Cached answers of every flavour: plain, CNAME into a list, too big, expired, SERVFAIL, negative."""
    for name in CACHED:
        for qtype in ("A", "AAAA", "MX"):
            for do, cd in ((False, False), (True, False), (False, True), (True, True)):
                q = dnslib.DNSRecord.question(name, qtype)
                if do:
                    q.add_ar(dnslib.EDNS0(udp_len=1232, flags="do"))
                q.header.cd = int(cd)
                req = parse_query(q.pack())
                rep = q.reply()
                rep.ar = []
                if name.startswith("cloaked"):
                    rep.add_answer(dnslib.RR(name, dnslib.QTYPE.CNAME, ttl=300,
                                             rdata=dnslib.CNAME("x.ads.vendor.test")))
                elif name.startswith("big"):
                    for k in range(40):
                        rep.add_answer(dnslib.RR(name, dnslib.QTYPE.TXT, ttl=300,
                                                 rdata=dnslib.TXT("y" * 30 + str(k))))
                elif name.startswith("fail"):
                    rep.header.rcode = SERVFAIL
                elif name.startswith("neg"):
                    rep.header.rcode = 3
                    rep.add_auth(dnslib.RR("example.org", dnslib.QTYPE.SOA, ttl=60, rdata=dnslib.SOA(
                        "ns.example.org", "h.example.org", (1, 2, 3, 4, 60))))
                elif qtype == "A":
                    rep.add_answer(dnslib.RR(name, 1, ttl=300, rdata=dnslib.A("192.0.2.1")))
                else:   # NODATA, with the SOA that makes it cacheable (RFC 2308 s5)
                    rep.add_auth(dnslib.RR("example.org", dnslib.QTYPE.SOA, ttl=300, rdata=dnslib.SOA(
                        "ns.example.org", "h.example.org", (1, 2, 3, 4, 300))))
                rep.header.ad = int(do)
                answer = parse_answer(rep.pack(), req, 0, 86400, 3600)
                answer.stored = NOW - (400 if name.startswith("old") else 7)
                if answer.rcode == SERVFAIL:
                    answer.ttl = 5
                    answer.stored = NOW - 1
                server.cache.entries[req.key] = answer   # type: ignore[union-attr]


def _freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clock for the chain and the fast path, so TTLs count down alike."""
    monkeypatch.setattr(time, "monotonic", lambda: NOW)
    monkeypatch.setattr(fastpath, "monotonic", lambda: NOW)


def _same_request(server: Server, req: Request, data: bytes, client: tuple[str, int]) -> None:
    """A miss handed to the chain: the Request parse_query would build, and truly unlisted."""
    want = parse_query(data)
    for slot in Request.__slots__:
        if slot != "unlisted":
            assert getattr(req, slot, None) == getattr(want, slot, None), slot
    assert req.key not in server.cache.entries   # type: ignore[union-attr]
    info = server.clients.lookup(client[0])   # type: ignore[union-attr]
    if req.unlisted:
        blocking = server.fast.__self__.blocking   # type: ignore[union-attr]
        assert blocking.index.match(req.qname, info.block, info.allow) is None


def _snapshot(server: Server) -> tuple:
    s = server.stats
    return (dict(s.queries), dict(s.blocked), dict(s.blocked_domains), s.cache_hits,
            s.cache_misses, {k: h.n for k, h in s.request_duration.items()}, dict(s.limited))


def _delta(before: tuple, after: tuple) -> list:
    out = []
    for b, a in zip(before, after, strict=True):
        if isinstance(a, dict):
            out.append({k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)})
        else:
            out.append(a - b)
    return out


def _name_bytes(draw: st.DrawFn) -> list[bytes]:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        name = draw(st.sampled_from(LISTED + [ALLOWED, "sub." + LISTED[0], "regex42.example"]))
    elif kind in (1, 2, 3):
        name = draw(st.sampled_from(CACHED))
    elif kind == 4:
        name = draw(st.sampled_from(["unlisted.example", "example", "a.b.c.d.e.f.example"]))
    else:
        labels = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=0, max_size=4))
        return labels
    labels = [lab.encode() for lab in name.split(".")]
    if draw(st.booleans()):   # 0x20 casing, as some stubs send
        labels = [bytes(c ^ 0x20 if 97 <= c <= 122 and draw(st.booleans()) else c
                        for c in lab) for lab in labels]
    return labels


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    qid = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):   # what stubs send: the shape the fast path is for
        name = draw(st.sampled_from(LISTED + CACHED + ["sub." + LISTED[0], ALLOWED]))
        qtype = getattr(dnslib.QTYPE, draw(st.sampled_from(["A", "AAAA", "MX"])))
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=qid, rd=1), q=dnslib.DNSQuestion(name, qtype))
        q.header.cd = int(draw(st.booleans()))
        if draw(st.booleans()):
            q.add_ar(dnslib.EDNS0(udp_len=draw(st.sampled_from([512, 1232, 4096])),
                                  flags="do" if draw(st.booleans()) else ""))
        return bytes(q.pack())
    flags = draw(st.sampled_from([0x0100] * 8 + [0x0000, 0x0110, 0x0120, 0x0130, 0x0900, 0x8100]))
    labels = _name_bytes(draw)
    qname = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
    qtype = draw(st.sampled_from([1] * 8 + [28] * 4 + [15, 15, 16, 65, 255, 0, 41, 252, 130, 300]))
    qclass = draw(st.sampled_from([1] * 12 + [3, 255]))
    question = qname + struct.pack("!HH", qtype, qclass)
    tail = b""
    ar = 0
    an = 0
    shape = draw(st.integers(0, 9))
    if shape >= 4:   # EDNS
        ar = 1
        version = 1 if shape == 9 else 0
        do = draw(st.booleans())
        size = draw(st.sampled_from([0, 512, 1232, 4096, 65535]))
        options = draw(st.sampled_from([b"", b"\x00\x0a\x00\x08" + b"c" * 8]))
        tail = b"\x00" + struct.pack("!HHBBHH", 41, size, 0, version, 0x8000 if do else 0,
                                     len(options)) + options
    elif shape == 1:
        tail = b"\x00"            # trailing garbage
    elif shape == 2:
        an = 1                    # a record where a query has none
        tail = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    data = struct.pack("!HHHHHH", qid, flags, 1, an, 0, ar) + question + tail
    if draw(st.integers(0, 39)) == 0:
        data = data[: draw(st.integers(0, len(data)))]   # cut short
    return data


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_answers_and_counts_exactly_as_the_chain(tmp_path, monkeypatch, mode):
    server = _server(tmp_path, mode)
    _fill_cache(server)
    assert server.fast is not None
    _freeze(monkeypatch)
    taken = {"fast": 0, "chain": 0}

    @settings(max_examples=400, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=datagrams(), who=st.sampled_from(CLIENTS),
           again=st.tuples(st.integers(0, len(CLIENTS) - 1), st.integers(0, 0xFFFF)))
    def check(data: bytes, who: tuple[str, int], again: tuple[int, int]) -> None:
        # The same question twice (the second time a remembered reply can answer
        # it), the second time perhaps from another client and with another ID.
        for n, client in enumerate((who, CLIENTS[again[0]])):
            if n:
                data = again[1].to_bytes(2, "big") + data[2:]
            before = _snapshot(server)
            wire = server.fast(data, client)  # type: ignore[misc]
            fast_delta = _delta(before, _snapshot(server))
            if wire is None or isinstance(wire, Request):
                taken["chain"] += 1
                assert fast_delta == _delta(before, before)
                if wire is not None:
                    _same_request(server, wire, data, client)
                continue
            taken["fast"] += 1
            sink = Sink()
            mid = _snapshot(server)
            server.handle(data, client, "udp", sink)
            assert [wire] == sink.sent
            assert fast_delta == _delta(mid, _snapshot(server))

    check()
    # Both paths were really exercised.
    assert taken["fast"] > 50 and taken["chain"] > 50, taken


def test_common_queries_take_the_fast_path(tmp_path, monkeypatch):
    server = _server(tmp_path, "nxdomain")
    _fill_cache(server)
    _freeze(monkeypatch)
    out: list[bytes] = []

    def send(data: bytes, addr: tuple[str, int]) -> bool:
        wire = server.fast(data, addr)  # type: ignore[misc]
        if isinstance(wire, bytes):
            out.append(wire)
        return isinstance(wire, bytes)

    listed = bytes(dnslib.DNSRecord.question("sub.tracker.example").pack())
    cached = bytes(dnslib.DNSRecord.question("WWW.example.org").pack())
    q = dnslib.DNSRecord.question("www.example.org", "AAAA")
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    assert send(listed, CLIENTS[0])
    assert send(cached, CLIENTS[0])
    assert send(bytes(q.pack()), CLIENTS[1])
    blocked, hit, nodata = (dnslib.DNSRecord.parse(w) for w in out)
    assert blocked.header.rcode == 3 and blocked.auth[0].rtype == dnslib.QTYPE.SOA
    assert str(hit.q.qname) == "WWW.example.org." and str(hit.rr[0].rdata) == "192.0.2.1"
    assert hit.rr[0].ttl == 293   # stored 7 s ago with 300
    assert nodata.header.rcode == 0 and not nodata.rr and nodata.ar[0].rtype == 41
    # Not taken: an unknown client (its first query teaches the edge), a refused one,
    # a CNAME into a list, a miss.
    assert not send(listed, ("10.9.9.9", 1))
    assert not send(listed, CLIENTS[3])
    assert not send(bytes(dnslib.DNSRecord.question("cloaked.example.com").pack()), CLIENTS[0])
    miss = server.fast(bytes(dnslib.DNSRecord.question("new.example.org").pack()), CLIENTS[0])
    assert isinstance(miss, Request) and miss.unlisted and miss.qname == "new.example.org"
    s = server.stats
    assert s.queries[("127.0.0.1", "A", "blocked")] == 1
    assert s.queries[("127.0.0.1", "A", "cached")] == 1
    assert s.queries[("kid", "AAAA", "cached")] == 1
    assert s.blocked == {("127.0.0.1", "l"): 1}
    assert s.blocked_domains == {("l", "tracker.example"): 1}
    assert s.cache_hits == 2 + 0


def test_groups_apply_on_the_fast_path(tmp_path):
    server = _server(tmp_path, "nxdomain")
    q = bytes(dnslib.DNSRecord.question("t.kids.example").pack())
    wire = server.fast(q, ("10.1.2.3", 1))   # the kids group
    assert wire is not None and dnslib.DNSRecord.parse(wire).header.rcode == 3
    miss = server.fast(q, ("127.0.0.1", 1))   # default group: not listed, so forwarded
    assert isinstance(miss, Request) and miss.unlisted
    assert server.stats.blocked == {("kid", "k"): 1}


def test_rate_limit_still_applies_to_fast_answers(tmp_path):
    server = _server(tmp_path, "nxdomain", "rate_limit: {qps: 1, burst: 3, action: refused}\n")
    sink = Sink()
    q = bytes(dnslib.DNSRecord.question("tracker.example").pack())
    answered = 0
    for _ in range(5):
        wire = server.fast(q, CLIENTS[0])
        if wire is not None:
            sink.sendto(wire)
            answered += 1
        else:
            server.handle(q, CLIENTS[0], "udp", sink)
    assert answered == 3
    rcodes = [dnslib.DNSRecord.parse(w).header.rcode for w in sink.sent]
    assert rcodes == [3, 3, 3, 5, 5]
    assert server.stats.limited == {("127.0.0.1", "ratelimit"): 2}


def test_query_log_turns_the_fast_path_off(tmp_path):
    server = _server(tmp_path, "nxdomain", "log: {queries: true}\n")
    assert server.fast is None


def test_real_clients_over_udp_get_fast_answers(serve, upstream):
    """dnspython over real sockets: blocked and cached answers, counted once each."""
    srv = serve(lists={"l": "tracker.example\n"})
    real = srv.server.fast
    calls = {"fast": 0}

    def counting(data, addr):   # type: ignore[no-untyped-def]
        wire = real(data, addr)
        calls["fast"] += isinstance(wire, bytes)
        return wire

    srv.server.fast = counting
    for _ in range(3):
        assert ask(srv, "tracker.example").rcode() == dns.rcode.NXDOMAIN
        r = ask(srv, "www.example.org", "A", edns=True)
        assert r.rcode() == dns.rcode.NOERROR and r.answer
    # The first query of a new client and the first (forwarded) question go
    # through the chain; the repeats are fast.
    assert calls["fast"] == 4
    q = srv.stats.queries
    assert q[("127.0.0.1", "A", "blocked")] == 3
    assert q[("127.0.0.1", "A", "cached")] == 2
    assert q[("127.0.0.1", "A", "forwarded")] == 1
    assert len(upstream.seen) == 1


def test_remembered_replies_follow_the_clock_and_the_cache(tmp_path, monkeypatch):
    """A repeated question is answered from the last reply only while that reply still holds."""
    server = _server(tmp_path, "nxdomain")
    _fill_cache(server)
    clock = [NOW]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(fastpath, "monotonic", lambda: clock[0])
    q = bytes(dnslib.DNSRecord.question("www.example.org").pack())

    def ask_fast() -> dnslib.DNSRecord:
        return dnslib.DNSRecord.parse(server.fast(q, CLIENTS[0]))  # type: ignore[misc]

    assert ask_fast().rr[0].ttl == 293
    assert ask_fast().rr[0].ttl == 293           # remembered
    clock[0] += 2.0
    assert ask_fast().rr[0].ttl == 291           # a second later: counted down again
    key = parse_query(q).key
    fresh = dnslib.DNSRecord.parse(q).reply()
    fresh.add_answer(dnslib.RR("www.example.org", 1, ttl=60, rdata=dnslib.A("198.51.100.7")))
    answer = parse_answer(bytes(fresh.pack()), parse_query(q), 0, 86400, 3600)
    answer.stored = clock[0]
    server.cache.entries[key] = answer           # type: ignore[union-attr]
    r = ask_fast()
    assert str(r.rr[0].rdata) == "198.51.100.7" and r.rr[0].ttl == 60   # the new entry
    del server.cache.entries[key]                # type: ignore[union-attr]
    assert isinstance(server.fast(q, CLIENTS[0]), Request)   # gone from the cache: forwarded
    clock[0] += 10_000
    assert server.fast(bytes(dnslib.DNSRecord.question("tracker.example").pack()),
                       CLIENTS[0]) is not None   # blocked answers do not expire
    assert server.stats.cache_hits == 4


def test_reply_memo_false_remembers_nothing_and_answers_the_same(tmp_path):
    """server.reply_memo: false (the bench's hushdns-nomemo): same replies, none remembered."""
    with_memo = _server(tmp_path, "nxdomain")
    without = _server(tmp_path, "nxdomain", "server: {reply_memo: false}\n")
    assert without.config.server.reply_memo is False
    _fill_cache(with_memo)
    _fill_cache(without)
    for name in ("www.example.org", "tracker.example"):
        q = bytes(dnslib.DNSRecord.question(name).pack())
        for _ in range(3):
            a, b = with_memo.fast(q, CLIENTS[0]), without.fast(q, CLIENTS[0])  # type: ignore[misc]
            assert isinstance(b, bytes) and a == b
    assert len(with_memo.fast.__self__.replies) == 2   # type: ignore[union-attr]
    assert without.fast.__self__.replies == {}          # type: ignore[union-attr]
    assert without.stats.cache_hits == with_memo.stats.cache_hits == 3

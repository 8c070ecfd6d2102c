"""The reply memo changes nothing but speed: the pipeline with it and without it are the same.

The property test runs two servers built from one configuration (rate limiting
on), one with its memo and one without, feeds both the same random datagrams
from the same clients on the same clock, and requires identical replies, byte
for byte, and identical counters, rate-limit buckets and cache order.  The
other tests show that the memo really answers repeats (over real sockets too),
that it honours a stage it has never heard of, and what ends a remembered reply.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.rcode
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resolver.memo
import resolver.server
from resolver.config import load_config
from resolver.lists.loader import load_all
from resolver.pipeline import Pipeline
from resolver.reply import Reply
from resolver.server import Server
from resolver.stages.cache import Cache
from resolver.stages.ratelimit import RateLimit
from resolver.wire import REFUSED, SERVFAIL, build_reply, parse_answer, parse_query
from tests.conftest import ask

NOW = 50_000.0
LISTED = ["tracker.example", "ads.vendor.test", "t.kids.example"]
ALLOWED = "ok.tracker.example"
CACHED = ["www.example.org", "cdn.example.net", "cloaked.example.com", "big.example.org",
          "old.example.org", "fail.example.org", "neg.example.org", "x1-9.example"]
CLIENTS = [("127.0.0.1", 5000), ("10.1.2.3", 5001), ("192.168.9.9", 5002),
           ("203.0.113.7", 5003)]   # the last one is outside access.allow
MODES = ["nxdomain", "refused", "null", '["0.0.0.0", "::"]']


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    def sendto(self, wire: bytes | None, addr: object = None) -> None:
        self.sent.append(wire)


def _upstream(q: Any, done: Callable[[Any, Reply | None], None]) -> None:
    """A synchronous stand-in for the forwarding terminal: one A record, or NXDOMAIN."""
    rec = dnslib.DNSRecord.parse(q.data).reply()
    rec.ar = []
    if q.qname.startswith("n"):
        rec.header.rcode = 3
    else:
        rec.add_answer(dnslib.RR(rec.q.qname, 1, ttl=3, rdata=dnslib.A("192.0.2.9")))
    answer = parse_answer(rec.pack(), q, 0, 86400, 3600)
    done(q, Reply("forwarded", answer=answer, upstream="fake"))


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
    server.pipeline.terminal.start = _upstream   # type: ignore[method-assign,union-attr]
    for host, _ in CLIENTS:
        server.clients.lookup(host)   # the edge learns a client on its first query
    return server


def _entries(server: Server) -> Any:
    return server.pipeline.find(Cache).entries   # type: ignore[union-attr]


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
                _entries(server)[req.key] = answer


def _clock(monkeypatch: pytest.MonkeyPatch, start: float = NOW) -> list[float]:
    """One clock for the stages, the pipeline and the memo, moved by the test."""
    clock = [start]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(resolver.memo, "monotonic", lambda: clock[0])
    return clock


def _snapshot(server: Server) -> tuple:
    s = server.stats
    rl = server.pipeline.find(RateLimit)   # type: ignore[union-attr]
    return (dict(s.queries), dict(s.blocked), dict(s.blocked_domains), s.cache_hits,
            s.cache_misses, s.cache_evictions, {k: h.n for k, h in s.request_duration.items()},
            dict(s.limited), {k: list(v) for k, v in rl.buckets.items()} if rl else None,
            list(_entries(server)))


def _name_bytes(draw: st.DrawFn) -> list[bytes]:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        name = draw(st.sampled_from(LISTED + [ALLOWED, "sub." + LISTED[0], "regex42.example"]))
    elif kind in (1, 2, 3):
        name = draw(st.sampled_from(CACHED))
    elif kind == 4:
        name = draw(st.sampled_from(["unlisted.example", "example", "a.b.c.d.e.f.example",
                                     "new.example", "nx.example"]))
    else:
        return draw(st.lists(st.binary(min_size=1, max_size=12), min_size=0, max_size=4))
    labels = [lab.encode() for lab in name.split(".")]
    if draw(st.booleans()):   # 0x20 casing, as some stubs send
        labels = [bytes(c ^ 0x20 if 97 <= c <= 122 and draw(st.booleans()) else c
                        for c in lab) for lab in labels]
    return labels


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    qid = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):   # what stubs send
        name = draw(st.sampled_from(LISTED + CACHED + ["sub." + LISTED[0], ALLOWED, "new.example"]))
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
    ar = an = 0
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


def _udp(server: Server, data: bytes, client: tuple[str, int]) -> tuple[list, bool]:
    """What the UDP edge does with one datagram: the memo first (when there is one)."""
    sink = Sink()
    memo = server.memo
    wire = memo.answer(data, client, sink) if memo is not None else None
    if wire is None:
        server.handle(data, client, "udp", sink)
    elif wire:
        sink.sendto(wire)
    return sink.sent, bool(wire)


@pytest.mark.parametrize("mode,action", [(m, a) for m in MODES for a in ("refused",)]
                         + [("nxdomain", "drop"), ("nxdomain", "tc")])
def test_memo_on_and_memo_off_answer_and_count_alike(tmp_path, monkeypatch, mode, action):
    extra = f"rate_limit: {{qps: 10, burst: 6, action: {action}}}\n"
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = _server(tmp_path / "on", mode, extra)
    off = _server(tmp_path / "off", mode, extra)
    off.memo = None
    off.pipeline.memo = None   # type: ignore[union-attr]
    for s in (on, off):
        _fill_cache(s)
    clock = _clock(monkeypatch)
    taken = {"memo": 0, "pipeline": 0}

    @settings(max_examples=400, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=datagrams(), who=st.sampled_from(CLIENTS), step=st.sampled_from([0.0, 0.05, 0.6]),
           again=st.tuples(st.integers(0, len(CLIENTS) - 1), st.integers(0, 0xFFFF)))
    def check(data: bytes, who: tuple[str, int], step: float, again: tuple[int, int]) -> None:
        # The same question twice (the second time the memo may answer it), perhaps
        # from another client and with another ID.
        clock[0] += step
        for n, client in enumerate((who, CLIENTS[again[0]])):
            if n:
                data = again[1].to_bytes(2, "big") + data[2:]
            got, by_memo = _udp(on, data, client)
            want, _ = _udp(off, data, client)
            taken["memo" if by_memo else "pipeline"] += 1
            assert got == want
            assert _snapshot(on) == _snapshot(off)

    check()
    assert taken["memo"] > 50 and taken["pipeline"] > 50, taken   # both really exercised
    assert on.stats.limited   # and the rate limit had its say


class Toggle:
    """A stage the memo has never heard of (no ``per_query``): REFUSED while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.calls = 0

    def on_query(self, q: Any) -> Reply | None:
        self.calls += 1
        if self.on:
            return Reply("refused", wire=build_reply(q, REFUSED))
        return None


def test_a_stage_added_before_the_cache_is_honoured_by_memo_answers(tmp_path, monkeypatch):
    toggle = Toggle()
    real = resolver.server.build_pipeline

    def with_toggle(*args: Any, **kw: Any) -> Pipeline:
        p = real(*args, **kw)
        at = next(i for i, (s, _) in enumerate(p.positions) if isinstance(s, Cache))
        positions = p.positions[:at] + [(toggle, "test: a new stage")] + p.positions[at:]
        return Pipeline(positions, p.terminal, args[0], args[2])

    monkeypatch.setattr(resolver.server, "build_pipeline", with_toggle)
    server = _server(tmp_path, "nxdomain")
    _fill_cache(server)
    _clock(monkeypatch)
    q = bytes(dnslib.DNSRecord.question("www.example.org").pack())
    blocked = bytes(dnslib.DNSRecord.question("tracker.example").pack())
    for data in (q, blocked):
        for _ in range(2):   # seen, then remembered
            _udp(server, data, CLIENTS[0])
        sent, by_memo = _udp(server, data, CLIENTS[0])
        assert by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode in (0, 3)
    # The cache hit is behind the new stage, so the memo runs it for each answer; the
    # block answer comes from a stage above it, which it cannot change.
    assert toggle.calls == 3   # two cache hits through the pipeline, one memo answer
    toggle.on = True
    sent, by_memo = _udp(server, q, CLIENTS[0])
    assert not by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode == REFUSED
    assert server.stats.queries[("127.0.0.1", "A", "refused")] == 1
    sent, by_memo = _udp(server, blocked, CLIENTS[0])
    assert by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode == 3


def test_repeats_are_answered_by_the_memo_and_groups_keep_apart(tmp_path, monkeypatch):
    server = _server(tmp_path, "nxdomain")
    _fill_cache(server)
    _clock(monkeypatch)
    kids = bytes(dnslib.DNSRecord.question("t.kids.example").pack())
    for _ in range(3):
        sent, _ = _udp(server, kids, ("10.1.2.3", 1))      # kids: blocked
        assert dnslib.DNSRecord.parse(sent[0]).header.rcode == 3
    sent, by_memo = _udp(server, kids, ("127.0.0.1", 1))   # default group: not on its lists
    assert not by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode == 0
    _, by_memo = _udp(server, kids, ("10.1.2.9", 1))       # a new kid: learnt first
    assert not by_memo
    _, by_memo = _udp(server, kids, ("10.1.2.9", 1))
    assert by_memo
    s = server.stats
    assert s.queries[("kid", "A", "blocked")] == 5 and s.blocked == {("kid", "k"): 5}
    outsider = bytes(dnslib.DNSRecord.question("www.example.org").pack())
    for _ in range(2):
        sent, by_memo = _udp(server, outsider, CLIENTS[3])
        assert not by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode == REFUSED


def test_remembered_replies_follow_the_clock_and_the_cache(tmp_path, monkeypatch):
    server = _server(tmp_path, "nxdomain")
    _fill_cache(server)
    clock = _clock(monkeypatch)
    q = bytes(dnslib.DNSRecord.question("www.example.org").pack())

    def ttl() -> tuple[int, bool]:
        sent, by_memo = _udp(server, q, CLIENTS[0])
        return dnslib.DNSRecord.parse(sent[0]).rr[0].ttl, by_memo

    assert ttl() == (293, False)           # first sight: only noted
    assert ttl() == (293, False)           # second: remembered
    assert ttl() == (293, True)            # from the memo
    clock[0] += 2.0
    assert ttl() == (291, False)           # two seconds later: rendered again
    key = parse_query(q).key
    fresh = dnslib.DNSRecord.parse(q).reply()
    fresh.add_answer(dnslib.RR("www.example.org", 1, ttl=60, rdata=dnslib.A("198.51.100.7")))
    answer = parse_answer(bytes(fresh.pack()), parse_query(q), 0, 86400, 3600)
    answer.stored = clock[0]
    _entries(server)[key] = answer         # a new entry
    assert ttl() == (60, False)
    assert ttl() == (60, True)
    assert server.stats.cache_hits == 6


def test_query_log_turns_the_memo_off(tmp_path):
    assert _server(tmp_path, "nxdomain", "log: {queries: true}\n").memo is None


def test_real_clients_over_udp_get_memo_answers(serve, upstream):
    """dnspython over real sockets: blocked and cached answers, counted once each."""
    srv = serve(lists={"l": "tracker.example\n"})
    assert srv.server.memo is not None
    memo_answers = srv.server.stats.memo_counts   # (answers given, replies remembered)
    before = memo_answers()[0]
    for _ in range(4):
        assert ask(srv, "tracker.example").rcode() == dns.rcode.NXDOMAIN
        r = ask(srv, "www.example.org", "A", edns=True)
        assert r.rcode() == dns.rcode.NOERROR and r.answer
    # Through the pipeline: the first two blocked answers (seen, then remembered), the
    # forwarded one and the first two cache hits; the rest come from the memo.
    assert memo_answers()[0] - before == 3
    q = srv.stats.queries
    assert q[("127.0.0.1", "A", "blocked")] == 4
    assert q[("127.0.0.1", "A", "cached")] == 3
    assert q[("127.0.0.1", "A", "forwarded")] == 1
    assert len(upstream.seen) == 1


def test_reply_memo_false_remembers_nothing_and_answers_the_same(tmp_path, monkeypatch):
    """server.reply_memo: false (the bench's hushdns-nomemo): the pipeline alone, same replies."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_memo = _server(tmp_path / "a", "nxdomain")
    without = _server(tmp_path / "b", "nxdomain", "server: {reply_memo: false}\n")
    assert without.config.server.reply_memo is False and without.memo is None
    _fill_cache(with_memo)
    _fill_cache(without)
    _clock(monkeypatch)
    for name in ("www.example.org", "tracker.example"):
        q = bytes(dnslib.DNSRecord.question(name).pack())
        for _ in range(3):
            assert _udp(with_memo, q, CLIENTS[0])[0] == _udp(without, q, CLIENTS[0])[0]
    assert with_memo.memo.size == 2   # type: ignore[union-attr]
    assert without.stats.cache_hits == with_memo.stats.cache_hits == 3


def test_first_sight_answers_are_noted_not_remembered(tmp_path, monkeypatch):
    """Never-repeated questions (first-sight subdomains) do not fill the memo."""
    server = _server(tmp_path, "nxdomain")
    _clock(monkeypatch)
    for i in range(200):
        sent, by_memo = _udp(server, bytes(dnslib.DNSRecord.question(f"x{i}.tracker.example")
                                           .pack()), CLIENTS[0])
        assert not by_memo and dnslib.DNSRecord.parse(sent[0]).header.rcode == 3
    memo = server.memo
    assert memo.size == 0 and len(memo.door) == 200   # type: ignore[union-attr]
    assert server.stats.blocked == {("127.0.0.1", "l"): 200}


def _question(i: int, zone: str) -> Any:
    """A real query for q<i>.<zone> from a client of policy "p" (the memo's judgement reads
    only its bytes, type, name and policy key)."""
    from types import SimpleNamespace

    from resolver.wire import encode_name

    data = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + \
        encode_name(f"q{i}.{zone}") + b"\x00\x01\x00\x01"
    q = parse_query(data)
    q.info = SimpleNamespace(policy="p")
    return q


def test_remembering_that_does_not_pay_turns_to_sampling_and_back(tmp_path: Path) -> None:
    """Stores with hardly any answers (a wide cache at full rate): the memo then remembers
    one repeated question in eight; when answers are worth their stores again (hot names),
    it remembers every repeated question.  Its counters go on across a reload."""

    from resolver import memo as memo_mod
    from resolver.memo import Keep
    from resolver.stats import Stats

    stats = Stats()
    pipeline = _server(tmp_path, "nxdomain").pipeline
    m = memo_mod.ReplyMemo(pipeline, {}, stats)   # type: ignore[arg-type]
    reply = Reply("blocked", keep=Keep())

    def offer(i: int) -> None:   # a repeated question (its hash already at the door)
        q = _question(i, "name")
        m.door.add(hash(q.data[2:]))
        m.store(q, q.data, reply, (), 1.0)

    for i in range(memo_mod.WINDOW):   # wide: every one stored, none answered
        offer(i)
    assert m.admit == memo_mod.SAMPLE
    kept_before = m.kept
    for i in range(memo_mod.WINDOW, memo_mod.WINDOW + 800):
        offer(i)
    kept = m.kept - kept_before
    assert 40 < kept < 200, kept        # about one in eight of 800
    m.hits = memo_mod.WINDOW            # hot names: the few remembered answer again and again
    for i in range(memo_mod.WINDOW):
        offer(i)
    assert m.admit == 0
    answered, stored = stats.memo_counts()
    assert answered == memo_mod.WINDOW and stored > memo_mod.WINDOW
    assert memo_mod.ReplyMemo(pipeline, {}, stats).counts() == (answered, stored)


def test_first_sight_traffic_turns_sampling_on_and_hot_names_turn_it_off_again(
        tmp_path: Path) -> None:
    """First sights count toward the judgement (a stream of new names samples too), and
    while sampling, answers per admitted question still tell when remembering pays."""

    from resolver import memo as memo_mod
    from resolver.memo import Keep
    from resolver.stats import Stats

    m = memo_mod.ReplyMemo(_server(tmp_path, "nxdomain").pipeline, {}, Stats())  # type: ignore[arg-type]
    reply = Reply("blocked", keep=Keep())

    def offer(i: int) -> None:   # never seen before: only noted at the door
        q = _question(i, "new")
        m.store(q, q.data, reply, (), 1.0)

    for i in range(memo_mod.WINDOW):
        offer(i)
    assert m.admit == memo_mod.SAMPLE and m.kept == 0
    # Hot names while sampling: the sampled eighth answers from the memo far more often
    # than it is offered; the seven eighths that are not admitted still end the window.
    for i in range(memo_mod.WINDOW, 2 * memo_mod.WINDOW):
        m.hits += 1
        offer(i)
    assert m.admit == 0

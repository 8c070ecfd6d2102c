"""Fuzzing with hypothesis, on a bounded budget so CI stays fast.

Targets: the query parser, the whole request handler (UDP and TCP paths of a
running server), the upstream-answer parser, the list parser and the config
loader.  Properties: no exception escapes, every reply is a well-formed DNS
message for the query it answers, every TCP message gets exactly one
completion, and each packet is handled in bounded time.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import dns.message
import dnslib
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from resolver.config import ConfigError, load_config
from resolver.lists.parse import normalize_domain, parse_text
from resolver.wire import (
    Drop,
    Reject,
    Request,
    WireError,
    check_name,
    parse_answer,
    parse_query,
)
from tests.fakes import FakeUpstream, start_server

# HUSHDNS_FUZZ_EXAMPLES raises the budget for a longer local run.
BUDGET = int(os.environ.get("HUSHDNS_FUZZ_EXAMPLES", "300"))
# No "explain" phase: its tracing made reporting a failure take minutes.
FUZZ = settings(max_examples=BUDGET, deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- strategies -------------------------------------------------------------------------------

labels = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
names = st.lists(labels, min_size=0, max_size=5).map(lambda ls: ".".join(ls) + ".")
qtypes = st.one_of(st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65, 249, 250, 251, 252,
                                    253, 254, 255]), st.integers(0, 65535))


@st.composite
def valid_queries(draw) -> bytes:
    q = dns.message.make_query(draw(names), draw(st.sampled_from(["A", "AAAA", "TXT", "MX", "ANY"])),
                               use_edns=draw(st.sampled_from([False, 0])),
                               payload=draw(st.integers(0, 65535)),
                               want_dnssec=draw(st.booleans()))
    q.id = draw(st.integers(0, 65535))
    wire = bytearray(q.to_wire())
    qend = check_name(bytes(wire), 12, len(wire)) + 4
    wire[qend - 4:qend - 2] = draw(qtypes).to_bytes(2, "big")
    return bytes(wire)


@st.composite
def mutated(draw, base) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xC0, 0xC0 | 12 >> 8, 12, 63, 64, 255]))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 4))]
        else:
            data += data[i:]
    return bytes(data)


packets = st.one_of(st.binary(max_size=600), valid_queries(), mutated(valid_queries()))


# --- checking a reply ---------------------------------------------------------------------------


def well_formed(reply: bytes, query: bytes, strict: bool = True) -> None:
    """A reply to ``query``: its ID, QR set, valid names and sections that walk to exactly
    the end; ``strict``: an independent parser (which also decodes rdata) agrees."""
    assert len(reply) >= 12
    assert reply[:2] == query[:2]
    assert reply[2] & 0x80
    qd, an, ns, ar = (int.from_bytes(reply[i:i + 2], "big") for i in (4, 6, 8, 10))
    assert qd <= 1
    pos, n = 12, len(reply)
    if qd:
        pos = check_name(reply, pos, n) + 4
    for _ in range(an + ns + ar):
        pos = check_name(reply, pos, n)
        assert pos + 10 <= n
        pos += 10 + int.from_bytes(reply[pos + 8:pos + 10], "big")
    assert pos == n, "trailing bytes or records past the end"
    if not strict:
        return
    try:
        dns.message.from_wire(reply)
    except Exception:
        dnslib.DNSRecord.parse(reply)


# --- the query parser ---------------------------------------------------------------------------


@FUZZ
@given(packets)
def test_parse_query_only_drops_rejects_or_parses(data):
    # CPU time of this thread: what the parser spent, not what a busy machine took from it.
    t0 = time.thread_time()
    try:
        req = parse_query(data)
    except Drop:
        return
    except Reject as rej:
        well_formed(rej.reply, data)
        return
    finally:
        assert time.thread_time() - t0 < 0.01
    assert isinstance(req, Request)
    assert req.qend <= len(data)
    raw = req.qname.encode("latin-1")
    assert raw == raw.lower()               # ASCII case folded (RFC 4343); other bytes kept
    assert len(req.qname) <= 253


# --- the whole handler, on a running server -------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.calls: list[bytes | None] = []

    def sendto(self, wire: bytes | None, addr=None) -> None:
        self.calls.append(wire)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    up = FakeUpstream()
    srv = start_server(tmp, up, "server: {upstream_timeout: 0.1, upstream_total_timeout: 0.3}\n",
                       lists={"vendor": "blocked.test\n||ads.test^\n/^track[0-9]+\\./\n"})
    yield srv
    srv.stop()
    up.close()


async def _handle(server, data: bytes, proto: str) -> tuple[Sink, float]:
    sink = Sink()
    t0 = time.thread_time()    # the loop thread's CPU time: a busy machine's preemption is not ours
    server.handle(data, ("127.0.0.1", 40000), proto, sink)
    sync = time.thread_time() - t0
    deadline = time.monotonic() + 3
    while server.waiting and time.monotonic() < deadline:   # queries waiting for the upstream
        await asyncio.sleep(0.005)
    return sink, sync


@FUZZ
@given(data=packets, proto=st.sampled_from(["udp", "tcp"]))
def test_handler_answers_every_packet_well_formed_and_in_bounded_time(running, data, proto):
    t0 = time.monotonic()
    sink, sync = running.call(_handle(running.server, data, proto))
    took = time.monotonic() - t0
    assert sync < 0.05, "the synchronous part of one packet took too long"
    assert took < 1.5                       # upstream_total_timeout is 0.3 s
    if proto == "tcp":
        # Exactly one completion per message, or the connection's pipelining count drifts.
        assert len(sink.calls) == 1
    else:
        assert len(sink.calls) <= 1
    for wire in sink.calls:
        if wire is None:
            continue
        well_formed(wire, data)
        if proto == "udp":
            try:
                limit = parse_query(data).max_udp(1232)
            except (Drop, Reject):
                limit = 512          # error replies: header, question, OPT
            assert len(wire) <= limit


def test_handler_fuzz_left_the_server_healthy(running):
    """After the fuzz runs above, ordinary queries are still answered normally."""
    import dns.query

    q = dns.message.make_query("after-fuzz.test", "A")
    r = dns.query.udp(q, running.host, port=running.port, timeout=3)
    assert r.rcode() == 0 and r.answer
    q = dns.message.make_query("x.blocked.test", "A")
    assert dns.query.tcp(q, running.host, port=running.port, timeout=3).rcode() == 3


# --- the upstream-answer parser --------------------------------------------------------------------


@st.composite
def upstream_answers(draw) -> tuple[bytes, bytes]:
    name = draw(names.filter(lambda n: n != "."))
    qtype = getattr(dnslib.QTYPE, draw(st.sampled_from(["A", "AAAA", "MX", "TXT"])))
    # An explicit ID: dnslib would otherwise draw one from ``random`` inside the strategy.
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=draw(st.integers(0, 65535)), rd=1),
                         q=dnslib.DNSQuestion(name, qtype))
    r = q.reply()
    owner = name
    for i in range(draw(st.integers(0, 3))):
        target = f"c{i}.{name}"
        r.add_answer(dnslib.RR(owner, dnslib.QTYPE.CNAME, ttl=draw(st.integers(0, 2**31)),
                               rdata=dnslib.CNAME(target)))
        owner = target
    for _ in range(draw(st.integers(0, 3))):
        r.add_answer(dnslib.RR(draw(st.sampled_from([owner, "other.test."])), dnslib.QTYPE.A,
                               ttl=300, rdata=dnslib.A("192.0.2.7")))
    if draw(st.booleans()):
        r.add_auth(dnslib.RR(name, dnslib.QTYPE.SOA, ttl=60,
                             rdata=dnslib.SOA("ns.test.", "h.test.", (1, 2, 3, 4, 5))))
    if draw(st.booleans()):
        r.add_ar(dnslib.EDNS0(udp_len=1232))
    return q.pack(), r.pack()


@st.composite
def mutated_answers(draw) -> tuple[bytes, bytes]:
    query, answer = draw(upstream_answers())
    req = parse_query(query)
    head = answer[:req.qend]     # ID and question stay valid: the mutation hits the records
    tail = draw(mutated(st.just(answer[req.qend:]))) if len(answer) > req.qend else b""
    return query, head + tail


@FUZZ
@given(st.one_of(upstream_answers(), mutated_answers()))
def test_parse_answer_returns_or_raises_wireerror_only(pair):
    """The upstream layer relies on this: anything else would escape as a crash, and a
    WireError makes the reply be ignored while the genuine one is awaited (TuDoor)."""
    query, answer = pair
    req = parse_query(query)
    t0 = time.thread_time()
    try:
        ans = parse_answer(answer, req, 0, 86400, 3600)
    except WireError:
        return
    finally:
        assert time.thread_time() - t0 < 0.05
    assert ans.ttl >= 0
    assert all(0 <= off <= len(ans.body) - 4 for off in ans.ttl_offsets)
    # What would be cached renders to a well-formed reply for the client.  Not strict:
    # mutated records of arbitrary types carry rdata a forwarder passes on opaque
    # (RFC 3597); the structure and every name are what must be sound.
    well_formed(ans.render(req, time.monotonic()), query, strict=False)


# --- the list parser -------------------------------------------------------------------------------

list_lines = st.one_of(
    st.text(max_size=80),
    st.builds(lambda ip, d: f"{ip} {d}", st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "::1"]),
              names),
    names.map(lambda n: f"||{n.rstrip('.')}^$important"),
    names.map(lambda n: f"*.{n}"),
    st.text(max_size=30).map(lambda t: f"/{t}/"),
    names.map(lambda n: f"{n} # comment"),
    st.sampled_from(["# c", "! c", "[Adblock Plus 2.0]", "", "   ", "\ufeffa.test", "a.test\r"]),
)


@settings(FUZZ, max_examples=max(50, BUDGET // 2))
@given(st.lists(list_lines, max_size=12))
def test_list_parser_never_raises_and_keeps_only_valid_rules(lines):
    text = "\n".join(lines)
    t0 = time.thread_time()
    parsed = parse_text(text, keep_rules=True)
    assert time.thread_time() - t0 < 0.5
    for d in parsed.domains:
        assert normalize_domain(d) == d
    for rx in parsed.regexes:
        re.compile(rx)
    n = text.count("\n") + 1
    assert all(1 <= line <= n for line, _, _ in parsed.rejected)
    assert len(parsed.rules) == len(parsed)


# --- the config loader -------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100_000), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["127.0.0.1", "[::1]:53", "30s", "1.5"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["listen", "allow", "lists", "mode", "qps", "burst", "action",
                                     "enabled", "allow_zones", "max_entries", "serve_stale",
                                     "source", "clients", "x"]), inner, max_size=3)), max_leaves=8)
top_keys = st.sampled_from(["listen", "upstreams", "forward_zones", "access", "blocking", "clients",
                            "groups", "cache", "metrics", "server", "rate_limit",
                            "rebind_protection", "state_dir", "log", "unknown"])


@FUZZ
@given(st.dictionaries(top_keys, values, max_size=5))
def test_config_loader_gives_a_config_or_a_config_error(tmp_path_factory, doc):
    import yaml

    tmp = Path(tmp_path_factory.getbasetemp())
    text = yaml.safe_dump(doc)
    try:
        load_config(tmp / "fuzz.yaml", text=text)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)

"""The real server on 127.0.0.1, a fake upstream, and independent clients (dnspython, kdig)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dnslib
import pytest

from tests.conftest import ask, kdig_missing
from tests.fakes import FakeUpstream

BLOCK = "data.mistat.xiaomi.com  # MIUI analytics\n||tracking.miui.com^\n"


def raw_udp(srv, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (srv.host, srv.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_forwarded_answer_echoes_id_and_question_case(serve, upstream) -> None:
    srv = serve()
    q = dns.message.make_query("WwW.ExAmPlE.oRg", "A")
    r = dns.query.udp(q, srv.host, port=srv.port, timeout=3)
    assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
    assert r.question[0].name.to_text() == "WwW.ExAmPlE.oRg."
    assert r.answer[0][0].address == "192.0.2.1"
    assert r.flags & dns.flags.RA and r.flags & dns.flags.RD and not r.flags & dns.flags.AA
    up_q = dnslib.DNSRecord.parse(upstream.queries()[0].data)
    assert up_q.header.id != q.id   # a fresh ID upstream, never the client's


def _with_referral(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    """An authoritative-style answer: the A record, the zone's NS, and its glue."""
    r = q.reply()
    r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.0.2.1")))
    r.add_auth(dnslib.RR("example.org", dnslib.QTYPE.NS, ttl=300, rdata=dnslib.NS("ns.example.org")))
    r.add_ar(dnslib.RR("ns.example.org", dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.0.2.53")))
    return r


@pytest.mark.parametrize("setting, minimal", [("", True), ("server: {minimal_responses: false}\n", False)])
def test_minimal_responses_leave_out_authority_and_additional_unless_do(
        serve, setting: str, minimal: bool) -> None:
    up = FakeUpstream(answer=_with_referral)
    try:
        srv = serve(setting, up=up)
        for _ in range(2):   # forwarded, then from the cache
            r = ask(srv, "www.example.org", edns=True)
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.1"]
            assert bool(r.authority) is not minimal and bool(r.additional) is not minimal
            # A DNSSEC-aware client (DO) gets every section, whatever the setting.
            d = ask(srv, "www.example.org", dnssec=True)
            assert [rr.target.to_text() for rr in d.authority[0]] == ["ns.example.org."]
            assert [rr.address for rr in d.additional[0]] == ["192.0.2.53"]
        assert len(up.queries()) == 2   # one per DO bit: they are separate cache entries
    finally:
        up.close()


def test_blocked_names_and_subdomains_get_nxdomain_with_soa_and_ede(serve, upstream) -> None:
    srv = serve(lists={"xiaomi": BLOCK})
    for name in ("data.mistat.xiaomi.com", "x.data.mistat.xiaomi.com", "a.b.tracking.miui.com"):
        r = ask(srv, name, edns=True)
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
        ede = [o for o in r.options if o.otype == dns.edns.EDE]
        assert ede and ede[0].code == 15
    r = ask(srv, "data.mistat.xiaomi.com")   # no EDNS in the query -> no OPT in the reply
    assert r.edns < 0
    assert upstream.queries() == []   # never left the box
    assert srv.stats.blocked[("127.0.0.1", "xiaomi")] == 4


def test_tcp_works_and_pipelined_queries_are_all_answered(serve) -> None:
    srv = serve(lists={"xiaomi": BLOCK})
    r = ask(srv, "example.org", tcp=True)
    assert r.answer[0][0].address == "192.0.2.1"
    msgs = [dns.message.make_query(f"n{i}.example.org", "A") for i in range(10)]
    msgs.append(dns.message.make_query("tracking.miui.com", "A"))
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        got = {}
        for _ in msgs:
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            m = dns.message.from_wire(s.recv(n, socket.MSG_WAITALL))
            got[m.id] = m
    assert set(got) == {m.id for m in msgs}
    blocked = [m for m in got.values() if m.rcode() == dns.rcode.NXDOMAIN]
    assert len(blocked) == 1


def test_cache_serves_second_query_without_upstream(serve, upstream) -> None:
    srv = serve()
    ask(srv, "cached.example.org")
    time.sleep(1.1)
    r = ask(srv, "CACHED.example.org")
    assert len(upstream.queries()) == 1
    assert r.answer[0].ttl in (298, 299)
    assert r.question[0].name.to_text() == "CACHED.example.org."
    assert srv.stats.cache_hits == 1


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(serve, upstream) -> None:
    def big(q):
        r = q.reply()
        for i in range(60):
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.TXT, ttl=60,
                                   rdata=dnslib.TXT(f"record number {i} " + "x" * 20)))
        return r

    upstream.answer = big
    srv = serve()
    r = ask(srv, "big.example.org", "TXT")                         # no EDNS: 512 bytes
    assert r.flags & dns.flags.TC and not r.answer
    r = ask(srv, "big.example.org", "TXT", edns=True, payload=4096)  # capped at 1232
    assert r.flags & dns.flags.TC
    r = ask(srv, "big.example.org", "TXT", tcp=True)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 60


def test_upstream_tc_is_retried_over_tcp(serve, upstream) -> None:
    upstream.truncate_udp = True
    srv = serve()
    r = ask(srv, "tc.example.org", edns=True)
    assert r.answer[0][0].address == "192.0.2.1" and not r.flags & dns.flags.TC
    assert upstream.queries("tcp")


def test_upstream_formerr_to_edns_is_retried_without_edns(serve, upstream) -> None:
    def old_server(q):
        if q.ar:   # has OPT
            r = q.reply()
            r.header.rcode = dnslib.RCODE.FORMERR
            r.ar = []
            return r
        from tests.fakes import default_answer
        return default_answer(q)

    upstream.answer = old_server
    srv = serve()
    r = ask(srv, "old.example.org")
    assert r.answer[0][0].address == "192.0.2.1"
    assert [bool(s.record.ar) for s in upstream.queries()] == [True, False]


def test_wrong_id_and_garbage_first_do_not_stop_the_genuine_answer(serve, upstream) -> None:
    def wrong_id(data: bytes) -> bytes:
        r = dnslib.DNSRecord.parse(data).reply()
        r.header.id ^= 0xFFFF
        r.add_answer(dnslib.RR(r.q.qname, 1, ttl=60, rdata=dnslib.A("203.0.113.66")))
        return r.pack()

    upstream.before = [b"\xff" * 7, wrong_id]
    srv = serve()
    r = ask(srv, "genuine.example.org")
    assert r.answer[0][0].address == "192.0.2.1"
    assert srv.stats.upstream_requests[(upstream.address, "spoof_rejected")] == 2


def test_silent_first_upstream_falls_over_to_the_next(tmp_path) -> None:
    from resolver.config import load_config
    from tests.fakes import ServerThread

    dead = FakeUpstream(silent=True)
    alive = FakeUpstream()
    try:
        (tmp_path / "two.yaml").write_text(
            f'listen: ["127.0.0.1:0"]\nupstreams: ["{dead.address}", "{alive.address}"]\n'
            "metrics: {listen: null}\n")
        srv2 = ServerThread(load_config(tmp_path / "two.yaml"))
        try:
            t0 = time.monotonic()
            r = ask(srv2, "failover.example.org")
            took = time.monotonic() - t0
            assert r.answer[0][0].address == "192.0.2.1"
            assert 0.9 <= took < 2.0
        finally:
            srv2.stop()
    finally:
        dead.close()
        alive.close()


def test_all_upstreams_down_gives_servfail_in_bounded_time(serve, upstream) -> None:
    upstream.silent = True
    srv = serve()
    t0 = time.monotonic()
    r = ask(srv, "down.example.org", edns=True, timeout=8)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 5.0


def test_identical_questions_in_flight_share_one_upstream_query(serve, upstream) -> None:
    import concurrent.futures

    upstream.delay = 0.5
    srv = serve()
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        rs = list(ex.map(lambda _: ask(srv, "shared.example.org"), range(10)))
    assert all(r.answer[0][0].address == "192.0.2.1" for r in rs)
    assert len(upstream.queries()) == 1


def test_forward_zone_goes_to_its_own_server(serve, upstream) -> None:
    router = FakeUpstream(answer=lambda q: q.reply().add_answer(
        dnslib.RR(q.q.qname, 1, ttl=60, rdata=dnslib.A("192.168.1.10"))) or None)

    def router_answer(q):
        r = q.reply()
        r.add_answer(dnslib.RR(q.q.qname, 1, ttl=60, rdata=dnslib.A("192.168.1.10")))
        return r

    router.answer = router_answer
    try:
        srv = serve(extra=f'forward_zones: {{"lan": ["{router.address}"]}}\n')
        assert ask(srv, "nas.lan").answer[0][0].address == "192.168.1.10"
        assert ask(srv, "example.org").answer[0][0].address == "192.0.2.1"
        assert len(router.queries()) == 1 and len(upstream.queries()) == 1
    finally:
        router.close()


def test_bad_packets_get_formerr_notimp_or_are_dropped_and_the_server_lives(serve) -> None:
    srv = serve()
    assert raw_udp(srv, b"\x01\x02\x03", timeout=0.5) is None          # shorter than a header
    resp = dns.message.make_response(dns.message.make_query("x.example", "A"))
    assert raw_udp(srv, resp.to_wire(), timeout=0.5) is None           # QR=1
    q = dns.message.make_query("x.example", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = dns.message.from_wire(raw_udp(srv, q.to_wire()))
    assert r.rcode() == dns.rcode.NOTIMP
    wire = bytearray(dns.message.make_query("x.example", "A").to_wire())
    wire[5] = 0                                                        # QDCOUNT 0
    r = dns.message.from_wire(raw_udp(srv, bytes(wire)))
    assert r.rcode() == dns.rcode.FORMERR
    garbage = bytes(wire[:12]) + b"\x05ab"                                # question cut short
    garbage = garbage[:5] + b"\x01" + garbage[6:]
    r = raw_udp(srv, garbage)
    assert r is not None and r[3] & 0xF == dns.rcode.FORMERR
    q = dns.message.make_query("x.example", "A", use_edns=1)
    r = dns.message.from_wire(raw_udp(srv, q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS
    assert ask(srv, "still.example.org").answer  # and it still answers


def test_clients_outside_access_allow_are_refused(serve) -> None:
    srv = serve(extra='access: {allow: ["127.0.0.2/32"]}\n')
    assert ask(srv, "example.org").rcode() == dns.rcode.REFUSED
    assert ask(srv, "example.org", source="127.0.0.2").rcode() == dns.rcode.NOERROR


def test_groups_apply_lists_per_client(serve, tmp_path) -> None:
    (tmp_path / "kidsads.txt").write_text("games-ads.example\n")
    srv = serve(
        lists={"xiaomi": BLOCK, "ads": "games-ads.example\n"},
        extra="clients: {kids: ['127.0.0.3/32']}\n"
              "groups:\n  default: {lists: [xiaomi]}\n  kids: {clients: [kids], lists: [xiaomi, ads]}\n")
    assert ask(srv, "games-ads.example").rcode() == dns.rcode.NOERROR
    assert ask(srv, "games-ads.example", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
    assert ask(srv, "tracking.miui.com", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
    assert srv.stats.blocked == {("kids", "ads"): 1, ("kids", "xiaomi"): 1}


def test_cname_cloaked_tracker_is_blocked(serve) -> None:
    srv = serve(lists={"xiaomi": BLOCK})
    r = ask(srv, "cname-tracking--miui--com.shop.example")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_ipv6_listener_answers_udp_and_tcp(serve) -> None:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = serve(listen="[::1]:0")
    assert srv.host == "::1"
    assert ask(srv, "v6.example.org").answer[0][0].address == "192.0.2.1"
    assert ask(srv, "v6.example.org", tcp=True).answer


def test_reload_swaps_lists_and_a_broken_config_keeps_the_old(serve, tmp_path) -> None:
    srv = serve(lists={"xiaomi": BLOCK})
    assert ask(srv, "new.tracker.example").rcode() == dns.rcode.NOERROR
    (tmp_path / "xiaomi.txt").write_text(BLOCK + "new.tracker.example\n")
    assert srv.reload()
    assert ask(srv, "new.tracker.example").rcode() == dns.rcode.NXDOMAIN
    good = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(good + "cache: {max_entries: [}\n")
    assert not srv.reload()
    assert srv.stats.config_reload_success == 0
    assert ask(srv, "tracking.miui.com").rcode() == dns.rcode.NXDOMAIN
    (tmp_path / "config.yaml").write_text(good)
    assert srv.reload() and srv.stats.config_reload_success == 1


@kdig_missing
def test_kdig_udp_tcp_and_blocked(serve) -> None:
    srv = serve(lists={"xiaomi": BLOCK})

    def kdig(*args: str) -> str:
        return subprocess.run(["kdig", f"@{srv.host}", "-p", str(srv.port), *args],
                              capture_output=True, text=True, timeout=10).stdout

    out = kdig("example.org", "A", "+short")
    assert out.strip() == "192.0.2.1"
    out = kdig("example.org", "A", "+tcp", "+short")
    assert out.strip() == "192.0.2.1"
    out = kdig("data.mistat.xiaomi.com", "A", "+edns")
    assert "NXDOMAIN" in out and "EDE: 15 (Blocked)" in out


def test_stop_with_queries_waiting_for_the_upstream_cleans_up(serve, upstream) -> None:
    """Questions waiting for a silent upstream are driven by hand, not by Tasks: stop()
    must close them, run their clean-up (in-flight table, upstream sockets) and log no error."""
    upstream.silent = True
    srv = serve()
    sockets = []
    for i in range(5):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(dnslib.DNSRecord.question(f"w{i}.example").pack(), (srv.host, srv.port))
        sockets.append(s)
    deadline = time.monotonic() + 5
    while len(srv.server.waiting) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(srv.server.waiting) == 5
    forward = srv.server.pipeline.terminal
    assert len(forward.inflight) == 5
    srv.stop()
    assert not srv.server.waiting and not forward.inflight
    for s in sockets:
        s.close()

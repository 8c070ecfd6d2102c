"""PROXY protocol v2: the parser (by example and by hypothesis) and the UDP/TCP edges."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import dns.message
import dns.query
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import ConfigError, load_config
from resolver.proxy_protocol import SIGNATURE, ProxyDrop, ProxyGate, header, parse
from tests.fakes import write_config

PEER = ("127.0.0.1", 5353)


def test_ipv4_header_names_the_client_and_its_length() -> None:
    h = header(("192.0.2.7", 40000), ("127.0.0.1", 53))
    end, client = parse(h + b"DNS", PEER)
    assert end == len(h) == 28
    assert client == ("192.0.2.7", 40000)


def test_ipv6_header_and_tlvs_are_skipped() -> None:
    tlv = b"\x04\x00\x03abc"   # PP2_TYPE_NOOP
    h = header(("2001:db8::9", 1234), ("::1", 53), "tcp", tlvs=tlv)
    end, client = parse(h + b"rest", PEER)
    assert end == len(h) and client == ("2001:db8::9", 1234)


def test_local_command_is_the_proxy_itself() -> None:
    h = header(("192.0.2.7", 1), ("127.0.0.1", 53), local=True)
    assert parse(h, PEER) == (len(h), PEER)


@pytest.mark.parametrize("data, reason", [
    (b"", "missing"),
    (b"\x12\x34\x01\x00\x00\x01", "missing"),          # a plain DNS query
    (SIGNATURE[:5], "truncated"),
    (SIGNATURE + b"\x21", "truncated"),
    (header(("192.0.2.7", 1), ("127.0.0.1", 53))[:20], "truncated"),
    (SIGNATURE + b"\x11\x12\x00\x0c" + bytes(12), "malformed"),   # version 1
    (SIGNATURE + b"\x2f\x12\x00\x0c" + bytes(12), "malformed"),   # command 15
    (SIGNATURE + b"\x21\x12\x00\x04" + bytes(4), "malformed"),    # INET but 4 address bytes
    (SIGNATURE + b"\x21\x52\x00\x0c" + bytes(12), "malformed"),   # family 5
    (SIGNATURE + b"\x21\x12\xff\xff" + bytes(70000), "malformed"),  # beyond MAX_LENGTH
])
def test_bad_headers_raise_proxy_drop_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyDrop) as e:
        parse(data, PEER)
    assert e.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=60))
def test_fuzz_parse_returns_or_raises_proxy_drop_only(junk: bytes, vc: int, fam: int, body: bytes) -> None:
    for data in (junk, SIGNATURE + bytes([vc, fam]) + struct.pack("!H", len(body)) + body + junk,
                 SIGNATURE + bytes([vc, fam]) + junk):
        try:
            end, client = parse(data, PEER)
        except ProxyDrop as d:
            assert d.reason in ("missing", "truncated", "malformed")
        else:
            assert 16 <= end <= len(data)
            assert isinstance(client[0], str) and 0 <= client[1] < 65536


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.integers(0, 65535), st.sampled_from(["udp", "tcp"]))
def test_fuzz_round_trip(ip, port: int, transport: str) -> None:
    server = ("127.0.0.1", 53) if ip.version == 4 else ("::1", 53)
    h = header((str(ip), port), server, transport)
    end, (got, got_port) = parse(h, PEER)
    assert (end, ipaddress.ip_address(got), got_port) == (len(h), ip, port)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.integers(0, 65535), st.binary(max_size=30))
def test_fuzz_gate_fast_path_agrees_with_parse(ip, port: int, query: bytes) -> None:
    gate = ProxyGate((ipaddress.ip_network("127.0.0.1/32"),), {})
    h = header((str(ip), port), ("127.0.0.1", 53))
    end, client = parse(h + query, PEER)
    assert gate.open(h + query, PEER) == ((h + query)[end:], client) == (query, (str(ip), port))
    assert gate.open(h + query, PEER) == (query, (str(ip), port))   # from the client table


def test_gate_counts_each_reason() -> None:
    dropped: dict[str, int] = {}
    gate = ProxyGate((ipaddress.ip_network("127.0.0.0/30"),), dropped)
    h = header(("192.0.2.7", 9), ("127.0.0.1", 53))
    assert gate.open(h + b"q", ("127.0.0.1", 1)) == (b"q", ("192.0.2.7", 9))
    assert gate.open(b"plain", ("127.0.0.2", 1)) is None            # trusted, no header
    assert gate.open(h + b"q", ("127.0.0.9", 1)) is None           # header, untrusted
    assert gate.open(b"plain", ("127.0.0.9", 1)) == (b"plain", ("127.0.0.9", 1))
    assert gate.open(h[:20], ("127.0.0.1", 1)) is None
    assert dropped == {"missing": 1, "untrusted": 1, "truncated": 1}


def test_config_key_and_line_errors(tmp_path) -> None:
    p = write_config(tmp_path, 'listen: ["127.0.0.1:0"]\nserver:\n  proxy_protocol_from: ["10.0.0.0/8", "bogus"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "server.proxy_protocol_from[1]" in str(e.value) and "config.yaml:3)" in str(e.value)
    p = write_config(tmp_path, 'listen: ["127.0.0.1:0"]\nserver:\n  proxy_protocol_from: [127.0.0.1/32]\n')
    assert [str(n) for n in load_config(p).server.proxy_protocol_from] == ["127.0.0.1/32"]


# --- through the real edges -----------------------------------------------------------

def _udp(srv, payload: bytes, source: str = "127.0.0.1", timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(payload, (srv.host, srv.port))
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


def _counts(srv, settle: int = 0) -> dict[str, int]:
    """Queries per client (waiting until at least ``settle`` are counted: the reply is
    sent before its count is taken)."""
    deadline = time.monotonic() + 2
    while sum(dict(srv.stats.queries).values()) < settle and time.monotonic() < deadline:
        time.sleep(0.01)
    out: dict[str, int] = {}
    for (client, _qt, _res), n in dict(srv.stats.queries).items():
        out[client] = out.get(client, 0) + n
    return out


TRUST = "server:\n  proxy_protocol_from: [127.0.0.1/32]\naccess:\n  allow: [127.0.0.0/8, 192.0.2.0/24]\n"


def test_udp_proxied_client_is_the_client_and_reply_goes_to_the_proxy(serve) -> None:
    srv = serve(TRUST, lists={"ads": "ads.example\n"})
    q = dns.message.make_query("ads.example", "A")
    for i in range(3):   # the second and third come from the reply memo
        q.id = 100 + i
        h = header(("192.0.2.50", 4000 + i), ("127.0.0.1", srv.port))
        got = _udp(srv, h + q.to_wire())
        assert got is not None and dns.message.from_wire(got).id == 100 + i   # bare reply
    assert _counts(srv, 3).get("192.0.2.50") == 3
    assert "127.0.0.1" not in _counts(srv)
    assert srv.stats.blocked[("192.0.2.50", "ads")] == 3


def test_udp_drops_are_counted_and_untrusted_plain_queries_still_answered(serve) -> None:
    srv = serve(TRUST)
    q = dns.message.make_query("example.com", "A").to_wire()
    assert _udp(srv, q, timeout=0.3) is None                                   # trusted, bare
    h = header(("192.0.2.50", 1), ("127.0.0.1", srv.port))
    assert _udp(srv, h[:22], timeout=0.3) is None                             # truncated
    assert _udp(srv, h + q, source="127.0.0.2", timeout=0.3) is None          # untrusted header
    assert _udp(srv, q, source="127.0.0.2") is not None                       # plain, untrusted
    _udp(srv, h + q, timeout=2)                                               # known client now
    assert _udp(srv, h[:27], timeout=0.3) is None                             # ... cut short
    assert srv.stats.proxy_dropped == {"missing": 1, "truncated": 2, "untrusted": 1}


def test_tcp_header_once_per_connection(serve) -> None:
    srv = serve(TRUST, lists={"ads": "ads.example\n"})
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        s.sendall(header(("192.0.2.60", 5000), ("127.0.0.1", srv.port), "tcp")[:10])
        time.sleep(0.05)   # the header may arrive in pieces
        rest = header(("192.0.2.60", 5000), ("127.0.0.1", srv.port), "tcp")[10:]
        s.sendall(rest)
        for i in range(2):
            q = dns.message.make_query("ads.example", "A")
            q.id = i
            dns.query.send_tcp(s, q)
            r, _ = dns.query.receive_tcp(s, expiration=time.time() + 3)
            assert r.id == i
    assert _counts(srv, 2).get("192.0.2.60") == 2


def test_tcp_bare_query_from_trusted_proxy_is_dropped(serve) -> None:
    srv = serve(TRUST)
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        dns.query.send_tcp(s, dns.message.make_query("example.com", "A"))
        assert s.recv(100) == b""   # closed
    with socket.create_connection((srv.host, srv.port), timeout=3,
                                  source_address=("127.0.0.2", 0)) as s:
        s.sendall(header(("192.0.2.1", 1), ("127.0.0.1", 53), "tcp"))
        assert s.recv(100) == b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(srv.stats.proxy_dropped) < 2:
        time.sleep(0.01)
    assert srv.stats.proxy_dropped == {"missing": 1, "untrusted": 1}


def test_proxied_client_is_the_device_in_metrics_and_query_log(serve, tmp_path, capsys,
                                                               monkeypatch) -> None:
    import json

    from resolver.cli import main
    srv = serve(TRUST + "clients:\n  laptop: [192.0.2.50/32]\n", lists={"ads": "ads.example\n"})
    q = dns.message.make_query("x.ads.example", "A")
    for i in range(3):   # pipeline, then the reply memo
        q.id = i
        assert _udp(srv, header(("192.0.2.50", 999), ("127.0.0.1", srv.port)) + q.to_wire())
    assert _counts(srv, 3) == {"laptop": 3}
    srv.server.querylog.flush()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["log", "--json", "-c", "config.yaml"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["device"], r["client"], r["result"]) for r in rows] == \
        [("laptop", "192.0.2.50", "blocked")] * 3

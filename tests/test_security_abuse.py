"""Abuse: who may ask (access control, safe defaults) and how fast (per-client rate limit)."""

from __future__ import annotations

import ipaddress
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from resolver import bundled
from resolver.config import DEFAULT_ALLOW, load_config, parse_endpoint
from resolver.config import RateLimit as RateLimitConfig
from resolver.lists.loader import Blocklists
from resolver.pipeline import build_pipeline
from resolver.stages.ratelimit import RateLimit
from resolver.stats import Stats
from resolver.wire import parse_query
from tests.conftest import ask


def burst(srv, source: str, n: int, name: str = "burst.test", wait: float = 0.5,
          tcp: bool = False) -> list[dns.message.Message]:
    """Send ``n`` queries at once from ``source``; return the replies that came back."""
    if tcp:
        out = []
        with socket.create_connection((srv.host, srv.port), source_address=(source, 0)) as s:
            for i in range(n):
                q = dns.message.make_query(name, "A")
                q.id = i
                dns.query.send_tcp(s, q)
            s.settimeout(wait)
            try:
                for _ in range(n):
                    out.append(dns.query.receive_tcp(s)[0])
            except (TimeoutError, EOFError):
                pass
        return out
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    try:
        for i in range(n):
            q = dns.message.make_query(name, "A")
            q.id = i
            s.sendto(q.to_wire(), (srv.host, srv.port))
        out = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                out.append(dns.message.from_wire(s.recv(4096)))
            except TimeoutError:
                break
        return out
    finally:
        s.close()


# --- access control -------------------------------------------------------------------------


def test_default_access_is_loopback_and_private_ranges_and_metrics_on_loopback():
    cfg = load_config(None, text="upstreams: [127.0.0.1]")
    nets = {str(n) for n in cfg.access_allow}
    assert nets == set(DEFAULT_ALLOW)
    for net in cfg.access_allow:
        # Loopback, RFC 1918, ULA, link-local and CGNAT/Tailscale 100.64/10: none routable.
        assert not net.network_address.is_global and not net.broadcast_address.is_global, net
    assert not any(ipaddress.ip_address("8.8.8.8") in n for n in cfg.access_allow)
    assert cfg.metrics.listen == ("127.0.0.1", 9153)
    # The embedded default config that `hushdns serve` uses without -c (read as YAML:
    # the bundled lists it names are not needed to check where it listens and whom it serves).
    embedded = yaml.safe_load(bundled.default_config_text())
    assert not any(ipaddress.ip_network(n).network_address.is_global
                   for n in embedded["access"]["allow"])
    assert ipaddress.ip_address(parse_endpoint(embedded["metrics"]["listen"])[0]).is_loopback
    assert all(ipaddress.ip_address(parse_endpoint(e)[0]).is_loopback for e in embedded["listen"])


def test_clients_outside_access_are_refused_and_get_no_error_replies(serve):
    srv = serve('access: {allow: ["127.0.0.1/32"]}\n')
    r = ask(srv, "a.test", source="127.0.0.2", edns=True)
    assert r.rcode() == dns.rcode.REFUSED
    assert [o.code for o in r.options if o.otype == 15] == [18]    # EDE: Prohibited
    # A malformed query from an outsider gets nothing (no reflection); an insider gets FORMERR.
    bad = dns.message.make_query("a.test", "A").to_wire()[:14]
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.2", 0))
    out.settimeout(0.5)
    out.sendto(bad, (srv.host, srv.port))
    with pytest.raises(TimeoutError):
        out.recv(512)
    out.close()
    r = dns.query.udp(dns.message.from_wire(dns.message.make_query("a.test", "A").to_wire()),
                      srv.host, port=srv.port, timeout=2)
    assert r.rcode() == dns.rcode.NOERROR
    assert srv.stats.queries[("127.0.0.2", "none", "dropped")] == 1
    assert srv.stats.queries[("127.0.0.2", "A", "refused")] == 1


# --- rate limit -----------------------------------------------------------------------------


def test_rate_limit_drops_excess_per_client_and_counts_it(serve, upstream):
    srv = serve("rate_limit: {qps: 5, burst: 10}\n")
    ask(srv, "burst.test")      # warm the cache from 127.0.0.1 (its own bucket)
    t0 = time.monotonic()
    got = burst(srv, "127.0.0.2", 40)
    assert 10 <= len(got) <= 12          # the burst (plus what refilled meanwhile)
    assert all(r.rcode() == dns.rcode.NOERROR for r in got)
    limited = srv.stats.limited[("127.0.0.2", "ratelimit")]
    assert limited == 40 - len(got)
    assert srv.stats.queries[("127.0.0.2", "A", "dropped")] == limited
    # Another client is not affected by its neighbour's flood.
    assert len(burst(srv, "127.0.0.3", 10)) == 10
    # Tokens come back at qps (5/s; the bucket was empty after the flood).
    time.sleep(0.2)
    refill = (time.monotonic() - t0) * 5
    assert abs(len(burst(srv, "127.0.0.2", 20)) - refill) <= 2


@pytest.mark.parametrize("action", ["refused", "tc"])
def test_rate_limit_can_answer_refused_or_truncated(serve, action):
    srv = serve(f"rate_limit: {{qps: 1, burst: 3, action: {action}}}\n")
    got = burst(srv, "127.0.0.4", 10)
    assert len(got) == 10
    ok = [r for r in got if r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.TC]
    assert len(ok) == 3
    over = [r for r in got if r not in ok]
    if action == "refused":
        assert all(r.rcode() == dns.rcode.REFUSED for r in over)
    else:
        assert all(r.flags & dns.flags.TC and not r.answer for r in over)
    assert srv.stats.limited[("127.0.0.4", "ratelimit")] == 7


def test_rate_limit_over_tcp_answers_refused_rather_than_stalling_the_stream(serve):
    srv = serve("rate_limit: {qps: 1, burst: 3}\n")
    got = burst(srv, "127.0.0.5", 6, tcp=True, wait=2.0)
    assert len(got) == 6
    assert sorted(r.rcode() for r in got) == [dns.rcode.NOERROR] * 3 + [dns.rcode.REFUSED] * 3


class _Info:
    label = "x"


def test_rate_limiter_state_is_bounded():
    stats = Stats()
    stage = RateLimit(RateLimitConfig(qps=1, burst=1), stats, max_buckets=100)
    wire = dns.message.make_query("a.test", "A").to_wire()
    for i in range(1000):
        req = parse_query(wire)
        req.client = f"10.0.{i // 256}.{i % 256}"
        req.info = _Info()
        assert stage.on_query(req) is None   # passed on
    # The newest addresses are remembered (their bucket is empty), the oldest forgotten.
    req = parse_query(wire)
    req.client, req.info = "10.0.3.231", _Info()
    assert stage.on_query(req).result == "dropped"
    assert len(stage.buckets) == 100
    assert "10.0.0.0" not in stage.buckets


def test_rate_limit_is_left_out_of_the_pipeline_when_off():
    def stages(pipeline):
        return list(map(type, pipeline.stages))

    off = load_config(None, text="upstreams: [127.0.0.1]\nblocking: {}")
    on = load_config(None, text="upstreams: [127.0.0.1]\nblocking: {}\nrate_limit: {qps: 50}")
    assert on.rate_limit.burst == 100        # burst defaults to 2 x qps
    assert RateLimit not in stages(build_pipeline(off, Blocklists(), Stats()))
    assert RateLimit in stages(build_pipeline(on, Blocklists(), Stats()))

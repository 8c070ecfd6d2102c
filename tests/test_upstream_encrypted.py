"""DoT and DoH upstreams: a real unbound behind hushdns, and fakes for every fault (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dnslib
import pytest
from prometheus_client import generate_latest

from resolver.config import ConfigError, ServerOptions, load_config
from resolver.encrypted_endpoints import parse_upstream_url
from resolver.metrics import make_registry
from resolver.stats import Stats
from resolver.upstream import Upstream, Upstreams
from resolver.upstream_tls import PAD_BLOCK, pad_query, spki_sha256
from resolver.wire import make_query, parse_query
from tests.fakes import FakeUpstream, ServerThread, write_config
from tests.tlsfakes import FakeDoh, FakeDot
from tests.tlskit import Pki, Unbound, make_pki, unbound_has_doh

needs_unbound = pytest.mark.skipif(shutil.which("unbound") is None,
                                   reason="unbound (Debian package) is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "dns.test")


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, pki: Pki):  # type: ignore[no-untyped-def]
    if shutil.which("unbound") is None:
        pytest.skip("unbound (Debian package) is not installed")
    ub = Unbound(tmp_path_factory.mktemp("unbound"), pki)
    yield ub
    ub.close()


def serve(tmp: Path, upstreams: list[str], extra: str = "") -> ServerThread:
    quoted = ", ".join(f'"{u}"' for u in upstreams)
    p = write_config(tmp, f'listen: ["127.0.0.1:0"]\nupstreams: [{quoted}]\n'
                          f"metrics: {{listen: null}}\n{extra}")
    return ServerThread(load_config(p))


def ask(st: ServerThread, name: str, timeout: float = 8) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), st.host, port=st.port, timeout=timeout)


def samples(stats: Stats) -> str:
    return generate_latest(make_registry(stats)).decode()


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# --- config ------------------------------------------------------------------------

def test_upstream_urls_parse_and_bad_ones_name_the_key(pki: Pki) -> None:
    c = load_config(text=f'upstreams: ["tls://127.0.0.1#dns.test pin-sha256={pki.pin} ca_file={pki.ca}",'
                         ' "https://dns.test/q bootstrap=127.0.0.1,::1", "127.0.0.2"]\n'
                         'forward_zones: {lan: ["tls://[::1]:8853#r.lan"]}\n')
    tls, h1, h2_, plain = c.upstreams
    assert (tls.scheme, tls[1], tls.auth_name, tls.ca_file) == ("tls", 853, "dns.test", str(pki.ca))
    assert (h1[0], h2_[0], h1.auth_name, h1.path) == ("127.0.0.1", "::1", "dns.test", "/q")
    assert plain == ("127.0.0.2", 53)
    assert c.forward_zones["lan"][0][1] == 8853
    with pytest.raises(ConfigError) as e:
        load_config(text='upstreams:\n  - "tls://127.0.0.1"\n  - "https://dns.test/dns-query"\n'
                         '  - "tls://127.0.0.1#x pin-sha256=nope"\n  - "tls://127.0.0.1#x colour=red"\n')
    msg = str(e.value)
    assert "upstreams[0]: bad upstream 'tls://127.0.0.1': needs '#auth-name'" in msg and ":2)" in msg
    assert "upstreams[1]:" in msg and "bootstrap=" in msg
    assert "upstreams[2]: bad pin-sha256" in msg and "upstreams[3]: bad option 'colour=red'" in msg


def test_padding_makes_queries_a_multiple_of_128_bytes() -> None:
    for name in ("a.test", "x" * 60 + ".example", "short"):
        req = parse_query(dnslib.DNSRecord.question(name).pack())
        padded = pad_query(make_query(req, 7, True))
        assert len(padded) % PAD_BLOCK == 0
        m = dns.message.from_wire(padded)
        assert any(o.otype == dns.edns.PADDING for o in m.options)
        assert str(m.question[0].name).rstrip(".") == name
    req = parse_query(dnslib.DNSRecord.question("a.test").pack())
    assert pad_query(make_query(req, 7, False)) == make_query(req, 7, False)   # no OPT, no padding


def test_spki_pin_matches_the_key(pki: Pki) -> None:
    import base64
    import ssl

    der = ssl.PEM_cert_to_DER_cert(pki.cert.read_text())
    assert base64.b64encode(spki_sha256(der)).decode() == pki.pin


# --- a real unbound ------------------------------------------------------------------

@needs_unbound
@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_unbound_behind_hushdns_over_dot_and_doh(tmp_path: Path, pki: Pki, unbound: Unbound,
                                                  scheme: str) -> None:
    if scheme == "https" and not unbound_has_doh():
        pytest.skip("this unbound has no DoH (built without nghttp2)")
    url = f"tls://127.0.0.1:{unbound.tls_port}#dns.test" if scheme == "tls" else \
        f"https://127.0.0.1:{unbound.https_port}/dns-query#dns.test"
    st = serve(tmp_path, [f"{url} ca_file={pki.ca} pin-sha256={pki.pin}"])
    try:
        for i in range(5):
            r = ask(st, f"n{i}.test")
            assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.1"
        up = st.server.pipeline.terminal.default[0]   # type: ignore[union-attr]
        conn = up.link.conn
        assert conn is not None and not conn.closed    # one persistent connection ...
        r = ask(st, "again.test")
        assert up.link.conn is conn                    # ... reused
        label = url
        assert st.stats.upstream_requests[(label, "ok")] == 6
        text = samples(st.stats)
        assert f'hushdns_upstream_requests_total{{outcome="ok",transport="{scheme}",upstream="{label}"}} 6.0' in text
        assert f'hushdns_upstream_up{{transport="{scheme}",upstream="{label}"}} 1.0' in text
    finally:
        st.stop()


# --- pipelining, resets, idle close -------------------------------------------------------

def _ask_direct(up: Upstream, names: list[str], opts: ServerOptions | None = None,
                stats: Stats | None = None) -> list[bytes]:
    async def go() -> list[bytes]:
        ups = Upstreams(opts or ServerOptions(), stats or Stats())
        qs = [parse_query(dnslib.DNSRecord.question(n).pack()) for n in names]
        res = await asyncio.gather(*(ups.query(q, [up]) for q in qs))
        up.close()
        return [d for d, _ in res]
    return _run(go())


def test_pipelined_queries_get_out_of_order_replies_matched_by_id(pki: Pki) -> None:
    fake = FakeDot(pki, "reverse")
    try:
        up = Upstream.of(parse_upstream_url(f"tls://127.0.0.1:{fake.port}#dns.test ca_file={pki.ca}")[0])
        first, second = _ask_direct(up, ["one.test", "two.test"])
        assert str(dnslib.DNSRecord.parse(first).q.qname) == "one.test."
        assert str(dnslib.DNSRecord.parse(second).q.qname) == "two.test."
        assert fake.connections == 1 and fake.queries == 2
    finally:
        fake.close()


def test_a_connection_reset_mid_stream_is_retried_once_on_a_new_one(pki: Pki) -> None:
    fake = FakeDot(pki, "reset")
    try:
        async def go() -> tuple[bytes, bytes]:
            ups = Upstreams(ServerOptions(), Stats())
            up = Upstream.of(parse_upstream_url(f"tls://127.0.0.1:{fake.port}#dns.test ca_file={pki.ca}")[0])
            a, _ = await ups.query(parse_query(dnslib.DNSRecord.question("a.test").pack()), [up])
            b, _ = await ups.query(parse_query(dnslib.DNSRecord.question("b.test").pack()), [up])
            up.close()
            return a, b
        a, b = _run(go())
        assert dnslib.DNSRecord.parse(b).rr and str(dnslib.DNSRecord.parse(b).q.qname) == "b.test."
        assert fake.connections == 2   # the reset one, then a fresh one for the re-sent query
    finally:
        fake.close()


def test_an_idle_connection_is_closed(pki: Pki) -> None:
    fake = FakeDot(pki, "reverse")
    try:
        async def go() -> tuple[bool, bool]:
            ups = Upstreams(ServerOptions(upstream_idle_timeout=0.2), Stats())
            up = Upstream.of(parse_upstream_url(f"tls://127.0.0.1:{fake.port}#dns.test ca_file={pki.ca}")[0])
            qs = [parse_query(dnslib.DNSRecord.question(n).pack()) for n in ("a.test", "b.test")]
            await asyncio.gather(*(ups.query(q, [up]) for q in qs))
            conn = up.link.conn
            open_after = not conn.closed
            await asyncio.sleep(0.5)
            return open_after, conn.closed and up.link.conn is None
        assert _run(go()) == (True, True)
    finally:
        fake.close()


# --- faults: no answer from that upstream, logged once, counted ----------------------------

@pytest.mark.parametrize("fault", ["wrong name", "expired", "pin mismatch"])
def test_an_untrusted_upstream_gives_no_answer_and_is_logged_once(
        tmp_path: Path, pki: Pki, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    bad_pki = make_pki(tmp_path / "bad", "other.test" if fault == "wrong name" else "dns.test",
                       expired=fault == "expired")
    fake = FakeDot(pki if fault == "pin mismatch" else bad_pki, "reverse")
    good = FakeUpstream()
    ca = pki.ca if fault == "pin mismatch" else bad_pki.ca
    other_pin = bad_pki.pin
    opts = f" pin-sha256={other_pin}" if fault == "pin mismatch" else ""
    url = f"tls://127.0.0.1:{fake.port}#dns.test ca_file={ca}{opts}"
    caplog.set_level(logging.WARNING, logger="hushdns.upstream")
    st = serve(tmp_path, [url, good.address], "cache: {max_entries: 1}\n")
    try:
        for i in range(4):
            r = ask(st, f"q{i}.example")
            assert r.rcode() == dns.rcode.NOERROR   # from the second upstream
        assert fake.queries == 0
        assert st.stats.upstream_requests[(url.split()[0], "error")] >= 1
        failed = [r for r in caplog.records if "connection failed" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in caplog.records]
        expect = {"wrong name": "Hostname mismatch", "expired": "certificate has expired",
                  "pin mismatch": "pin-sha256 mismatch"}
        assert expect[fault] in failed[0].getMessage()
    finally:
        st.stop()
        fake.close()
        good.close()


def test_only_an_untrusted_upstream_means_servfail(tmp_path: Path, pki: Pki) -> None:
    bad = make_pki(tmp_path / "bad", "other.test")
    fake = FakeDot(bad, "reverse")
    st = serve(tmp_path, [f"tls://127.0.0.1:{fake.port}#dns.test ca_file={bad.ca}"],
               "server: {upstream_timeout: 200ms, upstream_total_timeout: 1s}\n")
    try:
        assert ask(st, "x.example").rcode() == dns.rcode.SERVFAIL
    finally:
        st.stop()
        fake.close()


def test_a_server_that_never_finishes_the_handshake_times_out(tmp_path: Path, pki: Pki) -> None:
    fake = FakeDot(None, "hang")
    good = FakeUpstream()
    url = f"tls://127.0.0.1:{fake.port}#dns.test ca_file={pki.ca}"
    st = serve(tmp_path, [url, good.address],
               "server: {upstream_timeout: 200ms, upstream_total_timeout: 3s, tls_handshake_timeout: 500ms}\n")
    try:
        t0 = time.monotonic()
        assert ask(st, "a.example").rcode() == dns.rcode.NOERROR   # the second upstream, after 200 ms
        assert time.monotonic() - t0 < 2.5
        time.sleep(1.0)
        assert fake.connections >= 1
        up = st.server.pipeline.terminal.default[0]   # type: ignore[union-attr]
        assert up.link.last_error is not None and "timed out" in str(up.link.last_error)
    finally:
        st.stop()
        fake.close()
        good.close()


@pytest.mark.parametrize("mode", ["500", "ctype", "garbage"])
def test_a_doh_server_answering_no_dns_is_a_failed_attempt(tmp_path: Path, pki: Pki, mode: str) -> None:
    fake = FakeDoh(pki, mode)
    url = f"https://127.0.0.1:{fake.port}/dns-query#dns.test ca_file={pki.ca}"
    st = serve(tmp_path, [url], "server: {upstream_timeout: 300ms, upstream_total_timeout: 1s}\n")
    good = FakeUpstream()
    try:
        assert ask(st, "a.example").rcode() == dns.rcode.SERVFAIL
        assert fake.queries >= 1
        assert st.stats.upstream_requests[(url.split()[0], "error")] >= 1
    finally:
        st.stop()
    st = serve(tmp_path, [url, good.address])
    try:
        assert ask(st, "b.example").rcode() == dns.rcode.NOERROR   # the next upstream answers
    finally:
        st.stop()
        fake.close()
        good.close()


def test_the_system_store_honours_ssl_cert_file(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ca_file: trust comes from the system store, which SSL_CERT_FILE replaces (as for OpenSSL)."""
    from resolver import upstream_tls

    fake = FakeDot(pki, "reverse")
    try:
        url = f"tls://127.0.0.1:{fake.port}#dns.test"
        monkeypatch.setattr(upstream_tls, "_CONTEXTS", {})
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        first, second = _ask_direct(Upstream.of(parse_upstream_url(url)[0]), ["one.test", "two.test"])
        assert dnslib.DNSRecord.parse(first).rr and dnslib.DNSRecord.parse(second).rr
        monkeypatch.setattr(upstream_tls, "_CONTEXTS", {})
        monkeypatch.delenv("SSL_CERT_FILE")   # the real system store does not know the test CA
        stats = Stats()
        opts = ServerOptions(upstream_timeout=0.2, upstream_total_timeout=0.5)
        with pytest.raises(Exception, match="no upstream answered"):
            _ask_direct(Upstream.of(parse_upstream_url(url)[0]), ["three.test"], opts, stats)
        assert stats.upstream_requests[(url, "error")] >= 1
    finally:
        fake.close()

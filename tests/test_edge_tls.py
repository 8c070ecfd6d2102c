"""DoT and DoH listeners: kdig, dnspython and httpx as the LAN's phones and browsers (127.0.0.1 only)."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from resolver.config import ConfigError, load_config
from tests.fakes import FakeUpstream, ServerThread, write_config
from tests.tlskit import Pki, make_pki

NAME = "hushdns.lan"


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", NAME, ip="127.0.0.1")


@pytest.fixture()
def upstream():  # type: ignore[no-untyped-def]
    up = FakeUpstream()
    yield up
    up.close()


def serve(tmp: Path, pki: Pki, up: FakeUpstream, server_extra: str = "") -> tuple[ServerThread, int, int]:
    p = write_config(tmp, f"""listen: ["127.0.0.1:0", "tls://127.0.0.1:0", "https://127.0.0.1:0/dns-query"]
upstreams: ["{up.address}"]
metrics: {{listen: null}}
server: {{tls_certificate: {pki.cert}, tls_key: {pki.key}{server_extra}}}
""")
    st = ServerThread(load_config(p), reload_config=lambda: load_config(p))
    tls, https = st.server.encrypted.addresses
    assert (tls.scheme, https.scheme, https.path) == ("tls", "https", "/dns-query")
    return st, tls[1], https[1]


def ctx_for(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def test_dnspython_over_dot_and_httpx_over_doh_get_answers_counted_per_device(
        tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    st, tls_port, https_port = serve(tmp_path, pki, upstream)
    try:
        q = dns.message.make_query("dot.example", "A")
        r = dns.query.tls(q, "127.0.0.1", port=tls_port, ssl_context=ctx_for(pki), server_hostname=NAME,
                          timeout=5)
        assert r.answer[0][0].address == "192.0.2.1"
        url = f"https://127.0.0.1:{https_port}/dns-query"
        with httpx.Client(http2=True, http1=False, verify=ctx_for(pki), timeout=5) as c:
            wire = dns.message.make_query("post.example", "A").to_wire()
            resp = c.post(url, content=wire, headers={"content-type": "application/dns-message"})
            assert resp.http_version == "HTTP/2" and resp.status_code == 200
            assert resp.headers["content-type"] == "application/dns-message"
            assert dns.message.from_wire(resp.content).answer[0][0].address == "192.0.2.1"
            wire = dns.message.make_query("get.example", "AAAA").to_wire()
            resp = c.get(url, params={"dns": base64.urlsafe_b64encode(wire).rstrip(b"=").decode()})
            assert dns.message.from_wire(resp.content).answer[0][0].address == "2001:db8::1"
            assert c.get(url, params={"dns": "!!"}).status_code == 400
            assert c.post(url, content=wire, headers={"content-type": "text/plain"}).status_code == 415
            assert c.get(f"https://127.0.0.1:{https_port}/other?dns=AAAA").status_code == 404
            assert c.put(url, content=wire).status_code == 405
        q = st.stats.queries
        assert q[("127.0.0.1", "A", "forwarded")] == 2 and q[("127.0.0.1", "AAAA", "forwarded")] == 1
    finally:
        st.stop()


@pytest.mark.skipif(shutil.which("kdig") is None, reason="kdig (knot-dnsutils) is not installed")
@pytest.mark.parametrize("how", ["+tls", "+https"])
def test_kdig_over_dot_and_doh(tmp_path: Path, pki: Pki, upstream: FakeUpstream, how: str) -> None:
    st, tls_port, https_port = serve(tmp_path, pki, upstream)
    try:
        port = tls_port if how == "+tls" else https_port
        out = subprocess.run(["kdig", "@127.0.0.1", f"-p{port}", how, f"+tls-ca={pki.ca}",
                              f"+tls-hostname={NAME}", "kdig.example", "A", "+short", "+timeout=5"],
                             capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "192.0.2.1", out.stderr
    finally:
        st.stop()


def _tls_connect(port: int, pki: Pki) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), 5)
    return ctx_for(pki).wrap_socket(raw, server_hostname=NAME)


def _closed(sock: socket.socket, within: float) -> bool:
    """True once the server closes ``sock`` (what it sent first, e.g. HTTP/2 SETTINGS, is skipped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
    return False


def test_a_client_that_never_handshakes_is_dropped(tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    st, tls_port, https_port = serve(tmp_path, pki, upstream, ", tls_handshake_timeout: 300ms")
    try:
        for port in (tls_port, https_port):
            raw = socket.create_connection(("127.0.0.1", port), 5)
            t0 = time.monotonic()
            assert _closed(raw, 5)
            assert time.monotonic() - t0 < 3
            raw.close()
    finally:
        st.stop()


def test_connection_cap_and_idle_timeout_bound_tls_clients(tmp_path: Path, pki: Pki,
                                                            upstream: FakeUpstream) -> None:
    st, tls_port, https_port = serve(tmp_path, pki, upstream,
                                     ", tcp_max_connections: 2, tcp_idle_timeout: 1s")
    try:
        a, b = _tls_connect(tls_port, pki), _tls_connect(https_port, pki)
        time.sleep(0.2)
        c = _tls_connect(tls_port, pki)   # over the cap: closed once the handshake is done
        assert _closed(c, 3)
        assert st.stats.limited[("127.0.0.1", "tcp_connections")] == 1
        assert _closed(a, 4) and _closed(b, 4)   # idle past tcp_idle_timeout
        for s in (a, b, c):
            s.close()
    finally:
        st.stop()


def _served_ca_ok(port: int, pki: Pki) -> bool:
    try:
        _tls_connect(port, pki).close()
        return True
    except ssl.SSLCertVerificationError:
        return False


def test_sighup_reloads_the_certificate_and_a_bad_pair_keeps_the_old_one(
        tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    st, tls_port, _ = serve(tmp_path, pki, upstream)
    try:
        assert _served_ca_ok(tls_port, pki)
        new = make_pki(tmp_path / "new", NAME, ip="127.0.0.1")
        pki.cert.write_bytes(new.cert.read_bytes())
        pki.key.write_bytes(new.key.read_bytes())
        assert st.reload()
        assert _served_ca_ok(tls_port, new) and not _served_ca_ok(tls_port, pki)
        other = make_pki(tmp_path / "other", NAME)
        pki.key.write_bytes(other.key.read_bytes())   # the key no longer matches the certificate
        assert not st.reload()
        assert _served_ca_ok(tls_port, new)          # the old pair keeps serving
        assert st.stats.config_reload_success == 0
    finally:
        st.stop()


def test_config_requires_a_readable_matching_pair(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"server.tls_certificate: needed by listen tls://127.0.0.1:853"):
        load_config(text='listen: ["tls://127.0.0.1"]\nupstreams: ["127.0.0.2"]\n')
    other = make_pki(tmp_path / "other", NAME)
    with pytest.raises(ConfigError, match="server.tls_key: the key does not match the certificate"):
        load_config(text=f'listen: ["https://127.0.0.1/dns-query"]\nupstreams: ["127.0.0.2"]\n'
                         f'server: {{tls_certificate: {pki.cert}, tls_key: {other.key}}}\n')
    with pytest.raises(ConfigError, match="server.tls_certificate: .*no such file"):
        load_config(text=f'listen: ["tls://127.0.0.1"]\nupstreams: ["127.0.0.2"]\n'
                         f'server: {{tls_certificate: {tmp_path}/none.pem, tls_key: {pki.key}}}\n')
    c = load_config(text='listen: ["127.0.0.1:5533", "tls://[::1]:8853", "https://127.0.0.1:8443/q"]\n'
                         f'upstreams: ["127.0.0.2"]\nserver: {{tls_certificate: {pki.cert}, tls_key: {pki.key}}}\n')
    assert c.listen == (("127.0.0.1", 5533),)
    assert [u.url() for u in c.listen_encrypted] == ["tls://[::1]:8853", "https://127.0.0.1:8443/q"]


def test_check_reports_encrypted_dns_and_query_names_the_transport(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resolver.cli import main

    good = make_pki(tmp_path / "good", NAME)
    cfg = tmp_path / "c.yaml"
    body = ('listen: ["127.0.0.1:5533", "tls://127.0.0.1:8853"]\n'
            'upstreams: ["tls://192.0.2.53#dns.example", "https://doh.example/dns-query bootstrap=192.0.2.54"]\n'
            "blocking: {lists: {}}\n")
    cfg.write_text(body + f"server: {{tls_certificate: {good.cert}, tls_key: {good.key}}}\n")
    assert main(["check", "--offline", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "upstream tls://192.0.2.53#dns.example: DNS over TLS to 192.0.2.53 port 853, certificate " \
           "must name dns.example, trusted via the system trust store" in out
    assert "listen tls://127.0.0.1:8853: DNS over TLS" in out and f"names {NAME}" in out
    assert main(["query", "x.example", "-c", str(cfg)]) == 0
    assert "forwarded to tls://192.0.2.53#dns.example (DNS over TLS), " \
           "https://doh.example/dns-query@192.0.2.54 (DNS over HTTPS)" in capsys.readouterr().out
    old = make_pki(tmp_path / "old", NAME, expired=True)
    cfg.write_text(body + f"server: {{tls_certificate: {old.cert}, tls_key: {old.key}}}\n")
    assert main(["check", "--offline", "-c", str(cfg)]) == 1
    assert "check FAILED: the TLS certificate has expired" in capsys.readouterr().out


def test_doh_over_http1_for_clients_without_h2(tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    st, _, https_port = serve(tmp_path, pki, upstream)
    try:
        url = f"https://127.0.0.1:{https_port}/dns-query"
        with httpx.Client(http2=False, verify=ctx_for(pki), timeout=5) as c:
            wire = dns.message.make_query("h1.example", "A").to_wire()
            for _ in range(2):   # kept alive: the second request on the same connection
                resp = c.post(url, content=wire, headers={"content-type": "application/dns-message"})
                assert resp.http_version == "HTTP/1.1" and resp.status_code == 200
                assert dns.message.from_wire(resp.content).answer[0][0].address == "192.0.2.1"
            resp = c.get(url, params={"dns": base64.urlsafe_b64encode(wire).rstrip(b"=").decode()})
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/dns-message"
            assert c.get(f"https://127.0.0.1:{https_port}/nope").status_code == 404
        raw = _tls_connect(https_port, pki)   # no ALPN offered: HTTP/1.1
        raw.sendall(b"GARBAGE\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ") and _closed(raw, 3)
        raw.close()
    finally:
        st.stop()


def test_client_connections_are_counted_per_transport(tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    from prometheus_client import generate_latest

    from resolver.metrics import make_registry

    st, tls_port, https_port = serve(tmp_path, pki, upstream)
    try:
        for port in (tls_port, tls_port, https_port):
            s = _tls_connect(port, pki)
            s.close()
        deadline = time.monotonic() + 5
        while sum(st.stats.connections.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        text = generate_latest(make_registry(st.stats)).decode()
        assert 'hushdns_client_connections_total{proto="tls"} 2.0' in text
        assert 'hushdns_client_connections_total{proto="https"} 1.0' in text
    finally:
        st.stop()


def test_a_doh_client_dribbling_a_request_is_closed(tmp_path: Path, pki: Pki, upstream: FakeUpstream) -> None:
    st, _, https_port = serve(tmp_path, pki, upstream, ", tcp_idle_timeout: 1s")
    try:
        s = _tls_connect(https_port, pki)   # HTTP/1.1 (no ALPN): a head sent a byte at a time
        t0 = time.monotonic()
        closed = False
        for b in b"POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n":
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 4:
                break
        assert closed or _closed(s, 2)
        assert time.monotonic() - t0 < 5
        s.close()
    finally:
        st.stop()

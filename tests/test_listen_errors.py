"""Bind failures: the default port, messages naming address/port/protocol, metrics never fatal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from resolver.config import load_config
from tests.fakes import FakeUpstream, free_port

ROOT = Path(__file__).resolve().parents[1]


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "resolver", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "STATE_DIRECTORY": "/tmp/hushdns-test-state"})


def test_default_port_is_not_mdns_nor_any_registered_service() -> None:
    """5353 is mDNS (Avahi holds it on most desktops); the default must be a port no
    service in /etc/services claims."""
    port = load_config(None).listen[0][1]
    assert port not in (53, 5353, 5355, 5335) and 1024 < port < 32768
    services = Path("/etc/services")
    if services.exists():
        claimed = {line.split()[1].split("/")[0] for line in services.read_text().splitlines()
                   if line.strip() and not line.startswith("#") and len(line.split()) > 1}
        assert str(port) not in claimed


def _held(proto: int) -> tuple[socket.socket, int]:
    port = free_port()
    s = socket.socket(socket.AF_INET, proto)
    s.bind(("127.0.0.1", port))
    if proto == socket.SOCK_STREAM:
        s.listen(1)
    return s, port


def test_busy_udp_port_names_address_port_protocol_without_traceback() -> None:
    holder, port = _held(socket.SOCK_DGRAM)
    try:
        proc = _serve("--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", "--metrics", "off")
        out, _ = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 1, out
    assert (f"cannot listen on 127.0.0.1:{port}/udp: address in use — another program holds it; "
            "use --listen") in out
    assert "Traceback" not in out


def test_busy_tcp_port_names_tcp() -> None:
    holder, port = _held(socket.SOCK_STREAM)
    try:
        proc = _serve("--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", "--metrics", "off")
        out, _ = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}/tcp: address in use" in out
    assert "Traceback" not in out


def test_busy_metrics_port_logs_an_error_and_dns_keeps_serving() -> None:
    holder, mport = _held(socket.SOCK_STREAM)
    up = FakeUpstream()
    port = free_port()
    proc = _serve("--listen", f"127.0.0.1:{port}", "--upstream", up.address,
                  "--metrics", f"127.0.0.1:{mport}")
    try:
        q = dns.message.make_query("example.org", "A")
        for _ in range(150):
            try:
                r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.3)
                break
            except (dns.exception.Timeout, ConnectionRefusedError):
                assert proc.poll() is None, proc.stdout.read()   # type: ignore[union-attr]
                time.sleep(0.1)
        else:
            raise AssertionError("server did not answer")
        assert r.rcode() == dns.rcode.NOERROR
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        up.close()
        holder.close()
    assert f"cannot listen on 127.0.0.1:{mport}/tcp: address in use" in out
    assert "ERROR" in out and "DNS keeps serving" in out

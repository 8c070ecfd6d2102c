"""Smaller faults: a SIGHUP during start-up, a slow upstream's late answers, and running out
of file descriptors.  Each must be reported as what it is, and none may kill the process."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dnslib
import pytest

from resolver import fd_exhaustion
from resolver import upstream as upstream_mod
from resolver.config import ServerOptions
from resolver.stats import Stats
from resolver.upstream import Upstream, UpstreamFailure, Upstreams, close_idle_sockets
from resolver.wire import parse_query
from tests.fakes import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def question(name: str) -> object:
    return parse_query(dnslib.DNSRecord.question(name).pack())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    close_idle_sockets(lp)
    lp.close()


def _catches_sighup(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_sighup_during_startup_is_queued_not_fatal(tmp_path: Path) -> None:
    up = FakeUpstream()
    # Big enough that loading it takes a while: the SIGHUP lands mid start-up.
    (tmp_path / "big.txt").write_text("".join(f"h{i}.tracker{i % 97}.example\n" for i in range(600_000)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:0"]\nupstreams: ["{up.address}"]\nmetrics: {{listen: null}}\n'
                   "blocking:\n  lists:\n    big: big.txt\n")
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while not _catches_sighup(proc.pid) and time.monotonic() - t0 < 1.5:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.stdout is not None
        lines, port = [], None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
            if "reloaded:" in line:
                break
        assert proc.poll() is None, "".join(lines)
        assert port is not None and any("reloaded:" in ln for ln in lines), "".join(lines)
        r = dns.query.udp(dns.message.make_query("h5.tracker5.example", "A"), "127.0.0.1",
                          port=port, timeout=3)
        assert r.rcode() == dns.rcode.NXDOMAIN
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
        up.close()


def test_late_answer_on_a_reused_port_is_late_not_spoofed(loop, monkeypatch) -> None:
    """The late reply reaches a new socket that drew the abandoned one's port."""
    up_srv = FakeUpstream(delay=0.6)
    up = Upstream("127.0.0.1", up_srv.port)
    stats = Stats()
    try:
        async def run() -> None:
            quick = Upstreams(ServerOptions(upstream_timeout=0.25, upstream_total_timeout=0.3), stats)
            with pytest.raises(UpstreamFailure):
                await quick.query(question("slow.late.test"), [up])
            ports = [s.addr[1] for s in up_srv.queries("udp")]
            assert ports
            make = upstream_mod._new_socket

            def on_old_port(family: int):
                sock = make(family)
                if ports:
                    sock.bind(("127.0.0.1", ports.pop(0)))
                return sock

            monkeypatch.setattr(upstream_mod, "_new_socket", on_old_port)
            patient = Upstreams(ServerOptions(upstream_timeout=2.0, upstream_total_timeout=2.0), stats)
            await patient.query(question("next.late.test"), [up])

        loop.run_until_complete(run())
    finally:
        up_srv.close()
    counts = stats.upstream_requests
    assert counts.get((up.label, "late"), 0) >= 1, counts
    assert counts.get((up.label, "spoof_rejected"), 0) == 0, counts


def test_a_real_forgery_is_still_spoof_rejected(loop) -> None:
    up_srv = FakeUpstream(before=[lambda q: bytes([q[0] ^ 0xFF, q[1]]) + b"\x81\x80" + q[4:]])
    up = Upstream("127.0.0.1", up_srv.port)
    stats = Stats()
    try:
        loop.run_until_complete(Upstreams(ServerOptions(), stats).query(question("f.late.test"), [up]))
    finally:
        up_srv.close()
    assert stats.upstream_requests.get((up.label, "spoof_rejected"), 0) == 1


def test_out_of_descriptors_is_its_own_reason_and_logged_once(loop, monkeypatch, caplog) -> None:
    up_srv = FakeUpstream()
    up = Upstream("127.0.0.1", up_srv.port)
    stats = Stats()
    monkeypatch.setattr(fd_exhaustion, "_logged", False)

    def no_fds(family: int):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(upstream_mod, "_new_socket", no_fds)
    ups = Upstreams(ServerOptions(upstream_timeout=0.1, upstream_total_timeout=0.3), stats)
    caplog.set_level(logging.ERROR, logger="hushdns")
    try:
        for i in range(3):
            with pytest.raises(UpstreamFailure):
                loop.run_until_complete(ups.query(question(f"n{i}.fd.test"), [up]))
    finally:
        up_srv.close()
    assert stats.upstream_requests.get((up.label, "error"), 0) == 0, stats.upstream_requests
    assert sum(n for (_, reason), n in stats.limited.items() if reason == "fds") >= 3
    assert not up.down and up.failures == 0
    assert sum("out of file descriptors" in r.getMessage() for r in caplog.records) == 1

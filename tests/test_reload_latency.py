"""Reloads must not starve DNS: a SIGHUP storm is coalesced, and a ~1M-domain list is rebuilt
while cache hits keep being answered within milliseconds (the server runs as its own process,
so the test's client does not share its interpreter)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode

from resolver.config import load_config
from resolver.lifecycle import Coalesced
from resolver.lists import loader, offload
from tests.fakes import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def test_coalesced_runs_at_most_one_more_after_the_running_one() -> None:
    runs = 0

    async def slow() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return runs

    async def storm() -> list[int]:
        c = Coalesced(slow)
        futs = [c.request() for _ in range(200)]
        await asyncio.sleep(0.01)
        futs += [c.request() for _ in range(200)]
        return list(await asyncio.gather(*futs))

    results = asyncio.run(storm())
    assert runs == 2
    assert set(results) == {1, 2}


def _write_lists(tmp: Path) -> None:
    (tmp / "a.txt").write_text("".join(f"h{i}.a.example\n" for i in range(3000)) + "shared.example\n"
                               "/^ads[0-9]+\\./\n")
    (tmp / "b.txt").write_text("".join(f"h{i}.a.example\n" for i in range(1500, 4000))
                               + "shared.example\nonly-b.example\n")
    (tmp / "allow.txt").write_text("h7.a.example\n")
    (tmp / "c.yaml").write_text("blocking:\n  lists:\n    a: a.txt\n    b: b.txt\n"
                                "  allow:\n    ok: allow.txt\nmetrics: {listen: null}\n")


def test_child_build_matches_the_thread_build(tmp_path: Path, monkeypatch) -> None:
    _write_lists(tmp_path)
    config = load_config(tmp_path / "c.yaml")
    first = loader.load_all(config)
    (tmp_path / "b.txt").write_text("<html>not a list</html>\n" * 10)   # b fails: carried over
    monkeypatch.setattr(offload, "OFFLOAD_BYTES", 0)
    child = asyncio.run(offload.build(config, first, None))
    thread = loader.load_all(config, first)
    assert child.lists["b"].error and thread.lists["b"].error
    for snap in (child, thread):
        assert snap.lists["a"].entries == 3002 and snap.lists["b"].entries == 2502
    a, b, ok = (child.lists[n].bit for n in ("a", "b", "ok"))
    assert child.index.names == thread.index.names
    for name in ["h1.a.example", "h2000.a.example", "x.h3999.a.example", "shared.example",
                 "only-b.example", "h7.a.example", "ads12.x.example", "none.example"]:
        for block, allow in ((a, 0), (b, 0), (a | b, ok), (b, ok)):
            assert child.index.match(name, block, allow) == thread.index.match(name, block, allow), \
                (name, block, allow)
            assert child.index.mask_of(name) == thread.index.mask_of(name)


def _udp_ask(sock: socket.socket, port: int, wire: bytes) -> float:
    t0 = time.perf_counter()
    sock.sendto(wire, ("127.0.0.1", port))
    sock.recv(4096)
    return time.perf_counter() - t0


def test_cache_hits_stay_fast_while_a_million_domain_list_reloads(tmp_path: Path) -> None:
    up = FakeUpstream()
    big = tmp_path / "big.txt"
    with big.open("w") as f:
        for start in range(0, 1_000_000, 100_000):
            f.write("".join(f"h{i}.t{i % 211}.example\n" for i in range(start, start + 100_000)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:0"]\nupstreams: ["{up.address}"]\nmetrics: {{listen: null}}\n'
                   f'state_dir: "{tmp_path / "state"}"\nblocking:\n  lists:\n    big: big.txt\n')
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reloaded = threading.Event()
    port_box: list[int] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if m:
                port_box.append(int(m.group(1)))
            if "reloaded:" in line:
                reloaded.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not port_box:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        port = port_box[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        q = dns.message.make_query("cached.example", "A")
        q.id = 7
        wire = q.to_wire()
        _udp_ask(sock, port, wire)          # forwarded once, then cached
        for _ in range(200):                 # warm
            _udp_ask(sock, port, wire)
        big.write_text(big.read_text() + "one-more.example\n")
        for _ in range(50):                  # a storm: coalesced into at most two reloads
            os.kill(proc.pid, signal.SIGHUP)
        during: list[float] = []
        t_end = time.monotonic() + 40
        while not reloaded.is_set() and time.monotonic() < t_end:
            during.append(_udp_ask(sock, port, wire))
            time.sleep(0.001)
        assert reloaded.is_set(), "".join(lines)
        assert len(during) > 100
        during.sort()
        p99 = during[int(len(during) * 0.99)]
        assert p99 < 0.010, f"p99 {p99 * 1000:.1f} ms over {len(during)} queries; max {during[-1]:.3f}"
        time.sleep(1.5)
        answer = dns.message.from_wire(_send(sock, port, "x.one-more.example"))
        assert answer.rcode() == dns.rcode.NXDOMAIN
        assert sum("reloaded:" in ln for ln in lines) <= 2, "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        up.close()


def _send(sock: socket.socket, port: int, name: str) -> bytes:
    sock.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
    return sock.recv(4096)

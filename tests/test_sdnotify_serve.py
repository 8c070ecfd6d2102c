"""`hushdns serve` as systemd runs it: a subprocess with NOTIFY_SOCKET pointing at the test.

Checks the promises Type=notify relies on: READY=1 only once DNS answers,
RELOADING=1 then READY=1 around a SIGHUP reload (after which the new lists are
live), STOPPING=1 on SIGTERM and a clean exit 0, WATCHDOG=1 pings, and every
message sent by the main PID (NotifyAccess=main).  The "sandboxed" variant runs
the same under the seccomp rules of MemoryDenyWriteExecute= and
RestrictAddressFamilies= (tests/sandbox_exec.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = Path(__file__).with_name("sandbox_exec.py")


class Systemd:
    """The receiving end of NOTIFY_SOCKET: messages with the sender's PID."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.path = path
        self.watchdog_pings = 0

    def next(self, timeout: float = 20) -> tuple[dict[str, str], int]:
        """The next state message (WATCHDOG=1 pings are counted and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no sd_notify message")
            self.sock.settimeout(remaining)
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("=iII", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            if fields == {"WATCHDOG": "1"}:
                self.watchdog_pings += 1
                continue
            return fields, pid

    def close(self) -> None:
        self.sock.close()


def query(port: int, name: str) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3)


def dead_port() -> int:
    """A loopback UDP port nobody listens on: the upstream that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["plain", "sandboxed"])
def wrapper(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "plain":
        return []
    probe = subprocess.run([sys.executable, str(SANDBOX), "true"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot run the seccomp stand-in here: {probe.stderr.strip()}")
    return [sys.executable, str(SANDBOX)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, Systemd]]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "vendor.txt").write_text("tracker.example\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        'listen: ["127.0.0.1:0"]\n'
        f'upstreams: ["127.0.0.1:{dead_port()}"]\n'
        f'state_dir: "{tmp_path / "state"}"\n'
        "blocking:\n"
        "  mode: nxdomain\n"
        "  lists:\n"
        "    vendor: lists/vendor.txt\n"
        "metrics: {listen: null}\n"
    )
    systemd = Systemd(tmp_path / "notify.sock")
    try:
        yield config, lists / "vendor.txt", systemd
    finally:
        systemd.close()


def test_serve_lifecycle_reaches_systemd(
    setup: tuple[Path, Path, Systemd], wrapper: list[str]
) -> None:
    config, vendor_list, systemd = setup
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(systemd.path),
        "WATCHDOG_USEC": "400000",   # pings every 0.2 s
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "resolver", "serve", "-c", str(config)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        fields, pid = systemd.next()
        assert fields.get("READY") == "1", fields
        assert pid == proc.pid
        # STATUS names the bound address: the port the kernel picked for port 0.
        m = re.search(r"127\.0\.0\.1:(\d+)", fields.get("STATUS", ""))
        assert m, fields
        port = int(m.group(1))
        # READY=1 means answering: no retry, no wait.
        assert query(port, "tracker.example").rcode() == dns.rcode.NXDOMAIN

        # A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 once the new list is live.
        vendor_list.write_text("tracker.example\nnew-tracker.example\n")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        fields, pid = systemd.next()
        assert fields.get("RELOADING") == "1", fields
        assert pid == proc.pid
        assert before <= int(fields["MONOTONIC_USEC"]) <= before + 20_000_000
        fields, pid = systemd.next()
        assert fields.get("READY") == "1", fields
        assert "FAILED" not in fields.get("STATUS", "")
        assert query(port, "new-tracker.example").rcode() == dns.rcode.NXDOMAIN

        # A reload that fails still ends with READY=1 (the old config keeps serving).
        good = config.read_text()
        config.write_text(good + "no_such_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        assert systemd.next()[0].get("RELOADING") == "1"
        fields, _ = systemd.next()
        assert fields.get("READY") == "1", fields
        assert "FAILED" in fields.get("STATUS", ""), fields
        assert query(port, "new-tracker.example").rcode() == dns.rcode.NXDOMAIN
        config.write_text(good)

        assert systemd.watchdog_pings >= 1

        proc.send_signal(signal.SIGTERM)
        fields, pid = systemd.next()
        assert fields == {"STOPPING": "1"}
        assert pid == proc.pid
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_without_notify_socket_still_runs(setup: tuple[Path, Path, Systemd]) -> None:
    """No NOTIFY_SOCKET (not under systemd): serving is unaffected and nothing is sent."""
    config, _vendor, systemd = setup
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resolver", "serve", "-c", str(config), "--log-level", "info"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port, "server never logged its address"
        assert query(port, "tracker.example").rcode() == dns.rcode.NXDOMAIN
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == 0
        with pytest.raises(TimeoutError):
            systemd.next(timeout=0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_hostile_config_at_reload_still_ends_with_ready(setup: tuple[Path, Path, Systemd]) -> None:
    """An alias bomb (not a ConfigError before issue 21) is refused; READY=1 follows RELOADING=1."""
    config, _vendor, systemd = setup
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "PYTHONPATH": str(ROOT)}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(config)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        fields, _ = systemd.next()
        assert fields.get("READY") == "1", fields
        port = int(re.search(r"127\.0\.0\.1:(\d+)", fields["STATUS"]).group(1))  # type: ignore[union-attr]
        good = config.read_text()
        bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10))
        config.write_text(good + bomb)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        assert systemd.next()[0].get("RELOADING") == "1"
        fields, _ = systemd.next(timeout=10)
        assert fields.get("READY") == "1" and "FAILED" in fields.get("STATUS", ""), fields
        assert time.monotonic() - t0 < 5
        assert query(port, "tracker.example").rcode() == dns.rcode.NXDOMAIN
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in out, out
        assert "expands to more than" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

"""resolver.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resolver.sdnotify import Notifier, monotonic_usec, parse_address, watchdog_interval


class FakeSystemd:
    """Listens where NOTIFY_SOCKET points and reads what a service sends, with its PID."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(5)

    def recv(self) -> tuple[list[str], int]:
        """One datagram as its KEY=VALUE lines, and the sender's PID (SCM_CREDENTIALS)."""
        data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("=iII", payload[:12])[0]
        return data.decode().split("\n"), pid

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5)
        return True


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        env_value = path
    else:
        name = f"hushdns-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    try:
        yield FakeSystemd(sock, env_value)
    finally:
        sock.close()


def notifier_for(fake: FakeSystemd, **extra: str) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": fake.env_value, **extra})


def test_unset_socket_is_a_silent_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_address_forms() -> None:
    assert parse_address("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_address("@abstract") == "\0abstract"
    assert parse_address("@") is None
    assert parse_address("") is None
    assert parse_address(None) is None
    assert parse_address("vsock:2:1234") is None


def test_state_messages_arrive_from_this_pid(fake_systemd: FakeSystemd) -> None:
    n = notifier_for(fake_systemd)
    assert n.enabled
    assert n.ready()
    assert fake_systemd.recv() == (["READY=1"], os.getpid())
    assert n.stopping()
    assert fake_systemd.recv() == (["STOPPING=1"], os.getpid())
    assert n.watchdog()
    assert fake_systemd.recv() == (["WATCHDOG=1"], os.getpid())
    assert n.ready(status="serving 3 lists")
    assert fake_systemd.recv()[0] == ["READY=1", "STATUS=serving 3 lists"]
    assert n.extend_timeout(2.5)
    assert fake_systemd.recv()[0] == ["EXTEND_TIMEOUT_USEC=2500000"]
    n.close()


def test_reloading_carries_monotonic_usec(fake_systemd: FakeSystemd) -> None:
    n = notifier_for(fake_systemd)
    before = monotonic_usec()
    assert n.reloading()
    after = monotonic_usec()
    fields, _pid = fake_systemd.recv()
    assert fields[0] == "RELOADING=1"
    key, value = fields[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    # Same clock systemd reads: CLOCK_MONOTONIC, in microseconds.
    assert abs(int(value) - time.monotonic_ns() // 1000) < 5_000_000


def test_status_newlines_cannot_inject_fields(fake_systemd: FakeSystemd) -> None:
    n = notifier_for(fake_systemd)
    assert n.status("list xiaomi failed\nREADY=1")
    assert fake_systemd.recv()[0] == ["STATUS=list xiaomi failed READY=1"]


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="hushdns.sdnotify"):
        assert n.ready() is False
    assert any("READY=1" in r.getMessage() for r in caplog.records)


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 30.0
    # Meant for another process (we inherited the environment): do not ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}) is None


def test_watchdog_loop_pings_at_half_the_timeout(fake_systemd: FakeSystemd) -> None:
    n = notifier_for(fake_systemd, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_interval() == 0.2

    async def run() -> None:
        task = asyncio.create_task(n.watchdog_loop())
        await asyncio.sleep(0.55)  # pings at 0, 0.1, ... 0.5: six, fewer on a slow machine
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    pings = 0
    while fake_systemd.pending():
        assert fake_systemd.recv()[0] == ["WATCHDOG=1"]
        pings += 1
    assert 3 <= pings <= 6


def test_watchdog_loop_returns_when_off(fake_systemd: FakeSystemd) -> None:
    n = notifier_for(fake_systemd)
    asyncio.run(asyncio.wait_for(n.watchdog_loop(), 1))
    assert not fake_systemd.pending()

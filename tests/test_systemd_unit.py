"""The unit files in systemd/: systemd's own checks, and the sandbox the Python stack must survive.

`systemd-analyze verify` and `security --offline=yes` judge the files as
written (Debian package ``systemd``; `--offline` needs systemd >= 250).  The
sandbox test runs the real Python runtime under the seccomp rules of
MemoryDenyWriteExecute= and RestrictAddressFamilies=, the two settings most
likely to break a Python program at run time and that the analyzers cannot see.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
UNITS = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [p for p in UNITS if p.suffix == ".service"]
INSTALLED_HUSHDNS = "/opt/hushdns/bin/hushdns"
MAX_EXPOSURE = 2.0
SANDBOX = Path(__file__).with_name("sandbox_exec.py")

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')"
)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "--no-pager", *args], capture_output=True, text=True, timeout=60
    )


def _has_offline() -> bool:
    if ANALYZE is None:
        return False
    return "--offline" in _analyze("--help").stdout


def parse_unit(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit as key -> values (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_service_unit_has_what_the_docs_promise() -> None:
    unit = parse_unit(UNIT_DIR / "hushdns.service")
    assert unit["Type"] == ["notify"]
    assert unit["ExecStartPre"] == [f"{INSTALLED_HUSHDNS} check --offline -c /etc/hushdns/config.yaml"]
    assert unit["ExecStart"] == [f"{INSTALLED_HUSHDNS} serve -c /etc/hushdns/config.yaml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["StateDirectory"] == ["hushdns"]
    assert unit["ConfigurationDirectory"] == ["hushdns"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    # PrivateUsers= would move the capability into a user namespace that does
    # not own the host's network namespace: binding port 53 would fail.
    assert "PrivateUsers" not in unit
    # ProcSubset=pid hides /proc/stat and with it every process_* metric.
    assert "ProcSubset" not in unit


@needs_analyze
def test_units_verify(tmp_path: Path) -> None:
    # verify insists that every Exec*= binary exists; the units point at the
    # install location, so check copies that point at a stand-in executable.
    fake = tmp_path / "bin" / "hushdns"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_HUSHDNS, str(fake)))
        copies.append(str(copy))
    result = _analyze("verify", "--man=no", *copies)
    # verify exits 0 on unknown keys and unparsable values; it only warns.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(tmp_path) in line or "hushdns" in line
    ]
    assert result.returncode == 0, result.stderr
    assert ours == [], "\n".join(ours)


@needs_analyze
@pytest.mark.skipif(
    not _has_offline(), reason="systemd-analyze has no --offline (needs systemd >= 250)"
)
@pytest.mark.parametrize("unit", SERVICES, ids=[p.name for p in SERVICES])
def test_exposure_is_ok(unit: Path) -> None:
    result = _analyze("security", "--offline=yes", str(unit))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if unit.name in line]
    assert warnings == [], "\n".join(warnings)
    match = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+) (\w+)", result.stdout
    )
    assert match, result.stdout
    exposure, rating = float(match.group(1)), match.group(2)
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert rating == "OK"
    # systemd's own gate agrees (threshold is on the 0..100 scale).
    gate = _analyze("security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
                    str(unit))
    assert gate.returncode == 0, gate.stdout


# What the service's Python stack does at run time, checked under the sandbox.
RUNTIME_PROBE = r"""
import asyncio, errno, mmap, socket
# The filter is really there: W+X memory and a netlink socket are refused.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("W+X mmap was allowed: sandbox not active")
except PermissionError:
    pass
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    raise SystemExit("AF_NETLINK was allowed: sandbox not active")
except OSError as e:
    assert e.errno == errno.EAFNOSUPPORT, e

import dnslib, yaml, prometheus_client, uvloop
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector
import resolver, resolver.sdnotify, resolver.stats
assert yaml.CSafeLoader.__module__ == "yaml.cyaml"   # libyaml C extension loaded
names = {m.name for m in ProcessCollector(registry=CollectorRegistry()).collect()}
assert "process_resident_memory_bytes" in names, names

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(data, addr)

async def main():
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = server.get_extra_info("sockname")[1]
    got = loop.create_future()
    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr): got.set_result(data)
    client, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    client.sendto(b"ping")
    assert await asyncio.wait_for(got, 5) == b"ping"
    tcp = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    tcp.close()

uvloop.run(main())
print("sandboxed runtime ok")
"""


def test_python_stack_runs_under_mdwe_and_address_family_filter() -> None:
    # Unknown machine (only x86_64/aarch64 syscall numbers are known) or a
    # container that forbids seccomp: say so instead of failing.
    probe = subprocess.run(
        [sys.executable, str(SANDBOX), "true"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot run the seccomp stand-in here: {probe.stderr.strip()}")
    result = subprocess.run(
        [sys.executable, str(SANDBOX), sys.executable, "-c", RUNTIME_PROBE],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "sandboxed runtime ok" in result.stdout

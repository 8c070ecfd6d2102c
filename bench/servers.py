"""Start, probe, measure and stop the servers under test (and the nsd upstream).

Why each server gets a generated config in a temp dir and runs in the foreground:
the benchmark must not depend on (or disturb) anything installed system-wide, and
a foreground child is one PID whose RSS we can read and which dies with the run.
All sockets are on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data import ZONE

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (servers bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def dns_query(name: str, qtype: int = 1) -> tuple[int, bytes]:
    """A minimal RD query; returns (id, wire)."""
    qid = secrets.randbelow(65536)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return qid, struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def probe(port: int, name: str = f"probe.{ZONE}", timeout: float = 0.2) -> int | None:
    """Ask `name` once; return the RCODE of the reply, or None if nothing came back."""
    qid, wire = dns_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(wire)
        try:
            while True:
                data = s.recv(4096)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    return data[3] & 0x0F
        except (TimeoutError, ConnectionRefusedError):
            return None


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` plus its children (a multi-worker server is one server)."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for k in kids:
                out.append(int(k))
                out.extend(_children(int(k)))
    return out


def machine_cpu_ticks() -> list[int] | None:
    """The machine's CPU time by kind (user, nice, system, idle, iowait, irq, softirq, steal),
    in ticks since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of all CPU time between two ``machine_cpu_ticks`` that the hypervisor gave to
    other guests (steal): this VM's vCPUs were runnable but not running."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d)
    return d[7] / total if total > 0 else None


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of `pid` and its children, from /proc (for CPU-per-query)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Proc:
    """One server process: how it was started and how to reach it."""

    name: str
    port: int
    argv: list[str]
    workdir: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    ready_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 60.0, probe_name: str = f"probe.{ZONE}") -> Proc:
        """Spawn and wait until it answers a query; ready_seconds is spawn -> first answer."""
        t0 = time.monotonic()
        logf = self.log.open("wb")
        self.popen = subprocess.Popen(
            self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.cwd,
            env=self.env, start_new_session=True,
        )
        logf.close()
        while time.monotonic() - t0 < timeout:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            if probe(self.port, probe_name) is not None:
                self.ready_seconds = time.monotonic() - t0
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: only this process (and its own children)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def require(*programs: str) -> list[str]:
    """Names of the `programs` not on PATH (empty when all are there)."""
    return [p for p in programs if shutil.which(p) is None]


def nsd(workdir: Path, zonefile: Path) -> Proc:
    """nsd as the local authoritative upstream: one server process, no chroot, no db."""
    d = workdir / "nsd"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = d / "nsd.conf"
    conf.write_text(
        "server:\n"
        f"  ip-address: 127.0.0.1@{port}\n"
        f"  port: {port}\n"
        '  username: ""\n'
        '  chroot: ""\n'
        f'  zonesdir: "{zonefile.parent}"\n'
        '  database: ""\n'
        f'  pidfile: "{d}/nsd.pid"\n'
        f'  xfrdfile: "{d}/xfrd.state"\n'
        f'  zonelistfile: "{d}/zone.list"\n'
        "  server-count: 1\n"
        "  verbosity: 0\n"
        # Response rate limiting is on by default (200 qps per source and wildcard) and
        # would make the resolvers under test look slow on cache misses: off.
        "  rrl-ratelimit: 0\n"
        "  rrl-whitelist-ratelimit: 0\n"
        "remote-control:\n"
        "  control-enable: no\n"
        "zone:\n"
        f"  name: {ZONE}.\n"
        f"  zonefile: {zonefile.name}\n"
    )
    subprocess.run(["nsd-checkconf", str(conf)], check=True)
    return Proc("nsd", port, ["nsd", "-d", "-c", str(conf)], workdir)


def unbound(workdir: Path, upstream_port: int, blocked: list[str], cache_entries: int) -> Proc:
    """unbound, one thread, forwarding the zone to nsd, the list as always_nxdomain zones.

    module-config "iterator" (no validator) and domain-insecure: hushdns does no DNSSEC
    validation either.  `test.` is one of unbound's default local zones (RFC 6761), so it
    is switched off with nodefault or every bench.test query would be answered locally.
    """
    d = workdir / "unbound"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    inc = d / "blocklist.conf"
    inc.write_text("".join(f'local-zone: "{n}." always_nxdomain\n' for n in blocked))
    # A message-cache entry plus its rrsets is well under 1 KiB for these answers.
    cache_mb = max(4, cache_entries // 1024)
    conf = d / "unbound.conf"
    conf.write_text(
        "server:\n"
        "  interface: 127.0.0.1\n"
        f"  port: {port}\n"
        "  do-ip6: no\n"
        "  num-threads: 1\n"
        "  do-daemonize: no\n"
        '  username: ""\n'
        '  chroot: ""\n'
        f'  directory: "{d}"\n'
        f'  pidfile: "{d}/unbound.pid"\n'
        "  use-syslog: no\n"
        '  logfile: ""\n'
        "  verbosity: 0\n"
        '  module-config: "iterator"\n'
        "  do-not-query-localhost: no\n"
        f'  domain-insecure: "{ZONE}."\n'
        '  local-zone: "test." nodefault\n'
        "  access-control: 127.0.0.0/8 allow\n"
        f"  msg-cache-size: {cache_mb}m\n"
        f"  rrset-cache-size: {cache_mb * 2}m\n"
        "  prefetch: no\n"
        f'  include: "{inc}"\n'
        "remote-control:\n"
        "  control-enable: no\n"
        "forward-zone:\n"
        f'  name: "{ZONE}."\n'
        f"  forward-addr: 127.0.0.1@{upstream_port}\n"
    )
    subprocess.run(["unbound-checkconf", str(conf)], check=True, capture_output=True)
    return Proc("unbound", port, ["unbound", "-d", "-c", str(conf)], workdir,
                extra={"config": conf})


def dnsmasq(workdir: Path, upstream_port: int, blocked: list[str], cache_entries: int) -> Proc:
    """dnsmasq forwarding the zone to nsd; each listed name as `address=/name/` (NXDOMAIN).

    `address=/name/` with no address is dnsmasq's documented NXDOMAIN-for-the-domain-and-
    all-subdomains form, the same semantics as hushdns' nxdomain mode and unbound's
    always_nxdomain.  dnsmasq caps its cache at 10000 names, which the 1k-name hit set fits.
    """
    d = workdir / "dnsmasq"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = d / "dnsmasq.conf"
    conf.write_text(
        f"port={port}\n"
        "listen-address=127.0.0.1\n"
        "bind-interfaces\n"
        "no-resolv\n"
        "no-hosts\n"
        "no-poll\n"
        "user=root\n"
        "log-facility=-\n"
        f"cache-size={min(cache_entries, 10000)}\n"
        "dns-forward-max=1024\n"
        f"server=/{ZONE}/127.0.0.1#{upstream_port}\n"
        + "".join(f"address=/{n}/\n" for n in blocked)
    )
    return Proc("dnsmasq", port, ["dnsmasq", "-k", "-C", str(conf), "--pid-file="], workdir,
                extra={"config": conf})


def hushdns(workdir: Path, upstream_port: int, blocklist: Path, cache_entries: int,
            name: str = "hushdns", workers: int | None = None, memo: bool = True,
            extra: str = "", root: Path = REPO_ROOT) -> Proc:
    """hushdns from this checkout (`python -m resolver serve`), metrics on and counting.

    ``memo=False`` sets ``server.reply_memo: false``: no remembered replies, so every
    query takes the index or cache path (what a LAN that rarely repeats within a second gets).
    Its state (the query log, on by default) lives in the run's directory; ``extra`` is
    appended to the config (e.g. ``query_log: false`` for an A/B run).
    ``root``: another checkout to run instead of this one (``run.py --base``, an A/B).
    """
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    metrics_port = free_port()
    conf = d / "hushdns.yaml"
    conf.write_text(
        f'listen: ["127.0.0.1:{port}"]\n'
        f'upstreams: ["127.0.0.1:{upstream_port}"]\n'
        f"blocking: {{mode: nxdomain, lists: {{bench: {blocklist}}}}}\n"
        f"cache: {{max_entries: {cache_entries}}}\n"
        f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\n'
        + f"state_dir: {d / 'state'}\n"
        + (f"workers: {workers}\n" if workers else "")
        + ("" if memo else "server: {reply_memo: false}\n")
        + extra
    )
    env = dict(os.environ, PYTHONPATH=str(root))
    return Proc(name, port, [sys.executable, "-m", "resolver", "serve", "-c", str(conf)],
                workdir, cwd=root, env=env,
                extra={"config": conf, "metrics_port": metrics_port})


def baseline(workdir: Path) -> Proc:
    """The Python reference: bench/baseline_server.py (uvloop, parse question, template answer)."""
    port = free_port()
    return Proc("baseline", port,
                [sys.executable, str(BENCH_DIR / "baseline_server.py"), "--port", str(port)],
                workdir)


def hushdns_available() -> bool:
    """True once the core (resolver/server.py) is in this checkout."""
    return (REPO_ROOT / "resolver" / "server.py").exists()

"""Same-run A/B of the scale-out features at the UDP edge: PROXY v2 headers, dnstap.

    python bench/ab_scaleout.py [--rounds 3] [--number 40000]

Why in-process: the question is what the features cost the server per query,
and on a shared 2-core machine a load generator competes for the same cores (and
dnsperf cannot put PROXY headers before its queries).  Each variant is a real
``Server`` whose ``UdpEdge`` reads from a fake socket (prepared datagrams from 256
client addresses, replies dropped), batch by batch as when serving.  Cost is the
server process's CPU per query (``time.process_time``), and next to it the dnstap
sender process's (from /proc/<pid>/stat, measured until it has sent or dropped
everything), variants interleaved, median of the rounds.  Every server has its own
state_dir (its query log).  Variants:

- off:            no PROXY, no dnstap (datagrams straight from 256 clients);
- proxy:          the same queries, each behind a PROXY v2 header from 127.0.0.1;
- dnstap:         dnstap to fstrm_capture (a separate process, writing /dev/null);
- dnstap-stalled: dnstap to a collector that took the handshake and reads nothing
                  (the queue fills: drops, counted; the edge must not wait).

Scenarios: blocked-exact (one listed name again and again: the reply memo) and
blocked-first-sight (a new subdomain of a listed name each time: the pipeline).

``--dnsperf SECONDS`` adds the end-to-end view of dnstap with real sockets: three
hushdns processes (dnstap off, on to fstrm_capture, on to a stalled collector), each
loaded by dnsperf in turn (same run, alternating order), blocked-exact: qps, the
server process's CPU µs per answer (less noisy than qps on a shared machine), its
helper processes' (dnstap sender, query log writer), p50/p99 latency.  With dnsdist installed it also runs the PROXY
v2 A/B as deployed: dnsperf -> dnsdist -> hushdns, once with ``useProxyProtocol=true``
(and ``server.proxy_protocol_from``) and once without, reporting hushdns's own CPU
per query (dnsdist's CPU is not counted: it is the same in both).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

import data  # noqa: E402
import servers  # noqa: E402

from resolver.config import load_config  # noqa: E402
from resolver.lists.loader import load_all  # noqa: E402
from resolver.proxy_protocol import header  # noqa: E402
from resolver.server import Server, UdpEdge  # noqa: E402

PROXY_RATE = 15_000   # queries/s through dnsdist in the PROXY A/B
CLIENTS = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(256)]


class FakeSock:
    """What ``UdpEdge`` reads: an endless cycle of (datagram, address)."""

    def __init__(self, items: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.next = itertools.cycle(items).__next__

    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]]:
        return self.next()

    def sendto(self, wire: bytes, addr: object) -> None:
        pass

    def fileno(self) -> int:
        return -1


def own_cpu(pid: int) -> float:
    """User+system CPU seconds of ``pid`` alone (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def helpers_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s helper processes (dnstap sender, query log writer)."""
    return sum(own_cpu(k) for k in servers._children(pid))


def state_dir(work: Path, name: str) -> str:
    """Each server its own state (query log): a shared one makes SQLite say "locked"."""
    d = work / f"state-{name}"
    d.mkdir(exist_ok=True)
    return f"state_dir: {d}\n"


def build(work: Path, blist: Path, name: str, extra: str) -> Server:
    p = work / f"{name}.yaml"
    p.write_text('listen: ["127.0.0.1:0"]\nupstreams: ["127.0.0.1:1"]\nmetrics: {listen: null}\n'
                 "access: {allow: [0.0.0.0/0]}\n" + state_dir(work, name) +
                 f"blocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n" + extra)
    cfg = load_config(p)
    server = Server(cfg)
    server.lists = load_all(cfg)
    server._install(cfg, server.lists)
    return server


def dnsperf_ab(work: Path, blist: Path, names: list[str], tap_sock: Path, stall_sock: Path,
               seconds: float, rounds: int) -> None:
    import dnsperf as dp
    from servers import Proc, free_port

    qfile = data.write_queries(work / "exact.txt", [names[1234]])
    procs = {}
    for name, extra in (("off", ""), ("dnstap", f"dnstap: {{socket: {tap_sock}}}\n"),
                        ("dnstap-stalled", f"dnstap: {{socket: {stall_sock}, queue: 1000}}\n")):
        port = free_port()
        conf = work / f"{name}.yaml"
        conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:1"]\n'
                        f"metrics: {{listen: null}}\nblocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n"
                        + state_dir(work, name) + extra)
        env = dict(__import__("os").environ, PYTHONPATH=str(HERE.parent))
        procs[name] = Proc(name, port, [sys.executable, "-m", "resolver", "serve", "-c", str(conf)],
                           work, cwd=HERE.parent, env=env)
    rows: dict[str, list[tuple[float, ...]]] = {n: [] for n in procs}
    try:
        for proc in procs.values():
            proc.start(probe_name=names[1234])
        for r in range(rounds):
            for name, proc in list(procs.items())[:: 1 if r % 2 == 0 else -1]:
                cpu0, kids0 = own_cpu(proc.pid), helpers_cpu(proc.pid)
                res = dp.run(proc.port, qfile, duration=seconds, clients=2, outstanding=50,
                             verbose=True)
                time.sleep(0.2)   # the sender's last batches
                cpu, kids = own_cpu(proc.pid) - cpu0, helpers_cpu(proc.pid) - kids0
                n = res.completed or 1
                rows[name].append((res.qps, cpu / n * 1e6, kids / n * 1e6,
                                   (res.p50 or 0) * 1e3, (res.p99 or 0) * 1e3))
    finally:
        for proc in procs.values():
            proc.stop()
    print(f"\n| dnsperf, blocked-exact, {seconds:g} s x {rounds} (median) | qps | server CPU "
          "µs/answer | helpers' CPU µs/answer | p50 ms | p99 ms | qps vs off | server CPU vs off |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    off = [statistics.median(x[i] for x in rows["off"]) for i in range(2)]
    for name, xs in rows.items():
        med = [statistics.median(x[i] for x in xs) for i in range(5)]
        print(f"| {name} | {med[0]:,.0f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.2f} | "
              f"{med[4]:.2f} | {med[0] / off[0]:.2f}x | {off[1] / med[1]:.2f}x |")


def proxy_ab(work: Path, blist: Path, names: list[str], seconds: float, rounds: int) -> None:
    """dnsperf -> dnsdist -> hushdns, with and without PROXY v2 between the last two."""
    qfile = data.write_queries(work / "exact-proxy.txt", [names[1234]])
    pairs: dict = {}
    started: list = []
    env = dict(__import__("os").environ, PYTHONPATH=str(HERE.parent))
    try:
        _proxy_rounds(work, blist, names, seconds, rounds, qfile, pairs, started, env)
    finally:
        for p in reversed(started):
            p.stop()


def _proxy_rounds(work, blist, names, seconds, rounds, qfile, pairs, started, env) -> None:
    import dnsperf as dp
    from servers import Proc, free_port

    for name, proxy in (("no-proxy", False), ("proxy-v2", True)):
        port = free_port()
        conf = work / f"{name}.yaml"
        conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:1"]\n'
                        "metrics: {listen: null}\n"
                        f"blocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n"
                        + state_dir(work, name)
                        + ("server: {proxy_protocol_from: [127.0.0.1/32]}\n" if proxy else ""))
        h = Proc(name, port, [sys.executable, "-m", "resolver", "serve", "-c", str(conf)],
                 work, cwd=HERE.parent, env=env)
        h.popen = subprocess.Popen(h.argv, cwd=h.cwd, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(h)
        front = free_port()
        dconf = work / f"{name}-dnsdist.conf"
        dconf.write_text('setSecurityPollSuffix("")\n'
                         f'setLocal("127.0.0.1:{front}")\n'
                         f'newServer{{address="127.0.0.1:{port}", checkName="{names[1234]}", '
                         f'useProxyProtocol={str(proxy).lower()}}}\n')
        d = Proc(f"{name}-dnsdist", front, ["dnsdist", "--supervised", "--disable-syslog", "-C",
                                             str(dconf)], work)
        started.append(d)
        d.start(probe_name=names[1234])
        pairs[name] = (h, d)
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in pairs}
    for r in range(rounds):
        for name, (h, d) in list(pairs.items())[:: 1 if r % 2 == 0 else -1]:
            cpu0 = h.cpu_seconds()
            # A fixed rate: dnsdist itself is slower with PROXY headers, and at a lower
            # rate hushdns reads smaller batches; the same rate compares like with like.
            res = dp.run(d.port, qfile, duration=seconds, clients=2, outstanding=50, rate=PROXY_RATE)
            cpu = h.cpu_seconds() - cpu0
            rows[name].append((res.qps, res.completed / cpu if cpu else 0.0))
    print(f"\n| dnsperf -> dnsdist -> hushdns, blocked-exact, {PROXY_RATE} qps, {seconds:g} s x {rounds} (median) | "
          "qps | hushdns qps per its CPU-s | per CPU-s vs no-proxy |")
    print("|---|---:|---:|---:|")
    base = statistics.median(x[1] for x in rows["no-proxy"])
    for name, xs in rows.items():
        q, c = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
        print(f"| {name} | {q:,.0f} | {c:,.0f} | {c / base:.2f}x |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=40_000)
    ap.add_argument("--dnsperf", type=float, default=0.0, metavar="SECONDS",
                    help="also run the end-to-end dnstap A/B with dnsperf, SECONDS per run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hushdns-ab-scaleout-"))
    names = data.blocklist_names(20_000)
    blist = data.write_blocklist(work / "blocklist.txt", names)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tests.dnstap_read import FakeCollector

    procs = []
    tap_sock = work / "tap.sock"
    if shutil.which("fstrm_capture"):
        procs.append(subprocess.Popen(["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u",
                                       str(tap_sock), "-w", "/dev/null"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    else:
        FakeCollector(str(tap_sock))
    stall_sock = work / "stall.sock"
    stalled = FakeCollector(str(stall_sock), stall=True)
    while not tap_sock.exists():
        time.sleep(0.05)
    variants = {
        "off": build(work, blist, "off", ""),
        "proxy": build(work, blist, "proxy", "server: {proxy_protocol_from: [127.0.0.1/32]}\n"),
        "dnstap": build(work, blist, "dnstap", f"dnstap: {{socket: {tap_sock}}}\n"),
        "dnstap-stalled": build(work, blist, "dnstap-stalled",
                                f"dnstap: {{socket: {stall_sock}, queue: 1000}}\n"),
    }
    time.sleep(0.5)   # writers connected
    exact = servers.dns_query(names[1234])[1]
    first = [servers.dns_query(f"x{i}.{n}")[1] for i, n in enumerate(names)]
    scenarios = {"blocked-exact": [exact], "blocked-first-sight": first}
    results: dict[tuple[str, str], list[float]] = {}
    sender: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for scen, pkts in scenarios.items():
            order = list(variants.items())
            for name, server in order[:: 1 if r % 2 == 0 else -1]:
                if name == "proxy":
                    items = [(header((CLIENTS[i % 256], 40000 + i % 256), ("127.0.0.1", 53)) + p,
                              ("127.0.0.1", 5300)) for i, p in enumerate(pkts * (256 // len(pkts) or 1))]
                else:
                    items = [(p, (CLIENTS[i % 256], 40000 + i % 256))
                             for i, p in enumerate(pkts * (256 // len(pkts) or 1))]
                edge = UdpEdge(server, FakeSock(items))  # type: ignore[arg-type]
                for _ in range(40):      # warm: clients known, memo filled
                    edge._readable()
                batches = args.number // 64
                tap = server.tap
                child = tap._proc.pid if tap is not None and tap._proc is not None else None
                kid0 = own_cpu(child) if child else 0.0
                t0 = time.process_time()
                for _ in range(batches):
                    edge._readable()
                if tap is not None:
                    tap.flush()
                cpu = time.process_time() - t0
                if tap is not None:   # until the sender has sent or dropped everything
                    end = time.monotonic() + 10
                    while tap.pending and time.monotonic() < end:
                        time.sleep(0.005)
                results.setdefault((scen, name), []).append(cpu / (batches * 64) * 1e6)
                kid = (own_cpu(child) - kid0) if child else 0.0
                sender.setdefault((scen, name), []).append(kid / (batches * 64) * 1e6)
    print(f"| µs per query (server process CPU, median of {args.rounds}) | "
          + " | ".join(variants) + " | proxy/off qps | dnstap/off qps | dnstap sender µs |")
    print("|---|" + "---:|" * (len(variants) + 3))
    for scen in scenarios:
        med = {v: statistics.median(results[(scen, v)]) for v in variants}
        print(f"| {scen} | " + " | ".join(f"{med[v]:.2f}" for v in variants)
              + f" | {med['off'] / med['proxy']:.2f}x | {med['off'] / med['dnstap']:.2f}x | "
              f"{statistics.median(sender[(scen, 'dnstap')]):.2f} |")
    for name, server in variants.items():
        if server.tap is not None:
            print(f"{name}: dnstap sent {server.tap.sent}, dropped "
                  f"{server.stats.dnstap_dropped + server.stats.dnstap_lost()}")
            server.tap.close(1.0)
    try:
        if args.dnsperf:
            dnsperf_ab(work, blist, names, tap_sock, stall_sock, args.dnsperf, args.rounds)
            if shutil.which("dnsdist"):
                proxy_ab(work, blist, names, args.dnsperf, args.rounds)
    finally:
        stalled.close()
        for p in procs:
            p.send_signal(signal.SIGINT)
            p.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

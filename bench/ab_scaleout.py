"""Same-run A/B of the scale-out features at the UDP edge: PROXY v2 headers, dnstap.

    python bench/ab_scaleout.py [--rounds 3] [--number 40000]

Why in-process: the question is what the features cost the server per query,
and on a shared 2-core machine a load generator competes for the same cores (and
dnsperf cannot put PROXY headers before its queries).  Each variant is a real
``Server`` whose ``UdpEdge`` reads from a fake socket (prepared datagrams from 256
client addresses, replies dropped), batch by batch as when serving.  Cost is the
process CPU per query (``time.process_time``: the dnstap writer thread included,
measured until its queue is drained), variants interleaved, median of the rounds:

- off:            no PROXY, no dnstap (datagrams straight from 256 clients);
- proxy:          the same queries, each behind a PROXY v2 header from 127.0.0.1;
- dnstap:         dnstap to fstrm_capture (a separate process, writing /dev/null);
- dnstap-stalled: dnstap to a collector that took the handshake and reads nothing
                  (the queue fills: drops, counted; the edge must not wait).

Scenarios: blocked-exact (one listed name again and again: the reply memo) and
blocked-first-sight (a new subdomain of a listed name each time: the pipeline).
"""

from __future__ import annotations

import argparse
import itertools
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


def build(work: Path, blist: Path, extra: str) -> Server:
    p = work / f"c{abs(hash(extra))}.yaml"
    p.write_text('listen: ["127.0.0.1:0"]\nupstreams: ["127.0.0.1:1"]\nmetrics: {listen: null}\n'
                 "access: {allow: [0.0.0.0/0]}\n"
                 f"blocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n" + extra)
    cfg = load_config(p)
    server = Server(cfg)
    server.lists = load_all(cfg)
    server._install(cfg, server.lists)
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=40_000)
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
        "off": build(work, blist, ""),
        "proxy": build(work, blist, "server: {proxy_protocol_from: [127.0.0.1/32]}\n"),
        "dnstap": build(work, blist, f"dnstap: {{socket: {tap_sock}}}\n"),
        "dnstap-stalled": build(work, blist, f"dnstap: {{socket: {stall_sock}, queue: 1000}}\n"),
    }
    time.sleep(0.5)   # writers connected
    exact = servers.dns_query(names[1234])[1]
    first = [servers.dns_query(f"x{i}.{n}")[1] for i, n in enumerate(names)]
    scenarios = {"blocked-exact": [exact], "blocked-first-sight": first}
    results: dict[tuple[str, str], list[float]] = {}
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
                t0 = time.process_time()
                for _ in range(batches):
                    edge._readable()
                tap = server.tap
                if tap is not None and name == "dnstap":
                    while tap.queue:
                        time.sleep(0.001)
                cpu = time.process_time() - t0
                results.setdefault((scen, name), []).append(cpu / (batches * 64) * 1e6)
    print(f"| µs per query (process CPU, median of {args.rounds}) | "
          + " | ".join(variants) + " | proxy/off qps | dnstap/off qps |")
    print("|---|" + "---:|" * (len(variants) + 2))
    for scen in scenarios:
        med = {v: statistics.median(results[(scen, v)]) for v in variants}
        print(f"| {scen} | " + " | ".join(f"{med[v]:.2f}" for v in variants)
              + f" | {med['off'] / med['proxy']:.2f}x | {med['off'] / med['dnstap']:.2f}x |")
    for name, server in variants.items():
        if server.tap is not None:
            print(f"{name}: dnstap sent {server.tap.sent}, dropped "
                  f"{server.stats.dnstap_dropped + server.tap.lost}")
            server.tap.close(1.0)
    stalled.close()
    for p in procs:
        p.send_signal(signal.SIGINT)
        p.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

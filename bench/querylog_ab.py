"""Throughput with the query log on against off, same run: the issue #17 "≥ 0.8x" check.

    python bench/querylog_ab.py [--duration 5] [--rounds 2]

Two hushdns servers from this checkout (identical configs but ``query_log``), the blocked
and cache-hit mixes of bench/run.py, dnsperf peak runs taking turns (off, on, on, off, ...),
then cache hits at a fixed moderate rate for their p99 latency.
Prints queries/s and CPU per query for each run (the server process alone, and its query-log
writer process apart: the writer runs at nice 19 on another core), the medians, the on/off
ratio, and the rows the log wrote and dropped (read from /metrics).  About 6 x rounds x duration seconds plus start-up.
Needs dnsperf and nsd (the upstream that warms the cache).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import data
import dnsperf
import servers


def _metric(proc: servers.Proc, name: str) -> float:
    text = urllib.request.urlopen(  # noqa: S310 - our own server on 127.0.0.1
        f"http://127.0.0.1:{proc.extra['metrics_port']}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _own_cpu(pid: int) -> float:
    """User+system CPU seconds of ``pid`` alone (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--list-size", type=int, default=100_000)
    ap.add_argument("--fixed-rate", type=int, default=5000, help="queries/s of the p99 runs")
    a = ap.parse_args()
    servers.require("dnsperf", "nsd")
    with tempfile.TemporaryDirectory(prefix="hushdns-qlab-") as tmp:
        work = Path(tmp)
        blocked = data.blocklist_names(a.list_size)
        blocklist = data.write_blocklist(work / "blocklist.txt", blocked)
        q = {"blocked": data.write_queries(work / "blocked.q", data.blocked_queries(blocked, 100_000)),
             "hit": data.write_queries(work / "hit.q", data.hit_names(1000))}
        nsd = servers.nsd(work, data.zone_file(work / "bench.zone")).start()
        procs = {"off": servers.hushdns(work, nsd.port, blocklist, 100_000, name="log-off",
                                        extra="query_log: false\n").start(),
                 "on": servers.hushdns(work, nsd.port, blocklist, 100_000, name="log-on").start()}
        qps: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}     # the server process
        writer_cpu: dict[tuple[str, str], list[float]] = {}   # its children (the log writer)
        p99: dict[str, list[float]] = {}
        try:
            for p in procs.values():   # warm-up (not measured) and the cache for the hit mix
                dnsperf.run(p.port, q["blocked"], duration=2)
                dnsperf.run(p.port, q["hit"], duration=10, once=True)
            order = ["off", "on"]
            for rnd in range(a.rounds):
                for mix in ("blocked", "hit"):
                    for which in (order if rnd % 2 == 0 else order[::-1]):
                        c0, s0 = procs[which].cpu_seconds(), _own_cpu(procs[which].pid)
                        r = dnsperf.run(procs[which].port, q[mix], duration=a.duration)
                        n = max(1, r.completed)
                        own = (_own_cpu(procs[which].pid) - s0) / n * 1e6
                        kids = (procs[which].cpu_seconds() - c0) / n * 1e6 - own
                        qps.setdefault((mix, which), []).append(r.qps)
                        cpus.setdefault((mix, which), []).append(own)
                        writer_cpu.setdefault((mix, which), []).append(kids)
                        print(f"round {rnd + 1} {mix:<8} log {which:<3} {r.qps:>9.0f} q/s "
                              f"server {own:6.1f} us CPU/query, writer {kids:5.1f} "
                              f"(lost {r.lost})", flush=True)
            for rnd in range(a.rounds):   # p99 of a cache hit at a moderate fixed rate
                for which in (order if rnd % 2 == 0 else order[::-1]):
                    r = dnsperf.run(procs[which].port, q["hit"], duration=a.duration,
                                    rate=a.fixed_rate, verbose=True)
                    p99.setdefault(which, []).append(r.p99 * 1e3 if r.p99 is not None else float("nan"))
                    print(f"round {rnd + 1} hit @{a.fixed_rate}/s log {which:<3} p99 "
                          f"{p99[which][-1]:.3f} ms", flush=True)
            on = procs["on"]
            written = _metric(on, "hushdns_querylog_written_total")
            dropped = _metric(on, "hushdns_querylog_dropped_total")
        finally:
            for p in procs.values():
                p.stop()
            nsd.stop()
    print()
    for mix in ("blocked", "hit"):
        off, on_ = statistics.median(qps[(mix, "off")]), statistics.median(qps[(mix, "on")])
        c_off, c_on = statistics.median(cpus[(mix, "off")]), statistics.median(cpus[(mix, "on")])
        w_on = statistics.median(writer_cpu[(mix, "on")])
        print(f"{mix:<8} off {off:>9.0f} q/s {c_off:5.1f} us CPU/q   on {on_:>9.0f} q/s "
              f"{c_on:5.1f} us CPU/q (+ writer {w_on:4.1f})   on/off {on_ / off:.2f}")
    print(f"hit p99 at {a.fixed_rate}/s: off {statistics.median(p99['off']):.3f} ms, "
          f"on {statistics.median(p99['on']):.3f} ms")
    print(f"query log rows written {written:.0f}, dropped {dropped:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

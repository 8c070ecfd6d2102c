"""Where hushdns spends its time per packet: py-spy samples it while dnsperf drives one mix.

    python bench/hotspots.py [--mixes blocked,hit,miss] [--duration 8] [--native] [--top 25]

For each mix: start nsd and hushdns (same configs as bench/run.py), warm the cache for
the hit mix, then run dnsperf at full load while `py-spy record --format raw` samples
the server.  The collapsed stacks are folded into a table of self and inclusive time
per function, scaled to microseconds per query with the server's CPU time per query
(from /proc).  Needs `pip install py-spy`; py-spy samples another process via ptrace,
so run as root (or with ptrace allowed).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import data
import dnsperf
import servers

IDLE_LEAVES = ("epoll_pwait", "epoll_wait")


def fold(raw: Path) -> tuple[int, int, collections.Counter[str], collections.Counter[str]]:
    """py-spy raw output (``frame;frame;leaf count`` lines) -> (busy, idle, self, inclusive).

    Only the event-loop thread counts (the list loader's worker thread sleeps on a queue),
    and samples whose leaf is epoll_pwait are the loop waiting for packets: idle, not cost.
    """
    busy = idle = 0
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_short(f) for f in stack.split(";")]
        if any(f.startswith(("Thread._bootstrap", "_worker (concurrent")) for f in frames):
            continue
        if frames[-1].split(" ", 1)[0] in IDLE_LEAVES:
            idle += count
            continue
        busy += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return busy, idle, self_c, incl


KEEP_LINES = False


def _short(frame: str) -> str:
    """``func (/long/path/resolver/wire.py:123)`` -> ``func (resolver/wire.py:123)``."""
    name, sep, loc = frame.partition(" (")
    if not sep:
        return frame
    loc = loc.rstrip(")")
    for marker in ("/resolver/", "/asyncio/", "/uvloop/", "/bench/", "/lib/python"):
        i = loc.find(marker)
        if i >= 0:
            loc = loc[i + 1:]
            break
    # Line numbers split one function into many rows; keep the file only (unless --lines).
    if not KEEP_LINES:
        loc = loc.rsplit(":", 1)[0]
    return f"{name} ({loc})"


def table(title: str, total: int, counter: collections.Counter[str], us_per_q: float,
          top: int) -> list[str]:
    out = [f"#### {title}", "", "| % of samples | µs/query | function |", "|---:|---:|---|"]
    for fn, n in counter.most_common(top):
        share = n / total if total else 0.0
        out.append(f"| {share:6.1%} | {share * us_per_q:6.2f} | `{fn}` |")
    return out + [""]


def profile_mix(mix: str, args: argparse.Namespace, work: Path) -> list[str]:
    zone = data.zone_file(work / "bench.zone")
    blocked = data.blocklist_names(args.list_size)
    blist = data.write_blocklist(work / "blocklist.txt", blocked)
    nsd = servers.nsd(work, zone).start()
    if args.server == "baseline":
        hd = servers.baseline(work).start()
    else:
        hd = servers.hushdns(work, nsd.port, blist, 100_000).start()
    try:
        if mix == "blocked":
            q = data.write_queries(work / "q", data.blocked_queries(blocked, 100_000))
        elif mix == "hit":
            q = data.write_queries(work / "q", data.hit_names(1000))
            dnsperf.run(hd.port, q, duration=10, once=True)
        else:
            q = data.write_queries(work / "q", data.miss_names("prof", int(args.duration * 80_000)))
        raw = work / f"{mix}.raw"
        spy = ["py-spy", "record", "--pid", str(hd.pid), "--rate", str(args.rate),
               "--duration", str(int(args.duration)), "--format", "raw", "--output", str(raw),
              ] + (["--native"] if args.native else ["--nonblocking"])
        spy_proc = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let py-spy attach before the load starts
        c0 = hd.cpu_seconds()
        res = dnsperf.run(hd.port, q, duration=args.duration - 1, once=(mix == "miss"))
        cpu = hd.cpu_seconds() - c0
        _, err = spy_proc.communicate(timeout=args.duration + 30)
        if spy_proc.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")
    finally:
        hd.stop()
        nsd.stop()
    us = cpu / max(1, res.completed) * 1e6
    total, idle, self_c, incl = fold(raw)
    lines = [f"### {args.server}, {mix}: {res.qps:,.0f} queries/s, {us:.1f} µs of server CPU per query, "
             f"{total:,} busy samples (+{idle:,} idle in epoll), scaled to that CPU time", ""]
    lines += table("self time (the function itself)", total, self_c, us, args.top)
    lines += table("inclusive time (the function and what it calls)", total, incl, us, args.top)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixes", default="blocked,hit,miss")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per mix (<= 30)")
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--server", choices=("hushdns", "baseline"), default="hushdns",
                    help="baseline: the same profile of bench/baseline_server.py, for the floor")
    ap.add_argument("--native", action="store_true", help="include C frames (uvloop, CPython)")
    ap.add_argument("--lines", action="store_true", help="one row per source line, not function")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--list-size", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    args = ap.parse_args()
    global KEEP_LINES
    KEEP_LINES = args.lines
    if not 2 <= args.duration <= 30:
        ap.error("--duration must be within 2..30 s")
    missing = servers.require("py-spy", "dnsperf", "nsd")
    if missing:
        print(f"missing: {', '.join(missing)} (pip install py-spy; apt-get install dnsperf nsd)",
              file=sys.stderr)
        return 2
    if args.server == "hushdns" and not servers.hushdns_available():
        print("resolver/server.py is not in this checkout", file=sys.stderr)
        return 2
    lines = []
    for mix in args.mixes.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"hushdns-prof-{mix}-"))
        try:
            lines += profile_mix(mix, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("\n".join(lines[-(2 * args.top + 12):]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

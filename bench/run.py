"""hushdns vs unbound vs dnsmasq on loopback, same run, interleaved; writes bench/results.md.

    python bench/run.py [--quick] [--duration S] [--servers unbound,dnsmasq,hushdns,baseline]

Every server gets the same nsd upstream (a wildcard zone, so every name resolves), the
same generated 100k-name blocklist and caching on.  For each mix the servers take turns
(the order rotates per mix and round) so that background noise falls on all of them.
Each server/mix gets a peak run (dnsperf, no rate limit) and then a latency run at a
fraction (default 50%) of that peak with per-query latencies, from which p99 comes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import data
import dnsperf
import servers
from compile import wire_module
from report import Flood, Measurement, Report, ScaleRow, machine, render

MIXES = ("blocked", "firstsight", "hit", "wide", "miss")
ANCHORS = ("unbound", "dnsmasq")
# Upper bound on cache-miss queries/s any server here reaches; sizes unique-name files.
MISS_RATE_CAP = 80_000
# The same for first-sight blocked names (answered locally, so faster than misses).
FIRST_SIGHT_RATE_CAP = 160_000
# hushdns variants: -nomemo is server.reply_memo: false; -nolog is query_log off (what the
# code before the query log did, so an A/B against an older --base compares like for like);
# -nobypass is `bypass: false` (the bypass stage, which the code before the household
# controls did not have, left out: with -nolog, the same features as such a --base);
# -w<N> is workers: N.
# base, base-nomemo, ...: the same, from the checkout given with --base (an A/B in one run).
_HUSHDNS = re.compile(r"(?:hushdns|base)(-nomemo)?(-nolog)?(-nobypass)?(-w\d+)?")


def hot_path(root: Path) -> str:
    """Which build of the per-query modules the servers started from ``root`` run: the
    mypyc-compiled one (bench/compile.py put .so files there) or pure Python."""
    wire = wire_module(root)
    if not wire:
        return "hot path unknown (resolver.wire does not import)"
    return "hot path compiled (mypyc)" if wire.endswith((".so", ".pyd")) else "hot path pure Python"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short runs (3 s peak, 2 s latency), one round: a sanity check")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per peak dnsperf run (default 8, quick 3; max 30)")
    ap.add_argument("--latency-duration", type=float, default=None,
                    help="seconds per rate-limited latency run (default duration/2)")
    ap.add_argument("--servers", default=None,
                    help="comma list of unbound,dnsmasq,hushdns,baseline, hushdns-nomemo "
                         "(server.reply_memo: false), -nolog (query log off), -nobypass "
                         "(bypass: false) and hushdns-w<N> for hushdns with "
                         "workers: N (default: hushdns, hushdns-nomemo, unbound, dnsmasq, "
                         "baseline)")
    ap.add_argument("--hushdns", action="store_true", help="add hushdns to --servers")
    ap.add_argument("--base", type=Path, default=None,
                    help="another hushdns checkout, run as the servers named base, base-nomemo")
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma list of {','.join(MIXES)}")
    ap.add_argument("--wide-names", type=int, default=None,
                    help="distinct cached names of the wide mix (default 90000, quick 5000)")
    ap.add_argument("--rounds", type=int, default=2, help="repeat everything; medians reported")
    ap.add_argument("--list-size", type=int, default=100_000, help="blocklist size for the mixes")
    ap.add_argument("--cache-entries", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--load", type=float, default=0.5,
                    help="latency run rate as a fraction of the server's own peak")
    ap.add_argument("--fixed-rate", type=float, default=5000,
                    help="queries/s of a second latency run, the same for every server (0: skip)")
    ap.add_argument("--fixed-rate-miss", type=float, default=1000,
                    help="the same for the cache-miss mix")
    ap.add_argument("--scale", default=None,
                    help="comma list of list sizes for the list-scale run "
                         "(default 1000,1000000 when hushdns runs; 'none' to skip)")
    ap.add_argument("--scale-servers", default="hushdns",
                    help="servers for the list-scale run (unbound works too, slowly)")
    ap.add_argument("--scale-rounds", type=int, default=None,
                    help="alternating blocked runs per list size (default 8, quick 2)")
    ap.add_argument("--scale-duration", type=float, default=3.0,
                    help="seconds per list-scale run (short and many: the ratio is taken "
                         "per round, between runs seconds apart)")
    ap.add_argument("--flood-seconds", type=float, default=None,
                    help="cache flood run with hushdns (unique names past max_entries; "
                         "default 20, quick 3; 0: skip)")
    ap.add_argument("--flood-entries", type=int, default=10_000,
                    help="cache.max_entries for the flood run (small, so it fills quickly)")
    ap.add_argument("--pin", action="store_true",
                    help="pin the server to CPU 0 and dnsperf/nsd to CPU 1")
    ap.add_argument("--out", type=Path, default=servers.BENCH_DIR / "results.md")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 8.0
    if args.latency_duration is None:
        args.latency_duration = 2.0 if args.quick else max(1.0, args.duration / 2)
    if args.flood_seconds is None:
        args.flood_seconds = 3.0 if args.quick else 20.0
    if (not 0 < args.duration <= 30 or not 0 < args.latency_duration <= 30
            or not 0 <= args.flood_seconds <= 30):
        ap.error("each dnsperf run must be bounded: 0 < duration <= 30")
    if args.quick:
        args.rounds = 1
    if args.wide_names is None:
        args.wide_names = 5000 if args.quick else 90_000
    if args.scale_rounds is None:
        args.scale_rounds = 2 if args.quick else 8
    if not 0 < args.scale_duration <= 30 or args.scale_rounds < 1:
        ap.error("--scale-duration must be in (0, 30] and --scale-rounds at least 1")
    if args.servers is None:
        names = [*ANCHORS, "baseline"]
        if servers.hushdns_available():
            names[:0] = ["hushdns", "hushdns-nomemo"]
    else:
        names = [s for s in args.servers.split(",") if s]
    if args.hushdns and "hushdns" not in names:
        names.insert(0, "hushdns")
    unknown = {n for n in names if not _HUSHDNS.fullmatch(n)} - {
        "unbound", "dnsmasq", "baseline"}
    if unknown:
        ap.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if any(n.startswith("hushdns") for n in names) and not servers.hushdns_available():
        ap.error("hushdns requested but resolver/server.py is not in this checkout yet")
    if any(n.startswith("base") and n != "baseline" for n in names) and args.base is None:
        ap.error("servers named base* need --base DIR")
    args.server_names = names
    args.mix_names = [m for m in args.mixes.split(",") if m]
    if set(args.mix_names) - set(MIXES):
        ap.error(f"mixes are {', '.join(MIXES)}")
    if args.scale is None:
        args.scale = "1000,1000000" if "hushdns" in names else "none"
    args.scale_sizes = [] if args.scale == "none" else [int(x) for x in args.scale.split(",")]
    args.scale_names = [s for s in args.scale_servers.split(",") if s]
    args.estimate = estimate_seconds(args)
    if args.estimate > 1200:
        ap.error(f"this run would take about {args.estimate / 60:.0f} min; the bound is 20 min "
                 "(lower --rounds, --duration or --latency-duration)")
    return args


def estimate_seconds(a: argparse.Namespace) -> float:
    """Rough wall time: each server/mix pair is a peak run, two latency runs and a warm-up."""
    pairs = sum(1 for s in a.server_names for m in a.mix_names
                if not (s == "baseline" and m == "miss"))
    per_pair = a.duration + (2 * a.latency_duration if a.load > 0 else 0) + 2
    scale = len(a.scale_names) * sum(
        a.scale_rounds * (a.scale_duration + 1) + 6 + size / 100_000 for size in a.scale_sizes)
    flood = a.flood_seconds + 3 if "hushdns" in a.server_names else 0
    warmup = len(a.server_names) * min(2.0, a.duration)
    if "wide" in a.mix_names:  # one pass over the wide set per server, forwarded (~5k/s)
        warmup += len(a.server_names) * a.wide_names / 5000
    return a.rounds * pairs * per_pair + scale + flood + warmup + 15


class Bench:
    """Holds the temp dir, the generated inputs and the running processes of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.procs: list[servers.Proc] = []
        self.cpu_server = ["taskset", "-c", "0"] if args.pin and (os.cpu_count() or 1) > 1 else []
        self.cpu_client = ["taskset", "-c", "1"] if self.cpu_server else []

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def start(self, proc: servers.Proc, client_side: bool = False) -> servers.Proc:
        pin = self.cpu_client if client_side else self.cpu_server
        if pin:
            proc.argv = [*pin, *proc.argv]
        self.procs.append(proc)
        proc.start()
        return proc

    def stop(self, proc: servers.Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    # ---- inputs -------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        self.zonefile = data.zone_file(self.dir / "bench.zone")
        self.blocked = data.blocklist_names(a.list_size)
        self.blocklist = data.write_blocklist(self.dir / "blocklist.txt", self.blocked)
        self.q_blocked = data.write_queries(self.dir / "blocked.q",
                                            data.blocked_queries(self.blocked, 100_000))
        self.q_hit = data.write_queries(self.dir / "hit.q", data.hit_names(1000))
        self.q_wide = data.write_queries(self.dir / "wide.q", data.wide_names(a.wide_names))
        self.wide_warm: set[str] = set()   # servers whose cache holds the wide set
        self._miss_serial = 0

    def miss_file(self, count: int) -> Path:
        """A fresh file of never-asked names (a new tag every call)."""
        self._miss_serial += 1
        tag = f"{self._miss_serial}{os.getpid() % 1000}"
        return data.write_queries(self.dir / "miss.q", data.miss_names(tag, max(1000, count)))

    def first_sight_file(self, count: int) -> Path:
        """A fresh file of never-asked names under listed ones (a new tag every call)."""
        self._miss_serial += 1
        tag = f"{self._miss_serial}{os.getpid() % 1000}"
        return data.write_queries(self.dir / "firstsight.q",
                                  data.first_sight_names(self.blocked, tag, max(1000, count)))

    def unique_file(self, mix: str, count: int) -> Path | None:
        """For mixes whose names must never repeat: a fresh file; None for the others."""
        if mix == "miss":
            return self.miss_file(count)
        if mix == "firstsight":
            return self.first_sight_file(count)
        return None

    # ---- servers ------------------------------------------------------------------------

    def make(self, name: str, blocked: list[str], blocklist: Path, label: str | None = None
             ) -> servers.Proc:
        ce = self.args.cache_entries
        if name == "unbound":
            p = servers.unbound(self.dir, self.nsd.port, blocked, ce)
        elif name == "dnsmasq":
            p = servers.dnsmasq(self.dir, self.nsd.port, blocked, ce)
        elif (hm := _HUSHDNS.fullmatch(name)) is not None:
            # -nomemo: server.reply_memo off; -nolog: query_log off; -w<N>: workers: N
            # (SO_REUSEPORT processes)
            p = servers.hushdns(self.dir, self.nsd.port, blocklist, ce, name=label or name,
                                workers=int(hm.group(4)[2:]) if hm.group(4) else None,
                                memo=hm.group(1) is None,
                                extra=("query_log: {enabled: false}\n" if hm.group(2) else "")
                                + ("bypass: false\n" if hm.group(3) else ""),
                                root=self.args.base if name.startswith("base") else
                                servers.REPO_ROOT)
        elif name == "baseline":
            p = servers.baseline(self.dir)
        else:
            raise ValueError(name)
        if label:
            p.name = label
        return p

    # ---- measuring ----------------------------------------------------------------------

    def perf(self, proc: servers.Proc, queries: Path, **kw: object) -> dnsperf.Result:
        return dnsperf.run(proc.port, queries, clients=self.args.clients,
                           outstanding=self.args.outstanding, prefix=self.cpu_client, **kw)

    def measure(self, proc: servers.Proc, mix: str, rnd: int) -> Measurement:
        a = self.args
        if mix == "hit":  # warm: one pass over the working set
            self.perf(proc, self.q_hit, duration=10, once=True)
        if mix == "wide" and proc.name not in self.wide_warm:  # one pass, forwarded to nsd
            self.perf(proc, self.q_wide, duration=60, once=True)
            self.wide_warm.add(proc.name)
        if mix == "miss":
            # New names fill the cache and push the wide set out of an LRU of 100k entries
            # (a second round's wide mix measured mostly misses): warm it again next time.
            self.wide_warm.discard(proc.name)
        once = mix in ("miss", "firstsight")   # never-repeated names: one pass, no wrap
        cap = MISS_RATE_CAP if mix == "miss" else FIRST_SIGHT_RATE_CAP
        qfile = self.unique_file(mix, int(a.duration * cap)) or {
            "blocked": self.q_blocked, "hit": self.q_hit, "wide": self.q_wide}[mix]
        c0 = proc.cpu_seconds()
        peak = self.perf(proc, qfile, duration=a.duration, once=once)
        cpu = proc.cpu_seconds() - c0
        m = Measurement(server=proc.name, mix=mix, round=rnd, peak=peak,
                        cpu_us=cpu / max(1, peak.completed) * 1e6, rss_kib=proc.rss_kib(),
                        cpu_s=cpu)
        if a.load > 0 and peak.qps > 0:
            m.rate = max(100.0, peak.qps * a.load)
            qfile = self.unique_file(mix, int(m.rate * a.latency_duration * 1.2)) or qfile
            m.latency = self.perf(proc, qfile, duration=a.latency_duration, rate=m.rate,
                                  verbose=True, once=once)
        fixed = a.fixed_rate_miss if mix == "miss" else a.fixed_rate
        if fixed > 0:  # the same moderate load for every server: comparable p99 and CPU
            qfile = self.unique_file(mix, int(fixed * a.latency_duration * 1.2)) or qfile
            c0, t0 = proc.cpu_seconds(), servers.machine_cpu_ticks()
            m.fixed = self.perf(proc, qfile, duration=a.latency_duration, rate=fixed,
                                verbose=True, once=once)
            m.fixed_cpu_us = (proc.cpu_seconds() - c0) / max(1, m.fixed.completed) * 1e6
            m.fixed_steal = servers.steal_share(t0, servers.machine_cpu_ticks())
        p99 = m.latency.p99 if m.latency and m.latency.p99 is not None else float("nan")
        self.log(f"{mix:10s} {proc.name:14s} {peak.qps:10,.0f} q/s "
                 f"{peak.completed / max(cpu, 1e-9):10,.0f} q/CPU-s lost {peak.lost:<5d} "
                 f"avg {peak.avg * 1e3:6.2f} ms  cpu {m.cpu_us:5.1f} µs/q  "
                 f"p99@{m.rate:,.0f} {p99 * 1e3:.2f} ms  rss {m.rss_kib / 1024:.1f} MiB")
        return m

    def scale_run(self, rep: Report) -> None:
        """Each server started once per list size; blocked runs alternate, round after round.

        Why many short rounds: on a shared machine the load from elsewhere changes
        over seconds, so two long runs minutes apart differ by 20-30% whatever the
        list.  The report takes the ratio within each round (runs seconds apart)
        and gives the median and range of those.
        """
        a = self.args
        for name in a.scale_names:
            procs: list[tuple[int, servers.Proc, Path]] = []
            try:
                for size in a.scale_sizes:
                    names = (self.blocked[:size] if size <= len(self.blocked)
                             else data.blocklist_names(size))
                    path = data.write_blocklist(self.dir / f"list-{size}.txt", names)
                    q = data.write_queries(self.dir / f"blocked-{size}.q",
                                           data.subdomain_queries(names, 100_000))
                    proc = self.make(name, names, path, label=f"{name}-{size}")
                    del names
                    self.log(f"scale: starting {proc.name}")
                    self.start(proc)
                    self.log(f"scale: {proc.name} ready in {proc.ready_seconds:.2f} s, "
                             f"rss {proc.rss_kib() / 1024:.1f} MiB")
                    procs.append((size, proc, q))
                for _, proc, q in procs:      # warm-up, not measured (as for the mixes)
                    self.perf(proc, q, duration=min(2.0, a.scale_duration))
                for rnd in range(a.scale_rounds):
                    for size, proc, q in procs[rnd % len(procs):] + procs[:rnd % len(procs)]:
                        c0 = proc.cpu_seconds()
                        peak = self.perf(proc, q, duration=a.scale_duration)
                        cpu = proc.cpu_seconds() - c0
                        row = ScaleRow(server=name, size=size, ready_s=proc.ready_seconds,
                                       rss_kib=proc.rss_kib(), peak=peak,
                                       cpu_us=cpu / max(1, peak.completed) * 1e6, round=rnd)
                        rep.scale.append(row)
                        self.log(f"scale {name} {size:>9,}: {peak.qps:,.0f} q/s, "
                                 f"{row.cpu_us:.1f} µs/q, rss {row.rss_kib / 1024:.1f} MiB")
            finally:
                for _, proc, _ in procs:
                    self.stop(proc)

    def flood_run(self, rep: Report) -> None:
        """Unique names past cache.max_entries: RSS must level off once the cache is full."""
        a = self.args
        proc = servers.hushdns(self.dir, self.nsd.port, self.blocklist, a.flood_entries,
                               name="hushdns-flood")
        self.start(proc)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(0.5):
                samples.append((time.monotonic() - t0, proc.rss_kib()))

        q = self.miss_file(int(a.flood_seconds * MISS_RATE_CAP))
        th = threading.Thread(target=sample, daemon=True)
        rss0 = proc.rss_kib()
        th.start()
        try:
            res = self.perf(proc, q, duration=a.flood_seconds, once=True)
        finally:
            stop.set()
            th.join()
            self.stop(proc)
        rep.flood = Flood(entries=a.flood_entries, answered=res.completed, qps=res.qps,
                          rss_start_kib=rss0, samples=samples)
        self.log(f"flood: {res.completed:,} unique names, cache max {a.flood_entries:,}: RSS "
                 + " ".join(f"{t:.0f}s:{k / 1024:.0f}" for t, k in samples[::4]))

    def run(self) -> Report:
        a = self.args
        rep = Report(settings={
            "servers": ", ".join(a.server_names),
            "mixes": ", ".join(a.mix_names),
            "wide mix": f"{a.wide_names:,} distinct cached names",
            "peak run": f"{a.duration:g} s, dnsperf -c {a.clients} -q {a.outstanding}",
            "latency run": f"{a.latency_duration:g} s at {a.load:.0%} of the server's own peak "
                           "(dnsperf -Q, -v for per-query latency)",
            "fixed-rate run": f"{a.latency_duration:g} s at {a.fixed_rate:,.0f} queries/s "
                              f"({a.fixed_rate_miss:,.0f} for misses), the same for every server",
            "rounds": f"{a.rounds} (medians when > 1; server order rotates per mix and round)",
            "blocklist": f"{a.list_size:,} generated names, NXDOMAIN for name and subdomains",
            "cache": f"{a.cache_entries:,} entries (dnsmasq: its 10,000 maximum)",
            "CPU pinning": "server CPU 0, dnsperf+nsd CPU 1" if self.cpu_server else "none",
        }, machine=machine(), fixed_rate=a.fixed_rate, fixed_rate_miss=a.fixed_rate_miss)
        rep.notes.append("unbound runs with num-threads: 1 (one process, one thread, like hushdns).")
        roots = {"hushdns": servers.REPO_ROOT}
        if a.base is not None:
            roots["base"] = a.base
        for label, root in roots.items():
            rep.notes.append(f"{label}* ({root}): {hot_path(Path(root))}.")
        if "baseline" in a.server_names:
            rep.notes.append("baseline = bench/baseline_server.py: uvloop, parse the question, "
                             "answer A 192.0.2.1 from a template for every name (so its blocked "
                             "answers are NOERROR, not checked); no lists, cache or metrics. "
                             "It is the Python reference (one callback per datagram), and sits out the miss mix.")
        self.log(f"preparing inputs in {self.dir}; about {a.estimate / 60:.1f} min to go")
        ticks0 = servers.machine_cpu_ticks()
        self.prepare()
        self.nsd = self.start(servers.nsd(self.dir, self.zonefile), client_side=True)
        procs = []
        for name in a.server_names:
            p = self.start(self.make(name, self.blocked, self.blocklist))
            rep.startup[p.name] = (p.ready_seconds, p.rss_kib())
            self.log(f"{p.name} ready on 127.0.0.1:{p.port} in {p.ready_seconds:.2f} s")
            procs.append(p)
        # Warm-up, not measured: right after start-up (other servers still settling, files
        # just written) the first run measured was up to 2.5x slower than the same server's
        # next one, and it always fell on the first server of round 1.
        for p in procs:
            self.perf(p, self.q_blocked, duration=min(2.0, a.duration))
        for rnd in range(a.rounds):
            for i, mix in enumerate(a.mix_names):
                k = (i + rnd) % len(procs)
                for p in procs[k:] + procs[:k]:
                    if p.name == "baseline" and mix == "miss":
                        continue  # it forwards nothing: a miss is the same template answer
                    rep.measurements.append(self.measure(p, mix, rnd))
        for p in procs:
            if p.name.startswith("hushdns"):
                rep.notes.append(metrics_note(p))
            self.stop(p)
        if a.scale_sizes:
            self.scale_run(rep)
        if a.flood_seconds > 0 and "hushdns" in a.server_names:
            self.flood_run(rep)
        rep.machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        steal = servers.steal_share(ticks0, servers.machine_cpu_ticks())
        if steal is not None:
            rep.machine["CPU steal during the run"] = (
                f"{steal:.1%} of all CPU time (/proc/stat: the hypervisor ran other guests "
                "while this VM's vCPUs had work)")
        return rep


def metrics_note(proc: servers.Proc) -> str:
    """Say whether hushdns' /metrics answered after the load (metrics must stay on)."""
    port = proc.extra.get("metrics_port")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as exc:
        return (f"{proc.name} metrics: configured on {url} but not answering ({exc.__class__.__name__});"
                " the in-process counters (resolver.stats) were incremented on every query.")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hushdns_queries_total"):
            total += float(line.rsplit(" ", 1)[1])
    return (f"{proc.name} metrics: {url} answered after the load; hushdns_queries_total sums "
            f"to {total:,.0f} (every query of this run is counted).")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    need = ["dnsperf", "nsd", "nsd-checkconf"] + [s for s in args.server_names
                                                  if s in ANCHORS]
    if args.pin:
        need.append("taskset")
    missing = servers.require(*need)
    if missing:
        print(f"missing programs: {', '.join(missing)} (Debian: apt-get install "
              "dnsperf nsd unbound dnsmasq-base)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hushdns-bench-"))
    bench = Bench(args, workdir)
    t0 = time.monotonic()
    try:
        rep = bench.run()
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rep.settings["wall time"] = f"{time.monotonic() - t0:.0f} s"
    args.out.write_text(render(rep))
    bench.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

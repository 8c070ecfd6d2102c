"""Markdown for bench/results.md: machine description, one table per mix, list scale.

Why ratios sit next to absolute numbers: absolute queries/s on a shared 2-core VM move
with whatever else runs, but servers measured in the same run, interleaved, see the same
machine, so `x unbound` is the number to compare across machines.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata

from dnsperf import Result

EXPECTED_RCODE = {"blocked": "NXDOMAIN", "firstsight": "NXDOMAIN", "hit": "NOERROR",
                  "wide": "NOERROR", "miss": "NOERROR"}

MIX_TITLES = {
    "blocked": "blocked: names from the 100k list, answered NXDOMAIN by every server",
    "firstsight": "first-sight blocked: never-repeated random subdomains of listed names "
                  "(NXDOMAIN; no reply memo or per-name memory can help)",
    "hit": "cache hit: 1,000 names under bench.test, warmed with one pass first",
    "wide": "wide cache: ~90k distinct cached names under bench.test at full rate (a reply "
            "memo rarely answers; dnsmasq's cache holds at most 10,000 of them)",
    "miss": "cache miss: unique names under bench.test, each forwarded to nsd",
}


@dataclass
class Measurement:
    """One server on one mix in one round: a peak run and a rate-limited latency run."""

    server: str
    mix: str
    round: int
    peak: Result
    cpu_us: float  # server CPU (user+sys) per completed query in the peak run
    rss_kib: int  # after the peak run
    cpu_s: float = 0.0  # server CPU seconds (user+sys, /proc/<pid>/stat) during the peak run
    latency: Result | None = None
    rate: float = 0.0  # the -Q of the latency run
    fixed: Result | None = None  # a run at the same -Q for every server
    fixed_cpu_us: float = 0.0  # server CPU per query in that run
    fixed_steal: float | None = None  # share of the machine's CPU time stolen during it


@dataclass
class ScaleRow:
    """hushdns (or an anchor) started with a list of `size` domains."""

    server: str
    size: int
    ready_s: float
    rss_kib: int
    peak: Result
    cpu_us: float
    round: int = 0


@dataclass
class Flood:
    """hushdns under a flood of unique names with a small cache: RSS over time."""

    entries: int
    answered: int
    qps: float
    rss_start_kib: int
    samples: list[tuple[float, int]]  # (seconds since start, RSS KiB)


@dataclass
class Report:
    settings: dict[str, object]
    machine: dict[str, str]
    startup: dict[str, tuple[float, int]] = field(default_factory=dict)  # server -> (s, KiB)
    measurements: list[Measurement] = field(default_factory=list)
    scale: list[ScaleRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixed_rate: float = 0.0
    fixed_rate_miss: float = 0.0
    flood: Flood | None = None


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the numbers were measured on (they mean nothing without it)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    dnsperf_v = "unknown"
    try:
        out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=10)
        m = re.search(r"Version (\S+)", out.stdout + out.stderr)
        dnsperf_v = m.group(1) if m else dnsperf_v
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu} x {os.cpu_count()} (nproc)",
        "kernel": platform.release(),
        "python": f"{sys.version.split()[0]} ({platform.python_implementation()})",
        "uvloop": _version("uvloop"),
        "dnslib": _version("dnslib"),
        "unbound": _first_line(["unbound", "-V"]),
        "dnsmasq": _first_line(["dnsmasq", "--version"]),
        "nsd": _first_line(["nsd", "-v"]),
        "dnsperf": dnsperf_v,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f}"


def _int(x: int | None) -> str:
    return "-" if x is None else str(x)


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or x != x else f"{x:,.{digits}f}"


def _answers(mix: str, rcodes: dict[str, int]) -> str:
    """'ok' when every answer has the expected RCODE, else the breakdown (a wrong answer fast
    is not a result)."""
    total = sum(rcodes.values())
    want = EXPECTED_RCODE[mix]
    if total and rcodes.get(want, 0) == total:
        return "ok"
    return ", ".join(f"{k} {v}" for k, v in sorted(rcodes.items())) or "no answers"


def _rcodes(results: Iterable[Result]) -> dict[str, int]:
    """The RCODE counts of several dnsperf runs, summed."""
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.rcodes.items():
            total[k] = total.get(k, 0) + v
    return total


def _agg(ms: list[Measurement]) -> dict[str, object]:
    """Median over rounds of each number (one round: the numbers themselves)."""
    lat = [m.latency for m in ms if m.latency is not None]
    fixed = [m.fixed for m in ms if m.fixed is not None]
    rcodes = _rcodes(r for m in ms for r in (m.peak, m.latency, m.fixed) if r is not None)
    return {
        "qps": _med([m.peak.qps for m in ms]),
        "lost": int(_med([m.peak.lost for m in ms])),
        "avg": _med([m.peak.avg for m in ms]),
        "cpu_us": _med([m.cpu_us for m in ms]),
        # Queries answered per CPU-second of the server = qps / (CPU-s / wall-s): what the
        # server gets out of a core, whether or not the load generator saturated it.
        "per_cpu": _med([m.peak.completed / m.cpu_s for m in ms if m.cpu_s > 0]),
        "rss": _med([m.rss_kib for m in ms]),
        "rate": _med([m.rate for m in ms]),
        "lat_lost": int(_med([r.lost for r in lat])) if lat else None,
        "lat_avg": _med([r.avg for r in lat]) if lat else None,
        "p99": _med([r.p99 for r in lat if r.p99 is not None]) if lat else None,
        "fixed_qps": _med([r.qps for r in fixed]) if fixed else None,
        "fixed_lost": int(_med([r.lost for r in fixed])) if fixed else None,
        "fixed_p50": _med([r.p50 for r in fixed if r.p50 is not None]) if fixed else None,
        "fixed_p99": _med([r.p99 for r in fixed if r.p99 is not None]) if fixed else None,
        "fixed_cpu": _med([m.fixed_cpu_us for m in ms if m.fixed]) if fixed else None,
        "early": any(m.peak.ended_early for m in ms),
        "answers": "template" if ms[0].server == "baseline" else _answers(ms[0].mix, rcodes),
    }


def render(rep: Report) -> str:
    out = ["# hushdns benchmark results", ""]
    out += ["Generated by `python bench/run.py` (see bench/README.md). Absolute numbers are only",
            "comparable on the same machine in the same run; compare the `x unbound` ratios.", ""]
    out += ["## Machine", ""]
    out += [f"- {k}: {v}" for k, v in rep.machine.items()]
    out += ["", "## Settings", ""]
    out += [f"- {k}: {v}" for k, v in rep.settings.items()]
    if rep.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    if rep.startup:
        out += ["", "## Startup (100k-name list)", "", "| server | ready (s) | RSS at start (MiB) |",
                "|---|---:|---:|"]
        for name, (secs, kib) in rep.startup.items():
            out.append(f"| {name} | {secs:.2f} | {kib / 1024:.1f} |")
    servers = list(dict.fromkeys(m.server for m in rep.measurements))
    for mix in dict.fromkeys(m.mix for m in rep.measurements):
        rows = {s: _agg([m for m in rep.measurements if m.server == s and m.mix == mix])
                for s in servers if any(m.server == s and m.mix == mix for m in rep.measurements)}
        ref = rows.get("unbound")
        fixed_rate = rep.fixed_rate_miss if mix == "miss" else rep.fixed_rate
        out += ["", f"## {MIX_TITLES.get(mix, mix)}", ""]
        out += ["**peak**: no rate limit; **@50%**: half the server's own peak; "
                f"**@fixed**: {fixed_rate:,.0f} queries/s for every server, so its CPU per "
                "query is the like-for-like cost (per-query CPU grows as the rate falls: "
                "fewer packets per wakeup).", ""]
        out += ["**q/CPU-s**: answers per CPU-second of the server process in the peak run "
                "(completed / its user+system seconds from /proc/<pid>/stat): the ratio that "
                "still means something when a server was not CPU-bound (dnsperf shares the "
                "cores).", ""]
        out += ["| server | peak qps | x unbound | q/CPU-s | x unbound | lost | avg ms "
                "| CPU µs/q | @50% qps | lost | p99 ms "
                "| @fixed qps | lost | p50 ms | p99 ms | CPU µs/q | x unbound CPU "
                "| RSS MiB | answers |",
                "|---|" + "---:|" * 17 + "---|"]
        for s, a in rows.items():
            ratio = f"{a['qps'] / ref['qps']:.2f}" if ref and ref["qps"] else "-"
            pratio = (f"{a['per_cpu'] / ref['per_cpu']:.2f}"
                      if ref and ref["per_cpu"] == ref["per_cpu"] and ref["per_cpu"]
                      and a["per_cpu"] == a["per_cpu"] else "-")
            cratio = (f"{a['fixed_cpu'] / ref['fixed_cpu']:.2f}"
                      if ref and ref["fixed_cpu"] and a["fixed_cpu"] else "-")
            early = " (input used up)" if a["early"] else ""
            out.append(
                f"| {s} | {a['qps']:,.0f}{early} | {ratio} | {_num(a['per_cpu'])} | {pratio} "
                f"| {a['lost']} | {_ms(a['avg'])} "
                f"| {a['cpu_us']:.1f} | {a['rate']:,.0f} | {_int(a['lat_lost'])} "
                f"| {_ms(a['p99'])} | {_num(a['fixed_qps'])} | {_int(a['fixed_lost'])} "
                f"| {_ms(a['fixed_p50'])} | {_ms(a['fixed_p99'])} | {_num(a['fixed_cpu'], 1)} "
                f"| {cratio} | {a['rss'] / 1024:.1f} | {a['answers']} |")
        steals = {s: [m.fixed_steal for m in rep.measurements
                      if m.server == s and m.mix == mix and m.fixed_steal is not None]
                  for s in rows}
        if any(steals.values()):
            out += ["", "CPU steal during the @fixed runs (share of the machine's CPU time the "
                    "hypervisor gave to other guests; a stolen millisecond is a millisecond of "
                    "latency for whatever was in flight, whichever server it was): "
                    + ", ".join(f"{s} {', '.join(f'{x:.0%}' for x in v)}"
                                for s, v in steals.items() if v) + "."]
    if rep.scale:
        out += ["", "## List scale: the same server with small and large lists", "",
                "The servers run side by side; short blocked runs alternate between them, round "
                "after round (the first run of each server is an unmeasured warm-up). Queries "
                "are 100k distinct names *under* listed ones (`q<n>.<listed>`, blocked as "
                "subdomains), for every list size, so only the index size differs between the "
                "rows. `ready` is spawn to first answer (interpreter start included); RSS is "
                "the largest seen. The ratios are taken within each round, between runs "
                "seconds apart, because load from elsewhere on a shared machine changes over "
                "seconds: median and range over the rounds.", "",
                "| server | listed domains | ready (s) | RSS MiB | blocked qps | CPU µs/query "
                "| answers |", "|---|---:|---:|---:|---:|---:|---|"]
        out += _scale_rows(rep.scale)
    if rep.flood and rep.flood.samples:
        f = rep.flood
        fill_s = f.entries / f.qps if f.qps else float("inf")
        out += ["", "## Cache flood: unique names past cache.max_entries", "",
                f"hushdns with `cache.max_entries: {f.entries:,}` answered {f.answered:,} unique "
                f"names ({f.qps:,.0f}/s), so the cache was full after about {fill_s:.0f} s. "
                f"RSS before the flood: {f.rss_start_kib / 1024:.1f} MiB.", "",
                "| seconds | RSS MiB | cache |", "|---:|---:|---|"]
        step = max(1, len(f.samples) // 8)
        picks = f.samples[::step]
        if picks[-1] is not f.samples[-1]:
            picks.append(f.samples[-1])
        for t, kib in picks:
            out.append(f"| {t:.1f} | {kib / 1024:.1f} | {'full' if t >= fill_s else 'filling'} |")
        full = [k for t, k in f.samples if t >= fill_s]
        if len(full) >= 2:
            out += ["", f"Once full: RSS {full[0] / 1024:.1f} -> {full[-1] / 1024:.1f} MiB "
                    f"({(full[-1] - full[0]) / 1024:+.1f} MiB)."]
    out.append("")
    return "\n".join(out)


def _scale_rows(scale: list[ScaleRow]) -> list[str]:
    """One row per (server, size) with medians, then per server the largest vs smallest list."""
    out: list[str] = []
    groups: dict[tuple[str, int], list[ScaleRow]] = {}
    for r in scale:
        groups.setdefault((r.server, r.size), []).append(r)
    sizes: dict[str, list[int]] = {}
    for (server, size), rs in groups.items():
        rcodes = _rcodes(r.peak for r in rs)
        out.append(f"| {server} | {size:,} | {rs[0].ready_s:.2f} "
                   f"| {max(r.rss_kib for r in rs) / 1024:.1f} "
                   f"| {_med([r.peak.qps for r in rs]):,.0f} | {_med([r.cpu_us for r in rs]):.1f} "
                   f"| {_answers('blocked', rcodes)} |")
        sizes.setdefault(server, []).append(size)
    for server, ss in sizes.items():
        if len(ss) < 2:
            continue
        lo, hi = groups[(server, min(ss))], groups[(server, max(ss))]
        by_round = {r.round: r for r in lo}
        pairs = [(h, by_round[h.round]) for h in hi if h.round in by_round]
        qps = sorted(h.peak.qps / low.peak.qps for h, low in pairs if low.peak.qps)
        cpu = sorted(h.cpu_us / low.cpu_us for h, low in pairs if low.cpu_us)
        if not qps or not cpu:
            continue
        out.append("")
        out.append(
            f"{server}: {max(ss):,} vs {min(ss):,} domains: "
            f"+{hi[0].ready_s - lo[0].ready_s:.2f} s to ready, "
            f"+{(max(r.rss_kib for r in hi) - max(r.rss_kib for r in lo)) / 1024:.1f} MiB RSS, "
            f"blocked qps x{_med(qps):.2f} (x{qps[0]:.2f}-{qps[-1]:.2f}), "
            f"CPU/query x{_med(cpu):.2f} (x{cpu[0]:.2f}-{cpu[-1]:.2f}): "
            f"medians and ranges of {len(pairs)} rounds.")
    return out

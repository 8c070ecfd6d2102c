"""Run dnsperf and turn its output into numbers.

dnsperf 2.10 (Debian) reports only the mean latency; it has no percentile or histogram
option (`dnsperf -H` lists only num-queries-per-conn, suppress, doh-*).  So p99 comes
from `-v`, which prints one line per answered query (``> NOERROR name A 0.000123``).
Printing costs dnsperf time, so `-v` is used only in the rate-limited (-Q) latency run,
never in the peak-throughput run.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_NUM = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "runtime": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg": r"Average Latency \(s\):\s+([\d.]+)",
}


@dataclass
class Result:
    """One dnsperf run, latencies in seconds."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    runtime: float = 0.0
    qps: float = 0.0
    avg: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    ended_early: bool = False  # ran out of input before the time limit
    argv: list[str] = field(default_factory=list)


def parse(text: str) -> Result:
    """Parse dnsperf's summary (and per-query lines, when run with -v)."""
    r = Result()
    for key, rx in _NUM.items():
        m = re.search(rx, text)
        if m is None:
            raise ValueError(f"dnsperf output has no {key!r}:\n{text[-2000:]}")
        setattr(r, key, type(getattr(r, key))(m.group(1)))
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            r.rcodes[code] = int(n)
    r.ended_early = "Testing complete (end of file)" in text
    lat = []
    for line in text.splitlines():
        # "> NOERROR name type latency"; a timed-out query is "> T name type", no latency
        # (it is counted in ``lost``): only answered queries have a latency to rank.
        if line.startswith("> "):
            with contextlib.suppress(ValueError, IndexError):
                lat.append(float(line.rsplit(None, 1)[1]))
    if lat:
        lat.sort()
        r.p50 = percentile(lat, 50)
        r.p99 = percentile(lat, 99)
        r.max = lat[-1]
    return r


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = math.ceil(pct / 100 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def run(port: int, queries: Path, *, duration: float, clients: int = 4, outstanding: int = 100,
        rate: float | None = None, once: bool = False, verbose: bool = False,
        timeout: float = 2.0, prefix: list[str] | None = None) -> Result:
    """One dnsperf run against 127.0.0.1:`port`, bounded by `duration` seconds.

    `once` stops after one pass over the file (unique-name runs must never wrap around,
    or the second pass would be cache hits).  `rate` caps queries/s (-Q).
    """
    argv = [*(prefix or []), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
            "-l", f"{duration:g}", "-c", str(clients), "-q", str(outstanding),
            "-t", f"{timeout:g}"]
    if once:
        argv += ["-n", "1"]
    if rate:
        argv += ["-Q", str(int(rate))]
    if verbose:
        argv += ["-v"]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=duration + timeout + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {proc.stderr[-2000:]}")
    r = parse(proc.stdout)
    r.argv = argv
    return r

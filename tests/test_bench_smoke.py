"""The benchmark harness still runs and still produces its table (not a timed test).

Why: bench/run.py drives four Debian programs through generated configs; a change in
hushdns' config keys or in a package's config syntax would otherwise only surface when
someone sits down to benchmark.  Nothing here asserts a speed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

sys.path.insert(0, str(ROOT / "bench"))
import dnsperf  # noqa: E402  (bench/ is scripts, not a package)


def _missing(*programs: str) -> list[str]:
    return [p for p in programs if shutil.which(p) is None]


def _run(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--duration", "1", "--latency-duration", "1",
         "--rounds", "1", "--fixed-rate", "1000", "--scale-duration", "1", "--wide-names", "2000",
         "--out", str(out), *args],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out.read_text()


def _rows(md: str, section: str) -> dict[str, list[str]]:
    """Table rows of the section whose heading starts with `section`, keyed by server."""
    part = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("server", "") and not cells[0].startswith("-"):
            rows[cells[0]] = cells
    return rows


SAMPLE = """\
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         1500
  Queries completed:    1498 (99.87%)
  Queries lost:         2 (0.13%)

  Response codes:       NOERROR 1400 (93.46%), NXDOMAIN 98 (6.54%)
  Average packet size:  request 33, response 49
  Run time (s):         1.000130
  Queries per second:   1497.805286

  Average Latency (s):  0.000080 (min 0.000020, max 0.000950)
  Latency StdDev (s):   0.000030
"""


def test_dnsperf_summary_and_per_query_latencies_are_parsed() -> None:
    per_query = "".join(f"> NOERROR n{i}.bench.test A 0.{i:06d}\n" for i in range(1, 101))
    # What dnsperf -v prints for a query that timed out (seen on a loaded CI machine): no latency.
    per_query += "> T lost1.bench.test A\n> T lost2.bench.test AAAA\n"
    r = dnsperf.parse(per_query + SAMPLE)
    assert (r.sent, r.completed, r.lost) == (1500, 1498, 2)
    assert r.qps == pytest.approx(1497.805286)
    assert r.avg == pytest.approx(0.00008)
    assert r.rcodes == {"NOERROR": 1400, "NXDOMAIN": 98}
    assert r.p50 == pytest.approx(0.000050)
    assert r.p99 == pytest.approx(0.000099)
    assert not r.ended_early


def test_dnsperf_output_without_summary_is_an_error() -> None:
    with pytest.raises(ValueError):
        dnsperf.parse("[Status] Sending queries\n")


@pytest.mark.skipif(bool(_missing("dnsperf", "nsd", "unbound")),
                    reason=f"needs dnsperf, nsd and unbound: missing {_missing('dnsperf', 'nsd', 'unbound')}")
def test_harness_runs_each_mix_against_unbound(tmp_path: Path) -> None:
    md = _run(tmp_path, "--servers", "unbound", "--scale", "none")
    assert "## Machine" in md and "nproc" in md
    for section in ("blocked", "first-sight blocked", "cache hit", "wide cache", "cache miss"):
        rows = _rows(md, section)
        assert set(rows) == {"unbound"}, section
        cells = rows["unbound"]
        assert float(cells[1].split()[0].replace(",", "")) > 0, cells  # peak qps parsed
        assert cells[2] == "1.00"  # ratio to itself
        assert float(cells[3].replace(",", "")) > 0, cells  # queries per CPU-second
        assert cells[4] == "1.00", cells
        assert cells[-1] == "ok", cells  # every answer had the expected RCODE


@pytest.mark.skipif(bool(_missing("dnsperf", "nsd")), reason="needs dnsperf and nsd")
@pytest.mark.skipif(not (ROOT / "resolver" / "server.py").exists(), reason="core not merged yet")
def test_harness_runs_hushdns_and_the_list_scale_run(tmp_path: Path) -> None:
    md = _run(tmp_path, "--servers", "hushdns,hushdns-nomemo",
              "--mixes", "blocked,firstsight,hit,wide", "--scale", "100,1000")
    for section in ("blocked", "first-sight blocked", "cache hit", "wide cache"):
        rows = _rows(md, section)
        assert set(rows) == {"hushdns", "hushdns-nomemo"}, section
        assert all(r[-1] == "ok" for r in rows.values()), rows
    scale = md.split("## List scale", 1)[1]
    sizes = re.findall(r"^\| hushdns \| ([\d,]+) \|.*\| ok \|$", scale, re.M)
    assert sizes == ["100", "1,000"], scale
    assert re.search(r"hushdns: 1,000 vs 100 domains: .* blocked qps x[\d.]+ \(x[\d.]+-[\d.]+\), "
                     r"CPU/query x[\d.]+ .*medians and ranges of 2 rounds", scale), scale


def test_first_sight_names_never_repeat_and_sit_under_listed_names() -> None:
    import data  # noqa: PLC0415  (bench/ on sys.path above)
    listed = data.blocklist_names(50)
    a = data.first_sight_names(listed, "1", 5000)
    b = data.first_sight_names(listed, "2", 5000)
    assert len(set(a) | set(b)) == 10_000   # within a run and across runs
    assert all(n.split(".", 1)[1] in listed for n in a)
    assert len(set(data.wide_names(90_000))) == 90_000


@pytest.mark.skipif(bool(_missing("unbound", "dnsperf")), reason="needs Debian unbound and dnsperf")
def test_the_encrypted_dns_bench_runs() -> None:
    """bench/encrypted.py (UDP vs DoT vs DoH misses to one unbound, memory per connection) still runs."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "encrypted.py"), "--seconds", "0.5",
                           "--rounds", "1", "--conns", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in (r"  tls  : +\d+ qps \([\d.]+x UDP\)", r"  https: +\d+ qps \([\d.]+x UDP\)",
                 r"idle tls upstream connection: [\d.]+ KiB", r"served https client: [\d.]+ KiB"):
        assert re.search(line, proc.stdout), proc.stdout

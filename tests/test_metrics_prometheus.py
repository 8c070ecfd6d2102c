"""hushdns scraped by a real Prometheus: exact per-client counts, and every dashboard query works.

Known traffic goes from client sockets bound to 127.0.0.2..5 to the real Server;
a real ``prometheus`` (Debian package) scrapes /metrics every second; then every
PromQL expression of dashboards/hushdns.json is evaluated through Prometheus's
HTTP API the way Grafana would send it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.config import load_config
from tests.dashboard_queries import load_dashboard, substitute, targets
from tests.fakes import FakeUpstream, ServerThread

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")

# No proxy, ever: every request here goes to 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

XIAOMI = "api.account.xiaomi.com\ntracking.miui.com\n"
ADS = "ads.example\n"

# (source address, name, qtype) -> how many times; the expected metrics follow from it.
# max_clients is 3: .2, .3 and .4 ask first (ALLOWED is sent first) and take the
# slots; .5 is counted as "other".
LABEL = {"127.0.0.2": "redmi", "127.0.0.3": "127.0.0.3", "127.0.0.4": "127.0.0.4",
         "127.0.0.5": "other"}
BLOCKED = {
    ("127.0.0.2", "api.account.xiaomi.com", "A"): 4,
    ("127.0.0.2", "sub.tracking.miui.com", "AAAA"): 3,
    ("127.0.0.2", "ads.example", "A"): 1,
    ("127.0.0.3", "api.account.xiaomi.com", "A"): 2,
    ("127.0.0.3", "x.ads.example", "A"): 5,
    ("127.0.0.5", "tracking.miui.com", "A"): 6,
}
ALLOWED = {
    ("127.0.0.2", "www.example.org", "A"): 3,    # 1 forwarded, 2 cached
    ("127.0.0.3", "mail.example.org", "A"): 2,
    ("127.0.0.4", "www.example.org", "A"): 4,    # client .4 never hits a list
    ("127.0.0.5", "news.example.org", "A"): 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with _opener.open(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def ask(server: ServerThread, source: str, name: str, qtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, qtype)
    return dns.query.udp(q, server.host, port=server.port, timeout=5, source=source)


def send(server: ServerThread, traffic: dict[tuple[str, str, str], int], share: float) -> None:
    """Send ``share`` of each line's count (the first half, or the rest)."""
    for (source, name, qtype), n in traffic.items():
        first = n // 2
        for _ in range(first if share < 1 else n - first):
            r = ask(server, source, name, qtype)
            blocked = (source, name, qtype) in BLOCKED
            assert r.rcode() == (dns.rcode.NXDOMAIN if blocked else dns.rcode.NOERROR), (name, r)


@pytest.fixture
def hushdns(tmp_path: Path) -> Iterator[ServerThread]:
    up = FakeUpstream()
    (tmp_path / "xiaomi.txt").write_text(XIAOMI)
    (tmp_path / "ads.txt").write_text(ADS)
    # A device the router leased an address to that never asks hushdns: "silent on DNS".
    (tmp_path / "dnsmasq.leases").write_text(
        "1764800000 aa:bb:cc:00:00:06 127.0.0.6 old-tablet *\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        'listen: ["127.0.0.1:0"]\n'
        f'upstreams: ["{up.address}"]\n'
        "clients:\n  redmi: [127.0.0.2]\n"
        "blocking:\n  mode: nxdomain\n  lists:\n"
        "    xiaomi: {source: xiaomi.txt, track_domains: true}\n"
        "    ads: ads.txt\n"
        'metrics: {listen: "127.0.0.1:0", max_clients: 3}\n'
        "devices: {leases: [dnsmasq.leases], neighbours: false}\n")
    server = ServerThread(load_config(cfg), reload_config=lambda: load_config(cfg))
    try:
        yield server
    finally:
        server.stop()
        up.close()


@pytest.fixture
def prometheus(tmp_path: Path, hushdns: ServerThread) -> Iterator[tuple[str, str]]:
    """A real Prometheus scraping hushdns every second; yields (API base URL, instance)."""
    host, port = hushdns.server.metrics_server.address
    instance = f"{host}:{port}"
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: hushdns\n    static_configs:\n"
        f"      - targets: ['{instance}']\n")
    web = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    log = (prom_dir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={prom_dir / 'prometheus.yml'}",
         f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address={web}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://{web}"
    try:
        def scraped_up() -> bool:
            assert proc.poll() is None, (prom_dir / "prometheus.log").read_text()
            res = api(base, "/api/v1/query", query=f'up{{instance="{instance}"}}')["result"]
            return bool(res) and res[0]["value"][1] == "1"

        wait_for("Prometheus to scrape hushdns", scraped_up)
        yield base, instance
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def expected_blocked() -> dict[tuple[str, str], int]:
    """(client label, list) -> count, from the traffic table."""
    out: Counter[tuple[str, str]] = Counter()
    for (source, name, _), n in BLOCKED.items():
        out[(LABEL[source], "ads" if "ads.example" in name else "xiaomi")] += n
    return dict(out)


def expected_domains() -> dict[str, int]:
    out: Counter[str] = Counter()
    for (_, name, _), n in BLOCKED.items():
        if "ads.example" not in name:
            out["tracking.miui.com" if name.endswith("tracking.miui.com") else name] += n
    return dict(out)


def vector(base: str, query: str) -> dict[tuple[tuple[str, str], ...], float]:
    res = api(base, "/api/v1/query", query=query)
    assert res["resultType"] == "vector", res
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in res["result"]}


def test_prometheus_sees_exact_per_client_counts_and_every_dashboard_query_works(
        hushdns: ServerThread, prometheus: tuple[str, str]) -> None:
    base, instance = prometheus
    sel = f'instance="{instance}"'

    # Bare addresses in the device clock (the query log's writer keeps them too) are no
    # devices: the silent panel must not list them, however old.
    hushdns.server.stats.device_last_query.update({"127.0.0.9": 1.0, "fd00::9": 1.0})
    # Half the traffic, a scrape, then the rest: the series exist before the second
    # half, so rate()/increase() in the dashboard see real increases.
    send(hushdns, {**ALLOWED, **BLOCKED}, 0.5)
    wait_for("first half scraped", lambda: vector(
        base, f"sum(hushdns_queries_total{{{sel}}})") == {(): float(
            sum(n // 2 for n in {**ALLOWED, **BLOCKED}.values()))})
    send(hushdns, {**ALLOWED, **BLOCKED}, 1.0)
    total = sum(BLOCKED.values()) + sum(ALLOWED.values())
    wait_for("all traffic scraped", lambda: vector(
        base, f"sum(hushdns_queries_total{{{sel}}})") == {(): float(total)})

    # The per-client hit counts, exactly as sent (client .5 is past max_clients: "other").
    got = vector(base, f"sum by (client, list) (hushdns_blocked_total{{{sel}}})")
    assert {(dict(k)["client"], dict(k)["list"]): v for k, v in got.items()} == {
        k: float(v) for k, v in expected_blocked().items()}
    got = vector(base, f'sum by (client) (hushdns_queries_total{{{sel}, result="blocked"}})')
    per_client: Counter[str] = Counter()
    for (source, _, _), n in BLOCKED.items():
        per_client[LABEL[source]] += n
    assert {dict(k)["client"]: v for k, v in got.items()} == {
        k: float(v) for k, v in per_client.items()}
    got = vector(base, f"sum by (domain) (hushdns_blocked_domains_total{{{sel}}})")
    assert {dict(k)["domain"]: v for k, v in got.items()} == {
        k: float(v) for k, v in expected_domains().items()}
    # The untracked list never gets per-domain series.
    assert vector(base, f'hushdns_blocked_domains_total{{{sel}, list="ads"}}') == {}
    clients = api(base, "/api/v1/label/client/values",
                  **{"match[]": f"hushdns_queries_total{{{sel}}}"})
    assert sorted(clients) == sorted(set(LABEL.values()))

    # Grafana's instance variable: label_values(hushdns_build_info, instance).
    assert api(base, "/api/v1/label/instance/values",
               **{"match[]": "hushdns_build_info"}) == [instance]

    # Every dashboard query, as Grafana would send it for this instance.
    checked = 0
    for panel, target in targets(load_dashboard()):
        expr = substitute(target["expr"], instance=instance.replace(".", "\\\\."),
                          rate_interval="1m", range_="10m")
        res = api(base, "/api/v1/query", query=expr)
        assert res["resultType"] in ("vector", "scalar"), (panel["title"], expr, res)
        assert res["result"], f"{panel['title']} ({target['refId']}): no data for {expr}"
        checked += 1
    assert checked >= 15

    # Spot-check a few dashboard answers against the traffic.
    share = vector(base, substitute(
        next(t["expr"] for p, t in targets(load_dashboard())
             if p["title"] == "Blocked share per client" and t["refId"] == "C"),
        instance=instance.replace(".", "\\\\."), rate_interval="1m", range_="10m"))
    share_by = {dict(k)["client"]: v for k, v in share.items()}
    assert share_by["127.0.0.4"] == 0.0          # asked only allowed names
    assert 0 < share_by["redmi"] < 1
    assert share_by["other"] > 0.5
    def panel(title: str, ref: str = "A") -> dict[tuple[tuple[str, str], ...], float]:
        return vector(base, substitute(
            next(t["expr"] for p, t in targets(load_dashboard())
                 if p["title"] == title and t["refId"] == ref),
            instance=instance.replace(".", "\\\\."), rate_interval="1m", range_="10m"))

    # The device x vendor table: the exact counts sent, integers, no zero rows.
    vendor = panel("Blocked per device and vendor")
    assert {(dict(k)["client"], dict(k)["list"]): v for k, v in vendor.items()} == {
        k: float(v) for k, v in expected_blocked().items()}
    counts = panel("Blocked share per client", "B")
    assert {dict(k)["client"]: v for k, v in counts.items()} == {
        label: float(sum(n for (src, _, _), n in {**ALLOWED, **BLOCKED}.items() if LABEL[src] == label))
        for label in set(LABEL.values())}
    # Silent on DNS: the leased device that never asked (0: "never"), not the busy ones.
    silent = panel("Devices silent on DNS")
    assert {dict(k)["client"]: v for k, v in silent.items()} == {"old-tablet": 0.0}
    ages = vector(base, f"time() - hushdns_list_last_success_timestamp_seconds{{{sel}}}")
    assert len(ages) == 2 and all(0 <= v < 600 for v in ages.values())
    up = vector(base, f"hushdns_upstream_up{{{sel}}}")
    assert len(up) == 1 and list(up.values()) == [1.0]
    entries = vector(base, f"hushdns_list_entries{{{sel}}}")
    assert {dict(k)["list"]: v for k, v in entries.items()} == {"xiaomi": 2.0, "ads": 1.0}

"""dashboards/: Prometheus config and alert rules through promtool; the Grafana JSON's shape."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboard_queries import DASHBOARDS, load_dashboard, panels, substitute, targets

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; CI installs it)")


def promtool(*args: str, cwd: Path = DASHBOARDS) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


# ---------------------------------------------------------------- promtool


@needs_promtool
def test_prometheus_example_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out


@needs_promtool
def test_scale_out_scrape_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus-scale-out.yml")
    assert "SUCCESS: 1 rule files found" in out


@needs_promtool
def test_alert_rules_are_valid_and_lint_clean() -> None:
    out = promtool("check", "rules", "alerts.yml")
    assert "SUCCESS: 9 rules found" in out


@needs_promtool
def test_alert_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    required = {"HushdnsUpstreamErrorRateHigh", "HushdnsListFailing", "HushdnsNoQueries",
                "HushdnsConfigReloadFailed"}
    assert required <= alerts
    tests = yaml.safe_load((DASHBOARDS / "alerts_test.yml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == alerts, f"never shown firing: {alerts - firing}"
    assert quiet == alerts, f"never shown quiet: {alerts - quiet}"


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule): catches typos without a server."""
    exprs = [substitute(t["expr"]) for _, t in targets(load_dashboard())]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", "--lint=none", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(exprs)} rules found" in out


# ---------------------------------------------------------------- Grafana JSON


def test_dashboard_declares_a_prometheus_input_and_both_variables() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] == "hushdns" and dash["id"] is None
    inputs = dash["__inputs"]
    assert [i["pluginId"] for i in inputs if i["type"] == "datasource"] == ["prometheus"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "${" + inputs[0]["name"] + "}"
    inst = variables["instance"]
    assert inst["type"] == "query"
    assert inst["datasource"]["uid"] == "${datasource}"
    assert inst["query"]["query"] == inst["definition"] == "label_values(hushdns_build_info, instance)"
    assert inst["multi"] is True and inst["includeAll"] is True and inst["allValue"] == ".*"
    for name, query in (("device", 'label_values(hushdns_queries_total{instance=~"$instance"}, client)'),
                        ("list", 'label_values(hushdns_list_entries{instance=~"$instance"}, list)')):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        assert v["query"]["query"] == v["definition"] == query
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".*"


SELECTOR = re.compile(r"\b(hushdns_[a-z_]+)(\{[^}]*\})?")


def test_every_query_is_filtered_by_instance_and_uses_grafana_windows() -> None:
    count = 0
    for panel, t in targets(load_dashboard()):
        expr = t["expr"]
        count += 1
        assert t["datasource"]["uid"] == "${datasource}", panel["title"]
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{panel['title']}: no hushdns series in {expr}"
        for name, labels in selectors:
            assert 'instance=~"$instance"' in labels, f"{panel['title']}: {name} unfiltered"
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{panel['title']}: [{window}]"
        # rate() wants $__rate_interval; totals over the picked range use $__range.
        for fn, window in re.findall(r"\b(rate|increase)\([^\[]*\[([^\]]*)\]", expr):
            assert (fn, window) in (("rate", "$__rate_interval"), ("increase", "$__range")), expr
    assert count >= 15


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    dash = load_dashboard()
    by_title = {p["title"]: p for p in panels(dash)}
    wanted = {
        "Queries/s by result": "hushdns_queries_total",
        "Blocked/s per client": "hushdns_blocked_total",
        "Blocked share per client": "hushdns_blocked_total",
        "Top blocked lists": "hushdns_blocked_total",
        "Vendor endpoints being called": "hushdns_blocked_domains_total",
        "Upstream latency p50 / p95 / p99": "hushdns_upstream_duration_seconds_bucket",
        "Upstream error ratio": "hushdns_upstream_requests_total",
        "Cache hit ratio": "hushdns_cache_hits_total",
        "List sizes": "hushdns_list_entries",
        "Age of last successful load": "hushdns_list_last_success_timestamp_seconds",
        "Blocked per device and vendor": "hushdns_blocked_total",
        "Devices silent on DNS": "hushdns_device_last_query_timestamp_seconds",
    }
    for title, series in wanted.items():
        assert title in by_title, title
        assert any(series in t["expr"] for t in by_title[title]["targets"]), title
    stacked = by_title["Blocked/s per client"]["fieldConfig"]["defaults"]["custom"]["stacking"]
    assert stacked["mode"] == "normal"
    assert by_title["Blocked share per client"]["type"] == "table"
    quantiles = [t["expr"] for t in by_title["Upstream latency p50 / p95 / p99"]["targets"]]
    assert [q.split(",")[0] for q in quantiles] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]
    assert "time() - hushdns_list_last_success_timestamp_seconds" in \
        by_title["Age of last successful load"]["targets"][0]["expr"]


def test_counts_are_exact_not_extrapolated_and_ratios_never_divide_by_zero() -> None:
    """Tables and bars that show counts over the range subtract the counter's value at the
    range's start (no extrapolation: 24 queries show 24, not 23.67); a share divides
    only by a non-zero count (no NaN rows)."""
    by_title = {p["title"]: p for p in panels(load_dashboard())}
    for title in ("Blocked per device and vendor", "Blocked share per client", "Top blocked lists",
                  "Vendor endpoints being called"):
        for t in by_title[title]["targets"]:
            assert "increase(" not in t["expr"] and "offset $__range) >= 0 or" in t["expr"], title
    share = by_title["Blocked share per client"]["targets"][2]["expr"]
    assert share.endswith(" > 0)")
    vendor = by_title["Blocked per device and vendor"]["targets"][0]["expr"]
    assert 'client=~"$device"' in vendor and 'list=~"$list"' in vendor and vendor.endswith("> 0)")
    silent = by_title["Devices silent on DNS"]["targets"][0]["expr"]
    assert "> 3600" in silent and "== 0" in silent


def test_panel_layout_is_sane() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    for p in panels(dash):
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]

"""Reads the PromQL out of dashboards/hushdns.json, with Grafana's variables filled in.

Shared by the structural tests and the real-Prometheus integration test, so
both look at exactly the expressions a user's Grafana would send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD = DASHBOARDS / "hushdns.json"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including panels nested in collapsed rows."""
    for p in dash["panels"]:
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p, t


def substitute(expr: str, *, instance: str = ".*", rate_interval: str = "1m",
               range_: str = "5m", interval: str = "15s", device: str = ".*",
               list_: str = ".*") -> str:
    """Fill in Grafana's variables the way Grafana would for one refresh ("All" is ``.*``)."""
    for name, value in (("instance", instance), ("__rate_interval", rate_interval),
                        ("__range", range_), ("__interval", interval), ("device", device),
                        ("list", list_)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr

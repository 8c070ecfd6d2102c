"""Client label values idle for metrics.client_idle are released (and counted), so that
rotating IPv6 privacy addresses cannot use up metrics.max_clients until a restart."""

from __future__ import annotations

import time
import urllib.request

import dns.message
import dns.query
import dns.rcode

from resolver.clients import LabelBound
from resolver.stats import Stats
from tests.fakes import free_port


def _ask_from(srv, source: str, name: str) -> None:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, srv.host, port=srv.port, timeout=5, source=source)
    assert r.rcode() == dns.rcode.NOERROR


def _clients(srv) -> set[str]:
    return {client for client, _, _ in srv.stats.queries}


def test_idle_labels_are_released_and_new_devices_get_their_own(serve):
    mport = free_port()
    srv = serve(f'metrics: {{listen: "127.0.0.1:{mport}", max_clients: 2, client_idle: 0.4}}\n'
                "clients: {printer: [127.0.0.9/32]}\n")
    for src in ("127.0.0.1", "127.0.0.2", "127.0.0.9", "127.0.0.3"):
        _ask_from(srv, src, "a.example")
    assert _clients(srv) == {"127.0.0.1", "127.0.0.2", "other"}   # .9: the bound was full
    _ask_from(srv, "127.0.0.9", "c.example")
    deadline = time.monotonic() + 5
    while srv.stats.client_labels_released < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stats.client_labels_released == 2
    assert "127.0.0.1" not in _clients(srv) and "127.0.0.2" not in _clients(srv)
    _ask_from(srv, "127.0.0.3", "b.example")     # was "other" until a restart
    assert "127.0.0.3" in _clients(srv)
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "hushdns_client_labels_released_total 2.0" in text


def test_a_label_in_use_or_configured_is_kept():
    bound = LabelBound(10, idle=5.0)
    stats = Stats()
    for label in ("busy", "quiet", "printer"):
        assert bound(label) == label
    stats.query("busy", "A", "forwarded", 0.001)
    keep = frozenset({"printer", "other"})
    assert bound.release_idle(stats, 100.0, keep, None) == []     # first look
    stats.query("busy", "A", "forwarded", 0.001)
    assert bound.release_idle(stats, 106.0, keep, None) == ["quiet"]
    assert bound.seen == {"busy", "printer"} and stats.client_labels_released == 1
    assert LabelBound(10).release_idle(stats, 1e9, keep, None) == []   # client_idle: 0

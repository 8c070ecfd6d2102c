"""resolver/devices/: lease files, the neighbour table and reverse DNS name devices.

Real files (tests/data/devices/), a fake router on 127.0.0.1 for PTR, and the
real server queried from 127.0.0.2 whose /metrics then says client="kids-tablet".
"""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dnslib
import pytest

from resolver.cli import main
from resolver.clients import ClientTable, LabelBound, UnknownClient, client_address
from resolver.config import ConfigError, load_config
from resolver.devices import DeviceNames, build_map, devices_now, read_leases
from resolver.devices.leases import Lease, detect
from resolver.devices.neighbours import parse_ip_json, parse_proc_arp
from resolver.devices.ptr import lookup_ptr
from resolver.devices.service import DeviceService
from resolver.lists.loader import Blocklists
from resolver.metrics import render, snapshot
from resolver.stats import Stats
from tests.fakes import FakeUpstream, start_server

DATA = Path(__file__).resolve().parent / "data" / "devices"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def by_addr(leases: list[Lease]) -> dict[str, tuple[str | None, str | None]]:
    return {lease.address: (lease.name, lease.mac) for lease in leases}


# ------------------------------------------------------------------ lease files


def test_dnsmasq_leases_ipv4_and_ipv6_lines() -> None:
    got = by_addr(read_leases(DATA / "dnsmasq.leases"))
    assert got == {
        "192.168.1.23": ("kids-tablet", "aa:bb:cc:00:00:01"),
        "192.168.1.24": (None, "aa:bb:cc:00:00:02"),          # '*': no name
        "192.168.1.25": ("living-room-tv", "aa:bb:cc:00:00:03"),
        "fd00::1:23": ("kids-tablet", None),                  # IAID, not a MAC
    }


def test_isc_leases_last_block_wins_and_only_active_ones_count() -> None:
    assert detect((DATA / "dhcpd.leases").read_text()) == "isc"
    got = by_addr(read_leases(DATA / "dhcpd.leases"))
    # .51 is free; .52's later block says expired ('next binding state' is not its state).
    assert got == {"192.168.1.50": ("anna-laptop", "3c:22:fb:00:00:50")}


def test_kea_csv_v4_and_v6() -> None:
    v4 = by_addr(read_leases(DATA / "kea-leases4.csv"))
    # .71 declined (state 1), .72 reclaimed by its later row (state 2); FQDN -> first label.
    assert v4 == {"192.168.1.70": ("vacuum", "08:00:27:00:00:70")}
    v6 = by_addr(read_leases(DATA / "kea-leases6.csv"))
    assert v6 == {"2001:db8:1::70": ("vacuum", "08:00:27:00:00:70")}


def test_odhcpd_state_file_and_hosts_file() -> None:
    state = by_addr(read_leases(DATA / "odhcpd.state"))
    assert state == {"fd00::a:1": ("work-phone", None), "fd00::a:2": ("work-phone", None),
                     "fd00::b:1": (None, None)}
    hosts = by_addr(read_leases(DATA / "odhcpd.hosts"))
    assert hosts == {"fd00::c:1": ("ebook", None), "fd00::c:2": ("camera", None)}


def test_a_torn_or_foreign_file_yields_what_it_can() -> None:
    from resolver.devices.leases import parse_leases

    assert parse_leases("") == []
    assert parse_leases("garbage\n1 2\n") == []
    text = (DATA / "dnsmasq.leases").read_text()
    assert by_addr(parse_leases(text[:60]))["192.168.1.23"] == ("kids-tablet", "aa:bb:cc:00:00:01")


# ------------------------------------------------------------------ neighbours -> one device


def test_one_mac_on_an_ipv4_and_two_ipv6_addresses_is_one_device() -> None:
    neigh = parse_ip_json((DATA / "ip-neigh.json").read_text())
    assert ("192.168.1.99", "") not in neigh and len(neigh) == 5   # FAILED entry skipped
    leases = read_leases(DATA / "dnsmasq.leases")
    m = build_map({}, leases, {}, neigh)
    tablet = m.devices["kids-tablet"]
    assert set(tablet.addresses) == {
        "192.168.1.23", "fd00::1:23", "2001:db8:1:0:8d3a:11ff:fe22:3344",
        "2001:db8:1:0:5c1e:9a07:41b2:77c0", "fe80::a8bb:ccff:fe00:1"}
    assert tablet.macs == ("aa:bb:cc:00:00:01",) and tablet.source == "lease"
    assert m.names["2001:db8:1:0:5c1e:9a07:41b2:77c0"] == "kids-tablet"
    assert "192.168.1.77" not in m.names           # a MAC nobody named names nothing


def test_proc_net_arp_snapshot_goes_through_the_same_merge() -> None:
    neigh = parse_proc_arp((DATA / "proc-net-arp").read_text())
    assert neigh == [("192.168.1.23", "aa:bb:cc:00:00:01"), ("192.168.1.77", "de:ad:be:ef:00:77")]
    cfg = load_config(text="clients:\n  printer: [192.168.1.77]\n", path=None)
    m = build_map(cfg.clients, [], {}, neigh)
    assert m.names == {"192.168.1.77": "printer"}
    assert m.devices["printer"].macs == ("de:ad:be:ef:00:77",)


def test_precedence_config_then_leases_then_ptr() -> None:
    cfg = load_config(text="clients:\n  dads-phone: [192.168.1.25]\n  lan: [192.168.1.0/24]\n",
                      path=None)
    leases = read_leases(DATA / "dnsmasq.leases")
    ptr = {"192.168.1.23": "android-7f3a", "192.168.1.40": "printer"}
    m = build_map(cfg.clients, leases, ptr, [("fe80::3", "aa:bb:cc:00:00:03")])
    assert m.names["192.168.1.25"] == "dads-phone"       # config beats the lease name
    assert m.names["fe80::3"] == "dads-phone"            # its MAC carries the config name
    assert m.names["192.168.1.23"] == "kids-tablet"      # lease beats PTR
    assert m.names["192.168.1.40"] == "printer"          # PTR for what no lease names
    assert "192.168.1.0" not in m.names                  # networks stay with ClientTable


# ------------------------------------------------------------------ reverse DNS


def _router(names: dict[str, str]) -> FakeUpstream:
    def answer(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
        r = q.reply()
        owner = str(q.q.qname).lower()
        if q.q.qtype == dnslib.QTYPE.PTR and owner in names:
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.PTR, ttl=60,
                                   rdata=dnslib.PTR(names[owner])))
        else:
            r.header.rcode = dnslib.RCODE.NXDOMAIN
        return r
    return FakeUpstream(answer=answer)


def test_reverse_dns_asks_the_router_for_unnamed_addresses_only_and_remembers() -> None:
    router = _router({"3.0.0.127.in-addr.arpa.": "Kids-Tablet.lan.",
                      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.":
                      "laptop.home.arpa."})
    try:
        ep = ("127.0.0.1", router.port)
        assert lookup_ptr(ep, "127.0.0.3") == "kids-tablet"
        assert lookup_ptr(ep, "::1") == "laptop"
        assert lookup_ptr(ep, "127.0.0.9") is None
        cfg = load_config(text="clients:\n  me: [127.0.0.5]\n", path=None)
        names = DeviceNames(cfg.clients, reverse_dns=ep)
        before = len(router.seen)
        m = names.refresh(["127.0.0.3", "127.0.0.5", "127.0.0.9"])
        assert m.names == {"127.0.0.5": "me", "127.0.0.3": "kids-tablet"}
        assert m.devices["kids-tablet"].source == "ptr"
        assert len(router.seen) - before == 2            # not for the configured name
        names.refresh(["127.0.0.3", "127.0.0.9"])
        assert len(router.seen) - before == 2            # answers (and NXDOMAIN) remembered
    finally:
        router.close()


def test_a_silent_router_costs_a_timeout_not_a_name() -> None:
    router = FakeUpstream(silent=True)
    try:
        t0 = time.monotonic()
        assert lookup_ptr(("127.0.0.1", router.port), "127.0.0.3", timeout=0.2) is None
        assert time.monotonic() - t0 < 2
    finally:
        router.close()


# ------------------------------------------------------------------ client table


def test_client_table_swaps_names_in_and_keeps_one_lookup_per_address() -> None:
    cfg = load_config(text="clients:\n  tv: [192.168.1.9]\n", path=None)
    table = ClientTable(cfg, Blocklists(), LabelBound(10), {"192.168.1.23": "kids-tablet"})
    info = table.lookup("192.168.1.23")
    assert (info.label, info.device, info.name) == ("kids-tablet", "kids-tablet", None)
    assert table.lookup("192.168.1.23") is info                  # cached: one dict lookup
    tv = table.lookup("192.168.1.9")
    assert (tv.label, tv.device) == ("tv", "tv")
    assert table.lookup("192.168.1.30").device is None
    assert table.lookup("192.168.1.30").label == "192.168.1.30"
    cache = table.cache
    table.set_devices({"192.168.1.23": "tablet", "192.168.1.30": "laptop"})
    assert table.cache is cache and not cache        # emptied in place (the fast path holds it)
    assert table.lookup("192.168.1.23").label == "tablet"
    assert table.lookup("192.168.1.30").label == "laptop"
    assert table.lookup("::ffff:192.168.1.30").device == "laptop"


def test_rotating_ipv6_addresses_take_one_label_slot() -> None:
    neigh = parse_ip_json((DATA / "ip-neigh.json").read_text())
    m = build_map({}, read_leases(DATA / "dnsmasq.leases"), {}, neigh)
    labels = LabelBound(2)
    table = ClientTable(load_config(text="{}", path=None), Blocklists(), labels, m.names)
    for addr in m.devices["kids-tablet"].addresses:
        assert table.lookup(addr).label == "kids-tablet"
    assert labels.seen == {"kids-tablet"}


def test_query_client_takes_a_device_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "xiaomi.txt").write_text("tracking.miui.com\n")
    (tmp_path / "dnsmasq.leases").write_text((DATA / "dnsmasq.leases").read_text())
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text("upstreams: ['192.0.2.53']\nblocking: {lists: {xiaomi: xiaomi.txt}}\n"
                        "devices: {leases: [dnsmasq.leases], neighbours: false}\n")
    cfg = load_config(cfg_path)
    devices = devices_now(cfg)
    table = {n: d.addresses for n, d in devices.devices.items()}
    assert client_address(cfg, "kids-tablet", table) == "192.168.1.23"
    with pytest.raises(UnknownClient, match="devices: kids-tablet, living-room-tv"):
        client_address(cfg, "nobody", table)
    assert main(["query", "tracking.miui.com", "--client", "kids-tablet", "-c", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "client 192.168.1.23 (kids-tablet)" in out and "blocked by list xiaomi" in out


# ------------------------------------------------------------------ config


def test_devices_config_keys_and_errors(tmp_path: Path) -> None:
    cfg = load_config(text="devices:\n  leases: [a.leases]\n  reverse_dns: 192.168.1.1\n"
                           "  refresh: 2m\n", path=None)
    d = cfg.devices
    assert d.enabled and d.neighbours and d.reverse_dns == ("192.168.1.1", 53) and d.refresh == 120
    assert Path(d.leases[0]).is_absolute()
    assert load_config(text="{}", path=None).devices.enabled is False
    assert load_config(text="devices: {}\n", path=None).devices.enabled is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: ['127.0.0.1:0']\ndevices:\n  leases: 3\n  neighbours: maybe\n"
                   "  reverse_dns: router.lan\n  refresh: 0s\n  arp: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    for want in ("devices.leases: must be a list of strings, not a number (%s:3)",
                 "devices.neighbours: must be a boolean, not a string (%s:4)",
                 "devices.reverse_dns: bad address 'router.lan'",
                 "devices.refresh: must be at least 1 (%s:6)",
                 "devices.arp: unknown key"):
        assert want.replace("%s", str(bad)) in msg, msg


# ------------------------------------------------------------------ last query, silent devices


def test_last_query_clock_and_known_silent_devices() -> None:
    async def go() -> str:
        stats = Stats()
        cfg = load_config(text=f"devices: {{leases: [{DATA / 'dnsmasq.leases'}], neighbours: false}}\n",
                          path=None)
        svc = DeviceService(stats, lambda: None)
        await svc.configure(cfg)
        assert stats.device_last_query == {"kids-tablet": 0.0, "living-room-tv": 0.0}
        stats.query("kids-tablet", "A", "forwarded", 0.001)
        svc.note_activity(now=1000.0)
        svc.note_activity(now=2000.0)                       # nothing new: stays at 1000
        assert stats.device_last_query["kids-tablet"] == 1000.0
        stats.query("kids-tablet", "A", "cached", 0.001)
        stats.query("192.168.1.40", "A", "cached", 0.001)     # unnamed: not a device
        stats.query("other", "A", "cached", 0.001)
        svc.note_activity(now=3000.0)
        assert stats.device_last_query == {"kids-tablet": 3000.0, "living-room-tv": 0.0}
        for key in [k for k in stats.queries if k[0] == "kids-tablet"]:
            del stats.queries[key]                          # an idle label released
        svc.note_activity(now=4000.0)
        assert stats.device_last_query["kids-tablet"] == 3000.0   # not "asked at 4000"
        svc.names.lease_paths = ()                          # the tv's lease is gone
        await svc.refresh()
        assert stats.device_last_query == {"kids-tablet": 3000.0}
        return render(snapshot(stats)).decode()
    text = asyncio.run(go())
    assert 'hushdns_device_last_query_timestamp_seconds{client="kids-tablet"} 3000.0' in text
    assert "living-room-tv" not in text


# ------------------------------------------------------------------ end to end


def _metrics(server) -> str:
    host, port = server.server.metrics_server.address
    with _opener.open(f"http://{host}:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_server_names_a_client_from_its_lease_file_and_follows_changes(tmp_path: Path) -> None:
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text("1764800000 aa:bb:cc:00:00:02 127.0.0.2 kids-tablet *\n")
    up = FakeUpstream()
    server = start_server(tmp_path, up, lists={"xiaomi": "tracking.miui.com\n"}, extra=(
        'metrics: {listen: "127.0.0.1:0"}\n'
        "devices: {leases: [dnsmasq.leases], neighbours: false, refresh: 1s}\n"))
    try:
        for name in ("tracking.miui.com", "tracking.miui.com", "www.example.org"):
            q = dns.message.make_query(name, "A")
            dns.query.udp(q, server.host, port=server.port, timeout=5, source="127.0.0.2")
        text = _metrics(server)
        assert 'hushdns_blocked_total{client="kids-tablet",list="xiaomi"} 2.0' in text
        assert 'client="127.0.0.2"' not in text
        # The router renames the device: the next refresh swaps the name in.
        leases.write_text("1764800000 aa:bb:cc:00:00:02 127.0.0.2 tablet *\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            q = dns.message.make_query("tracking.miui.com", "A")
            dns.query.udp(q, server.host, port=server.port, timeout=5, source="127.0.0.2")
            if 'hushdns_blocked_total{client="tablet",list="xiaomi"}' in _metrics(server):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("renamed device never showed up in /metrics")
        assert 'hushdns_device_last_query_timestamp_seconds{client="kids-tablet"}' in _metrics(server)
    finally:
        server.stop()
        up.close()


def test_live_neighbour_source_reads_ip_json_else_proc_net_arp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.devices.neighbours import read_neighbours

    fake_ip = tmp_path / "bin" / "ip"
    fake_ip.parent.mkdir()
    fake_ip.write_text(f"#!/bin/sh\n[ \"$1 $2 $3\" = \"-j neigh show\" ] || exit 2\n"
                       f"exec {shutil.which('cat')} {DATA / 'ip-neigh.json'}\n")
    fake_ip.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_ip.parent))
    assert read_neighbours() == parse_ip_json((DATA / "ip-neigh.json").read_text())
    fake_ip.write_text("#!/bin/sh\necho 'Cannot open netlink socket' >&2\nexit 1\n")  # no AF_NETLINK
    assert read_neighbours(str(DATA / "proc-net-arp")) == parse_proc_arp(
        (DATA / "proc-net-arp").read_text())
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert read_neighbours(str(tmp_path / "no-arp")) == []


def test_start_does_not_wait_for_a_silent_router_and_reload_turns_devices_on(tmp_path: Path) -> None:
    router = FakeUpstream(silent=True)
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text("1764800000 aa:bb:cc:00:00:03 127.0.0.3 laptop *\n")
    up = FakeUpstream()
    server = start_server(tmp_path, up, extra="clients:\n  me: [127.0.0.1]\n")
    try:
        for source in ("127.0.0.3", "127.0.0.4"):      # .4: unnamed, a PTR candidate
            q = dns.message.make_query("www.example.org", "A")
            dns.query.udp(q, server.host, port=server.port, timeout=5, source=source)
        assert server.server.clients.lookup("127.0.0.3").device is None
        cfg = tmp_path / "config.yaml"
        cfg.write_text(cfg.read_text() + "devices:\n  leases: [dnsmasq.leases]\n  neighbours: false\n"
                       f"  reverse_dns: 127.0.0.1:{router.port}\n")
        t0 = time.monotonic()
        assert server.reload()
        assert time.monotonic() - t0 < 3 and router.seen == []   # no PTR before serving on
        info = server.server.clients.lookup("127.0.0.3")
        assert (info.label, info.device) == ("laptop", "laptop")
        assert server.server.clients.lookup("127.0.0.1").device == "me"
    finally:
        server.stop()
        up.close()
        router.close()


def test_server_names_an_unnamed_client_by_asking_the_router(tmp_path: Path) -> None:
    router = _router({"4.0.0.127.in-addr.arpa.": "smart-tv.lan."})
    up = FakeUpstream()
    server = start_server(tmp_path, up, extra=(
        f"devices: {{neighbours: false, reverse_dns: '127.0.0.1:{router.port}', refresh: 1s}}\n"))
    try:
        deadline = time.monotonic() + 10
        label = None
        while time.monotonic() < deadline:
            q = dns.message.make_query("www.example.org", "A")
            dns.query.udp(q, server.host, port=server.port, timeout=5, source="127.0.0.4")
            label = server.server.clients.lookup("127.0.0.4").label
            if label == "smart-tv":
                break
            time.sleep(0.2)
        assert label == "smart-tv"
        assert any(s.record.q.qtype == dnslib.QTYPE.PTR for s in router.seen)
        assert not any(s.record.q.qtype == dnslib.QTYPE.PTR for s in up.seen)   # the router only
    finally:
        server.stop()
        up.close()
        router.close()


def test_two_phones_with_one_host_name_stay_two_devices() -> None:
    from resolver.devices.leases import parse_dnsmasq

    leases = parse_dnsmasq("0 aa:bb:cc:00:a1:b2 192.168.1.30 iPhone *\n"
                           "0 aa:bb:cc:00:c3:d4 192.168.1.31 iPhone *\n"
                           "0 aa:bb:cc:00:00:09 192.168.1.32 ebook *\n")
    m = build_map({}, leases, {}, [("fd00::30", "aa:bb:cc:00:a1:b2")])
    assert m.names == {"192.168.1.30": "iphone-a1b2", "192.168.1.31": "iphone-c3d4",
                       "192.168.1.32": "ebook", "fd00::30": "iphone-a1b2"}


def test_every_metric_family_is_exported_once() -> None:
    """Two families of one name break a scrape; the device clock is added by this branch and
    (by the same name) by the query log's: a merge must keep one."""
    stats = Stats()
    stats.device_last_query["kids-tablet"] = 1.0
    text = render(snapshot(stats)).decode()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), sorted(h for h in helps if helps.count(h) > 1)
    assert "hushdns_device_last_query_timestamp_seconds" in helps

"""Local names (local_records, hosts_files, local_zones) and the bypass answers, asked with
dnspython against the running server; their config errors name the line."""

from __future__ import annotations

import time
from pathlib import Path

import dns.flags
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from resolver import cli
from resolver.config import ConfigError, load_config
from resolver.metrics import render
from tests.conftest import ask

LOCAL = """local_records:
  nas.home: 192.168.1.10
  printer.home: [192.168.1.20, "fd00::20", "TXT hello world"]
  www.home: "CNAME nas.home"
  home: "MX 10 nas.home"
  _ipp._tcp.home: "SRV 0 0 631 printer.home"
local_zones: [home]
"""


def _types(msg, rdtype):
    return sorted(r.to_text() for rrset in msg.answer if rrset.rdtype == rdtype for r in rrset)


def test_local_records_are_authoritative_and_never_forwarded(serve, upstream) -> None:
    srv = serve(LOCAL)
    a = ask(srv, "nas.home")
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert _types(a, dns.rdatatype.A) == ["192.168.1.10"]
    assert _types(ask(srv, "printer.home", "AAAA"), dns.rdatatype.AAAA) == ["fd00::20"]
    assert _types(ask(srv, "printer.home", "TXT"), dns.rdatatype.TXT) == ['"hello world"']
    assert _types(ask(srv, "home", "MX"), dns.rdatatype.MX) == ["10 nas.home."]
    assert _types(ask(srv, "_ipp._tcp.home", "SRV"), dns.rdatatype.SRV) == ["0 0 631 printer.home."]
    w = ask(srv, "www.home")
    assert _types(w, dns.rdatatype.CNAME) == ["nas.home."] and _types(w, dns.rdatatype.A) == ["192.168.1.10"]
    assert ask(srv, "NAS.Home", edns=True).flags & dns.flags.AA      # any case, with EDNS
    assert upstream.queries() == []


def test_ptr_from_a_and_aaaa(serve) -> None:
    srv = serve(LOCAL)
    for addr, name in (("192.168.1.10", "nas.home."), ("fd00::20", "printer.home.")):
        r = ask(srv, dns.reversename.from_address(addr).to_text(), "PTR")
        assert r.flags & dns.flags.AA and _types(r, dns.rdatatype.PTR) == [name]


def test_nodata_for_other_types_and_nxdomain_only_inside_a_zone(serve, upstream) -> None:
    srv = serve(LOCAL)
    r = ask(srv, "nas.home", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    assert r.authority[0].rdtype == dns.rdatatype.SOA and r.authority[0].name.to_text() == "home."
    r = ask(srv, "ghost.home")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    r = ask(srv, "_tcp.home", "SRV")                 # above a local name: exists, no data
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert upstream.queries() == []
    srv2 = serve("local_records: {nas.lan: 10.0.0.2}\n")
    assert ask(srv2, "other.lan").rcode() == dns.rcode.NOERROR      # no zone: forwarded
    assert len(upstream.queries()) == 1


def test_hosts_file_is_served_and_watched(serve, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n192.168.1.30 tv.home tv  # the TV\nff02::1 ip6-allnodes\n")
    srv = serve(f"hosts_files: [{hosts}]\n")
    assert _types(ask(srv, "tv"), dns.rdatatype.A) == ["192.168.1.30"]
    hosts.write_text("192.168.1.31 tv.home\nthis line is garbage\n")
    time.sleep(3)
    assert _types(ask(srv, "tv.home"), dns.rdatatype.A) == ["192.168.1.30"]   # old names keep serving
    assert srv.stats.config_reload_success == 0
    hosts.write_text("192.168.1.31 tv.home\n")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and _types(ask(srv, "tv.home"), dns.rdatatype.A) != ["192.168.1.31"]:
        time.sleep(0.3)
    assert _types(ask(srv, "tv.home"), dns.rdatatype.A) == ["192.168.1.31"]


def test_hosts_file_garbage_names_the_line(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# ok\n192.168.1.2 fine.home\nnot-an-ip name\n10.0.0.1\n10.0.0.2 bad_name!\n")
    with pytest.raises(ConfigError) as e:
        load_config(text=f"hosts_files: [{hosts}]\n")
    text = str(e.value)
    assert f"{hosts}:3: not an address: 'not-an-ip'" in text
    assert f"{hosts}:4: an address without a name" in text
    assert f"{hosts}:5: not a host name: 'bad_name!'" in text


@pytest.mark.parametrize("yaml, error", [
    ("local_records: {nas.home: 300.1.1.1}\n", "local_records.nas.home: not an address or a record"),
    ("local_records: {nas.home: 'A fd00::1'}\n", "A: wrong address family"),
    ("local_records: {nas.home: 'MX ten mail'}\n", "MX needs 'PREFERENCE HOST'"),
    ("local_records: {nas.home: 'SRV 1 2 mail'}\n", "SRV needs 'PRIORITY WEIGHT PORT TARGET'"),
    ("local_records: ['nas.home']\n", "local_records[0]: must be a line like"),
    ("local_records: {'bad name': 10.0.0.1}\n", "not a domain name"),
    ("local_zones: ['a..b']\n", "local_zones[0]: not a domain name"),
    ("timezone: Mars/Olympus\n", "timezone: unknown time zone 'Mars/Olympus'"),
    ("bypass: {ddr: maybe}\n", "bypass.ddr: must be a boolean"),
    ("control: {listen: '127.0.0.1:5534'}\n", "control.listen: a TCP control address needs control.token"),
])
def test_bad_household_keys_name_key_and_line(yaml, error, monkeypatch) -> None:
    monkeypatch.delenv("HUSHDNS_CONTROL_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        load_config(text="# first line\n" + yaml)
    assert error in str(e.value) and ":2)" in str(e.value), str(e.value)


def test_records_as_lines(serve) -> None:
    srv = serve('local_records: ["nas.home TXT hello", "nas.home 10.1.1.1", "wiki.home CNAME nas.home"]\n')
    assert _types(ask(srv, "nas.home", "TXT"), dns.rdatatype.TXT) == ['"hello"']
    assert _types(ask(srv, "wiki.home"), dns.rdatatype.A) == ["10.1.1.1"]


def test_query_explains_a_local_name(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: ['127.0.0.1:1']\nblocking: {lists: {}}\n" + LOCAL)
    assert cli.main(["query", "nas.home", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"nas.home A for client 127.0.0.1, group default: local record ({cfg}:" in out
    assert "authoritative" in out
    assert cli.main(["query", "nas.home", "--type", "AAAA", "-c", str(cfg)]) == 0
    assert "local NODATA (the local name has A only)" in capsys.readouterr().out


# --- bypass -------------------------------------------------------------------------------


def test_bypass_defaults(serve, upstream) -> None:
    srv = serve()
    assert ask(srv, "use-application-dns.net").rcode() == dns.rcode.NXDOMAIN
    r = ask(srv, "_dns.resolver.arpa", "SVCB")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority
    for name in ("mask.icloud.com", "mask-h2.icloud.com"):
        assert ask(srv, name, "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert upstream.queries() == []
    ask(srv, "use-application-dns.net")          # remembered now,
    ask(srv, "use-application-dns.net")          # and a memo answer is counted too
    ask(srv, "dns.google")                        # opt-in list off: forwarded, but counted
    ask(srv, "dns.google")
    b = srv.stats.bypass_lookups
    assert b[("127.0.0.1", "firefox_canary")] == 3
    assert b[("127.0.0.1", "ddr")] == 1 and b[("127.0.0.1", "private_relay")] == 2
    assert b[("127.0.0.1", "doh_resolver")] == 2
    assert len(upstream.queries()) == 1           # dns.google's repeat came from the cache
    text = render(srv.stats).decode()
    assert 'hushdns_bypass_lookups_total{client="127.0.0.1",kind="doh_resolver"} 2.0' in text


def test_bypass_switches(serve, upstream) -> None:
    srv = serve("bypass: {firefox_canary: false, ddr: false, private_relay: false, doh_resolvers: true}\n")
    assert ask(srv, "use-application-dns.net").rcode() == dns.rcode.NOERROR
    assert ask(srv, "mozilla.cloudflare-dns.com").rcode() == dns.rcode.NXDOMAIN
    assert ask(srv, "dns.google", "HTTPS").rcode() == dns.rcode.NXDOMAIN
    assert [s.record.q.qname.idna().rstrip(".") for s in upstream.queries()] == ["use-application-dns.net"]
    assert srv.stats.bypass_lookups[("127.0.0.1", "firefox_canary")] == 1


def test_bypass_false_leaves_the_stage_out(serve, upstream) -> None:
    from resolver.lists.loader import Blocklists
    from resolver.pipeline import build_pipeline
    from resolver.stats import Stats

    on = build_pipeline(load_config(text="upstreams: [127.0.0.1]\n"), Blocklists(), Stats())
    off = build_pipeline(load_config(text="upstreams: [127.0.0.1]\nbypass: false\n"), Blocklists(), Stats())
    assert "Bypass" in [type(s).__name__ for s in on.stages]
    assert "Bypass" not in [type(s).__name__ for s in off.stages]
    srv = serve("bypass: false\n")
    assert ask(srv, "use-application-dns.net").rcode() == dns.rcode.NOERROR
    assert srv.stats.bypass_lookups == {}


def test_a_huge_or_special_hosts_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    import resolver.household_config as hc

    big = tmp_path / "hosts"
    big.write_text("10.0.0.1 a.home\n" * 10)
    monkeypatch.setattr(hc, "MAX_HOSTS_BYTES", 100)
    with pytest.raises(ConfigError, match="larger than 0 MiB: not a hosts file"):
        load_config(text=f"hosts_files: [{big}]\n")
    with pytest.raises(ConfigError, match="not a regular file: '/dev/zero'"):
        load_config(text="hosts_files: [/dev/zero]\n")

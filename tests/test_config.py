"""Config loading: the contract keys, defaults, and errors that name the key path and line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from resolver.config import ConfigError, load_config, parse_endpoint, system_upstreams

CONTRACT = """\
listen: ["127.0.0.1:5533", "[::1]:5533"]
upstreams: ["192.0.2.53:53", "[2001:db8::53]:53"]
forward_zones: {"lan": ["192.168.1.1:53"], "168.192.in-addr.arpa": ["192.168.1.1:53"]}
access:
  allow: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10"]
blocking:
  mode: nxdomain
  ttl: 300
  lists:
    xiaomi: lists/xiaomi.txt
    ads: {source: lists/ads.txt, track_domains: true, refresh: 12h}
  allow:
    mine: allow.txt
clients:
  anna-phone: ["192.168.1.23"]
  kids: ["192.168.1.64/27"]
groups:
  default: {lists: [xiaomi]}
  kids: {clients: [kids], lists: [xiaomi, ads]}
cache: {max_entries: 100000, min_ttl: 0, max_ttl: 86400, negative_ttl: 3600}
metrics: {listen: "127.0.0.1:9153"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "lists").mkdir(exist_ok=True)
    for f in ("lists/xiaomi.txt", "lists/ads.txt", "allow.txt"):
        (tmp_path / f).write_text("example.com\n")
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    return e.value.problems


def test_contract_example_loads(tmp_path: Path) -> None:
    c = load_config(_write(tmp_path, CONTRACT))
    assert c.listen == (("127.0.0.1", 5533), ("::1", 5533))
    assert c.upstreams == (("192.0.2.53", 53), ("2001:db8::53", 53))
    assert c.forward_zones["lan"] == (("192.168.1.1", 53),)
    assert "168.192.in-addr.arpa" in c.forward_zones
    assert c.blocking.lists["xiaomi"].source == str(tmp_path / "lists/xiaomi.txt")
    assert c.blocking.lists["ads"].track_domains and c.blocking.lists["ads"].refresh == 43200
    assert c.blocking.allow["mine"].allow
    assert c.groups["kids"].lists == ("xiaomi", "ads")
    assert c.groups["kids"].clients == (ipaddress.ip_network("192.168.1.64/27"),)
    assert c.groups["default"].allow == ("mine",)   # allow lists default to all
    assert c.metrics.listen == ("127.0.0.1", 9153)


def test_defaults_when_keys_are_missing(tmp_path: Path) -> None:
    c = load_config(_write(tmp_path, 'upstreams: ["192.0.2.1"]\n'))
    assert c.listen == (("0.0.0.0", 53), ("::", 53))
    assert c.upstreams == (("192.0.2.1", 53),)
    assert ipaddress.ip_network("192.168.0.0/16") in c.access_allow
    assert c.blocking.mode == "nxdomain" and c.blocking.ttl == 300
    assert c.cache.max_entries == 100_000 and c.metrics.max_clients == 512
    assert c.server.udp_size == 1232


def test_missing_list_file_names_key_and_line(tmp_path: Path) -> None:
    text = CONTRACT.replace("lists/xiaomi.txt", "blocklists/nope.txt")
    problems = _problems(tmp_path, text)
    assert problems == [f"blocking.lists.xiaomi: no such file 'blocklists/nope.txt' ({tmp_path}/config.yaml:10)"]


@pytest.mark.parametrize("snippet, expected", [
    ("listen: ['127.0.0.1:99999']\n", "listen[0]: bad port in '127.0.0.1:99999' ({f}:1)"),
    ("upstreams: ['dns.google']\n", "upstreams[0]: bad address 'dns.google': not an IP address"),
    ("cache: {max_entries: lots}\n", "cache.max_entries: must be a number, not a string ({f}:1)"),
    ("cache:\n  max_entrys: 5\n", "cache.max_entrys: unknown key"),
    ("colour: blue\n", "colour: unknown key"),
    ("blocking: {mode: sinkhole}\n", "blocking.mode: must be one of nxdomain"),
    ("blocking: {mode: ['10.0.0.1', 'nope']}\n", "blocking.mode[1]: not an IP address"),
    ("access: {allow: ['10.0.0.0/33']}\n", "access.allow[0]: not an IP address or network"),
    ("groups: {kids: {clients: [nobody]}}\n", "groups.kids.clients[0]: 'nobody' is neither a name"),
    ("groups: {kids: {clients: ['10.0.0.0/8'], lists: [ads]}}\n", "groups.kids.lists[0]: no list named 'ads'"),
    ("metrics: {max_clients: true}\n", "metrics.max_clients: must be a number, not a boolean"),
    ("server:\n  minimal_responses: 2\n", "server.minimal_responses: must be a boolean, not a number ({f}:2)"),
    ("listen: ['127.0.0.1:53']\nlisten: ['127.0.0.1:54']\n", "listen: duplicate key ({f}:2)"),
])
def test_errors_name_the_key_path_and_line(tmp_path: Path, snippet: str, expected: str) -> None:
    problems = _problems(tmp_path, snippet)
    text = "\n".join(problems)
    assert expected.format(f=tmp_path / "config.yaml") in text, text


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "colour: blue\ncache: {max_ttl: -1}\nlisten: [5]\n")
    assert len(problems) == 3


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "listen: [\n  'a'\nupstreams: x: y\n")
    assert "config.yaml:" in problems[0]


def test_endpoints() -> None:
    assert parse_endpoint("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_endpoint("[2001:db8::1]:5533") == ("2001:db8::1", 5533)
    assert parse_endpoint("2001:db8::1") == ("2001:db8::1", 53)
    with pytest.raises(ValueError):
        parse_endpoint("[::1")


def test_system_upstreams_skip_loopback_and_fall_back(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.7\nnameserver fe80::1%eth0\noptions edns0\n")
    assert system_upstreams(str(rc)) == (("192.0.2.7", 53), ("fe80::1", 53))
    rc.write_text("nameserver 127.0.0.1\n")
    assert ("9.9.9.9", 53) in system_upstreams(str(rc))


def test_embedded_default_config_loads_with_bundled_lists() -> None:
    c = load_config(None)
    assert c.listen == (("127.0.0.1", 5533),)
    assert c.metrics.listen == ("127.0.0.1", 9153)
    assert len(c.blocking.lists) >= 9
    assert all(spec.track_domains for spec in c.blocking.lists.values())
    assert all(Path(spec.source).is_file() for spec in c.blocking.lists.values())


def test_every_config_key_is_documented() -> None:
    """docs/configuration.md names every key the loader accepts (the reference cannot drift)."""
    import dataclasses

    from resolver import config as C

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    keys = set(C.TOP_KEYS)
    for cls, prefix in ((C.Cache, "cache."), (C.ServerOptions, "server."), (C.Metrics, "metrics.")):
        keys |= {prefix + f.name for f in dataclasses.fields(cls)}
    keys |= {"blocking.mode", "blocking.ttl", "blocking.lists", "blocking.allow", "access.allow",
             "log.level", "log.queries", "rate_limit.qps"}
    missing = sorted(k for k in keys if f"`{k}" not in doc)
    assert not missing, missing

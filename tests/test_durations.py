"""One duration parser for every duration key: numbers, '500ms', '5s', '2m', '1h', '1d'."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.config import ConfigError, load_config, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    (5, 5.0), (1.5, 1.5), ("30", 30.0), ("500ms", 0.5), ("5s", 5.0), ("1.5s", 1.5),
    ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), (" 7d ", 604800.0), ("0", 0.0),
])
def test_accepted(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "-1", -1, "5 s", "1e3", True, None, [], "nan",
                                  float("inf"), "5sec", "ms"])
def test_rejected(text) -> None:
    assert parse_duration(text) is None


def test_every_duration_key_takes_units(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    (tmp_path / "l.txt").write_text("a.example\n")
    p.write_text(
        "upstreams: ['192.0.2.53']\n"
        "server: {upstream_timeout: 500ms, upstream_total_timeout: 3s, tcp_idle_timeout: 1m}\n"
        "cache: {min_ttl: 1m, max_ttl: 1d, negative_ttl: 1h, servfail_ttl: 5s, serve_stale: 2d}\n"
        "blocking:\n  ttl: 5m\n  lists: {l: {source: l.txt, refresh: 12h}}\n")
    c = load_config(p)
    assert (c.server.upstream_timeout, c.server.upstream_total_timeout, c.server.tcp_idle_timeout) == \
        (0.5, 3.0, 60.0)
    assert (c.cache.min_ttl, c.cache.max_ttl, c.cache.negative_ttl, c.cache.servfail_ttl) == \
        (60, 86400, 3600, 5)
    assert isinstance(c.cache.max_ttl, int) and c.cache.serve_stale == 172800.0
    assert c.blocking.ttl == 300 and c.blocking.lists["l"].refresh == 43200.0


def test_bad_durations_name_key_and_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("upstreams: ['192.0.2.53']\nserver:\n  upstream_timeout: soon\ncache:\n  max_ttl: 1500ms\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.problems == [
        f"server.upstream_timeout: must be a duration like 30, '500ms', '5s', '2m', '1h', '1d', "
        f"not 'soon' ({p}:3)",
        f"cache.max_ttl: must be whole seconds, not '1500ms' ({p}:5)",
    ]

"""Every number in the config is range-checked: values that parse but break serving are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.config import ConfigError, load_config


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "bl.txt").write_text("example.com\n")
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return e.value.problems


@pytest.mark.parametrize(("yaml_text", "key", "line"), [
    ("blocking:\n  ttl: 4294967296\n", "blocking.ttl", 2),
    ("blocking:\n  ttl: 2147483648\n", "blocking.ttl", 2),
    ("cache:\n  min_ttl: 5000000000\n  max_ttl: 6000000000\n", "cache.min_ttl", 2),
    ("cache:\n  negative_ttl: 99999999999\n", "cache.negative_ttl", 2),
    ("server:\n  tcp_idle_timeout: 1e-300\n", "server.tcp_idle_timeout", 2),
    ("server:\n  tcp_idle_timeout: .inf\n", "server.tcp_idle_timeout", 2),
    ("server:\n  upstream_timeout: .nan\n", "server.upstream_timeout", 2),
    ("server:\n  upstream_total_timeout: -.inf\n", "server.upstream_total_timeout", 2),
    ("server:\n  max_inflight: 100000000000000000000\n", "server.max_inflight", 2),
    ("rate_limit:\n  qps: .inf\n", "rate_limit.qps", 2),
    ("cache:\n  serve_stale: nan\n", "cache.serve_stale", 2),
    ("blocking:\n  lists:\n    bl: {source: bl.txt, refresh: 1e400}\n", "blocking.lists.bl.refresh", 3),
])
def test_out_of_range_numbers_are_refused_with_key_and_line(tmp_path: Path, yaml_text: str,
                                                            key: str, line: int) -> None:
    problems = _problems(tmp_path, yaml_text)
    mine = [p for p in problems if p.startswith(key + ":")]
    assert mine, problems
    assert f"c.yaml:{line})" in mine[0], mine[0]
    assert "must be" in mine[0]


def test_largest_legal_ttl_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("blocking:\n  ttl: 2147483647\ncache:\n  max_ttl: 2147483647\n"
                 "server:\n  tcp_idle_timeout: 0.1\n")
    cfg = load_config(p)
    assert cfg.blocking.ttl == 2**31 - 1 and cfg.server.tcp_idle_timeout == 0.1

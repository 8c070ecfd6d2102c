"""`hushdns query --client NAME` takes a `clients:` name; `--type` must be a record type."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.cli import main
from resolver.clients import UnknownClient, client_address
from resolver.config import load_config


def _cfg(tmp_path: Path) -> Path:
    (tmp_path / "xiaomi.txt").write_text("tracking.miui.com\n")
    p = tmp_path / "config.yaml"
    p.write_text("upstreams: ['192.0.2.53']\nblocking: {lists: {xiaomi: xiaomi.txt}}\n"
                 "clients:\n  kids-tablet: ['192.168.1.64/27']\n  anna-phone: ['192.168.1.65']\n"
                 "  tv: ['fd00::40']\n"
                 "groups:\n  default: {lists: []}\n  kids: {clients: [kids-tablet], lists: [xiaomi]}\n")
    return p


def test_client_name_resolves_to_an_address_that_name_matches(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path))
    # .64 is the network address; .65 belongs to the more specific anna-phone.
    assert client_address(cfg, "kids-tablet") == "192.168.1.64"
    assert client_address(cfg, "anna-phone") == "192.168.1.65"
    assert client_address(cfg, "tv") == "fd00::40"
    assert client_address(cfg, "10.0.0.9") == "10.0.0.9"
    with pytest.raises(UnknownClient, match="not an address or a known client"):
        client_address(cfg, "kids-tabelt")


def test_query_with_a_client_name_uses_its_group(tmp_path: Path, capsys) -> None:
    assert main(["query", "tracking.miui.com", "--client", "kids-tablet", "-c", str(_cfg(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "for client 192.168.1.64 (kids-tablet), group kids: blocked by list xiaomi" in out


def test_query_with_an_unknown_client_name_says_so(tmp_path: Path, capsys) -> None:
    assert main(["query", "a.example", "--client", "kids-tabelt", "-c", str(_cfg(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "--client 'kids-tabelt': not an address or a known client (clients: anna-phone, " in err


def test_query_rejects_an_unknown_record_type(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["query", "a.example", "--type", "BOGUS", "-c", str(_cfg(tmp_path))])
    assert exc.value.code == 2
    assert "not a DNS record type: 'BOGUS'" in capsys.readouterr().err
    assert main(["query", "a.example", "--type", "https", "-c", str(_cfg(tmp_path))]) == 0
    assert "a.example HTTPS for client" in capsys.readouterr().out

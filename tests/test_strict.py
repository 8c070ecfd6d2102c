"""The strict tier in one step: ``serve --strict`` / ``query --strict``, and bundled lists by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from resolver import bundled
from resolver.cli import main
from resolver.config import load_config
from tests.fakes import FakeUpstream, free_port

ORIGIN = "api.account.xiaomi.com"   # Mi Account sign-in: strict tier (issue #16)


def test_strict_profile_is_the_default_config_plus_every_strict_list() -> None:
    default = yaml.safe_load(bundled.default_config_text())["blocking"]["lists"]
    strict = yaml.safe_load(bundled.strict_config_text())["blocking"]["lists"]
    shipped = {p.stem for p in bundled.lists_dir().glob("*-strict.txt")}
    added = set(strict) - set(default)
    assert added == {n for n in shipped if n.removesuffix("-strict") in default}
    assert {k: strict[k] for k in default} == default
    cfg = load_config(None, text=bundled.strict_config_text())
    assert set(cfg.groups["default"].lists) == set(strict)


def test_query_strict_blocks_the_origin_host(capsys: pytest.CaptureFixture) -> None:
    assert main(["query", ORIGIN]) == 0
    assert "forwarded to" in capsys.readouterr().out
    assert main(["query", "--strict", ORIGIN]) == 0
    out = capsys.readouterr().out
    assert f"{ORIGIN} A for client 127.0.0.1, group default: blocked by list xiaomi-strict, " \
           f"rule `{ORIGIN}`" in out


def test_strict_with_a_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: ['192.0.2.53']\n")
    assert main(["query", "--strict", "-c", str(cfg), "example.org"]) == 2
    assert "--strict turns on the bundled strict lists" in capsys.readouterr().err


def test_lists_show_a_bundled_list_without_a_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["lists", "show", "xiaomi-strict"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(str(bundled.lists_dir() / "xiaomi-strict.txt") + ":")
    assert any(line.split(": ", 1)[1].startswith(f"{ORIGIN}  # Mi Account API") for line in out.splitlines())
    assert main(["lists", "show", "no-such-list"]) == 2
    assert "bundled: amazon, amazon-strict" in capsys.readouterr().err


def _ask(port: int, name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)


@pytest.mark.parametrize("strict", [False, True])
def test_serve_strict_blocks_the_origin_host_over_a_real_socket(tmp_path: Path, strict: bool) -> None:
    """`hushdns serve --strict`: NXDOMAIN for Mi Account; without it, forwarded to the (fake) upstream."""
    up = FakeUpstream()
    port = free_port()
    argv = [sys.executable, "-m", "resolver", "serve", "--listen", f"127.0.0.1:{port}",
            "--upstream", up.address, "--metrics", "off"] + (["--strict"] if strict else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "STATE_DIRECTORY": str(tmp_path)})
    try:
        for _ in range(100):
            try:
                first = _ask(port, "example.org")
                break
            except (dns.exception.Timeout, ConnectionRefusedError):
                time.sleep(0.1)
        else:
            raise AssertionError("server did not answer")
        assert first.answer[0][0].address == "192.0.2.1"
        r = _ask(port, ORIGIN)
        asked = {str(s.record.q.qname).rstrip(".") for s in up.queries()}
        if strict:
            assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
            assert ORIGIN not in asked
        else:
            assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.1"
            assert ORIGIN in asked
        # The default tier is on either way.
        assert _ask(port, "data.mistat.xiaomi.com").rcode() == dns.rcode.NXDOMAIN
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        up.close()
    assert proc.returncode == 0, out


"""The command line: check, query (explain) and serve on the embedded default config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from resolver.cli import main
from tests.fakes import FakeUpstream, free_port


def _cfg(tmp_path: Path, lists: str = "# vendor\ndata.mistat.xiaomi.com  # analytics\n||tracking.miui.com^\n",
         extra: str = "") -> Path:
    (tmp_path / "xiaomi.txt").write_text(lists)
    (tmp_path / "allow.txt").write_text("ok.tracking.miui.com\n")
    p = tmp_path / "config.yaml"
    p.write_text("upstreams: ['192.0.2.53']\nforward_zones: {lan: ['192.168.1.1']}\n"
                 "blocking:\n  lists: {xiaomi: xiaomi.txt}\n  allow: {mine: allow.txt}\n"
                 "clients: {anna-phone: ['192.168.1.23']}\n" + extra)
    return p


def test_check_reports_entries_and_exits_zero(tmp_path: Path, capsys) -> None:
    assert main(["check", "-c", str(_cfg(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "block list xiaomi: 2 entries, 0 rejected lines" in out
    assert "allow list mine: 1 entries" in out


def test_check_prints_rejected_lines_with_numbers_and_fails(tmp_path: Path, capsys) -> None:
    p = _cfg(tmp_path, lists="good.example\nthis is not a rule\n")
    assert main(["check", "-c", str(p)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'xiaomi.txt'}:2: several words" in out


def test_check_fails_on_config_errors_naming_key_and_line(tmp_path: Path, capsys) -> None:
    p = _cfg(tmp_path, extra="cache: {max_entries: many}\n")
    assert main(["check", "-c", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"cache.max_entries: must be a number, not a string ({p}:7)" in err


def test_query_explains_block_allow_and_forward(tmp_path: Path, capsys) -> None:
    p = str(_cfg(tmp_path))
    main(["query", "x.tracking.miui.com", "-c", p, "--client", "192.168.1.23"])
    out = capsys.readouterr().out
    assert ("x.tracking.miui.com A for client 192.168.1.23 (anna-phone), group default: blocked by "
            f"list xiaomi, rule `tracking.miui.com` ({tmp_path / 'xiaomi.txt'}:3)") in out
    main(["query", "a.ok.tracking.miui.com", "-c", p])
    assert "allowed by list mine, rule `ok.tracking.miui.com`" in capsys.readouterr().out
    main(["query", "example.org", "-c", p, "--type", "AAAA"])
    assert "example.org AAAA for client 127.0.0.1, group default: forwarded to 192.0.2.53:53" in \
        capsys.readouterr().out
    main(["query", "nas.lan", "-c", p])
    assert "forwarded to 192.168.1.1:53 (forward zone lan)" in capsys.readouterr().out
    main(["query", "example.org", "-c", p, "--client", "203.0.113.9"])
    assert "refused (client outside access.allow)" in capsys.readouterr().out




def test_serve_embedded_default_with_a_fake_upstream() -> None:
    """`hushdns serve` with no config: bundled lists, upstream overridden to a local fake."""
    up = FakeUpstream()
    port, mport = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "resolver", "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", up.address, "--metrics", f"127.0.0.1:{mport}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "STATE_DIRECTORY": "/tmp/hushdns-test-state"})
    try:
        q = dns.message.make_query("example.org", "A")
        for _ in range(100):
            try:
                r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.3)
                break
            except (dns.exception.Timeout, ConnectionRefusedError):
                time.sleep(0.1)
        else:
            raise AssertionError("server did not answer")
        assert r.answer[0][0].address == "192.0.2.1"
        # A default-tier host from the bundled Xiaomi list is blocked.
        blocked = dns.query.udp(dns.message.make_query("data.mistat.xiaomi.com", "A"),
                                "127.0.0.1", port=port, timeout=2)
        assert blocked.rcode() == dns.rcode.NXDOMAIN
        assert all(q.addr[0] == "127.0.0.1" for q in up.queries())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        up.close()
    assert proc.returncode == 0, out


def test_serving_processes_tune_the_garbage_collector() -> None:
    """tune_gc (called by `serve` and each worker once listening): larger young generation,
    start-up objects frozen out of later collections. In a subprocess: it is process-wide."""
    code = ("import gc; from resolver.lifecycle import tune_gc, GC_YOUNG_THRESHOLD; "
            "tune_gc(); print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["True", "True"], out.stderr

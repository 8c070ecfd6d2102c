"""The small things a new user trips on in the first hour (issue 13, item 8): what check
prints last, config warnings and error order, start-up and reload log lines, one logger
namespace, `lists show | head`, `config --default`, and bundled lists the config does not use."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import resolver
from resolver import bundled
from resolver.cli import main
from resolver.config import ConfigError, load_config
from tests.fakes import free_port

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_check_last_line_says_what_failed(tmp_path: Path, capsys) -> None:
    (tmp_path / "own.txt").write_text("good.example\nthis is not a rule\n")
    p = _write(tmp_path, "upstreams: ['192.0.2.53']\nblocking: {lists: {own: own.txt}}\n")
    assert main(["check", "-c", str(p)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("configuration OK")
    assert lines[-1] == "check FAILED: 1 rejected line in list own"


def test_check_last_line_ok(tmp_path: Path, capsys) -> None:
    (tmp_path / "own.txt").write_text("good.example\n")
    p = _write(tmp_path, "upstreams: ['192.0.2.53']\nblocking: {lists: {own: own.txt}}\n")
    assert main(["check", "-c", str(p)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "check OK: configuration and 1 lists"


def test_empty_config_warns(tmp_path: Path, capsys) -> None:
    p = _write(tmp_path, "# nothing yet\n")
    assert load_config(p).warnings
    assert main(["check", "-c", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {p} is empty: built-in defaults apply (listen 0.0.0.0:53, [::]:53, 0 lists)" in out
    assert "(1 warning)" in out.splitlines()[-1]
    assert not load_config(None).warnings


def test_unknown_client_in_a_group_is_one_error(tmp_path: Path) -> None:
    p = _write(tmp_path, "upstreams: ['192.0.2.53']\ngroups:\n  kids: {clients: [kids-tablet]}\n")
    try:
        load_config(p)
    except ConfigError as exc:
        assert exc.problems == [f"groups.kids.clients[0]: 'kids-tablet' is neither a name in "
                                f"clients: nor an address ({p}:3)"]
    else:
        raise AssertionError("accepted")


def test_errors_are_sorted_by_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "upstreams: ['192.0.2.53']\nblocking:\n  lists:\n    x: missing.txt\n"
                         "cache:\n  max_entrys: 10\nclients:\n  a: ['192.168.1.5']\n"
                         "groups:\n  g: {clients: [a, b]}\n")
    try:
        load_config(p)
    except ConfigError as exc:
        lines = [int(e.rsplit(":", 1)[1].rstrip(")")) for e in exc.problems]
        assert len(lines) == 3 and lines == sorted(lines), exc.problems
    else:
        raise AssertionError("accepted")


def test_yaml_tab_says_use_spaces(tmp_path: Path) -> None:
    p = _write(tmp_path, "blocking:\n\tmode: refused\n")
    try:
        load_config(p)
    except ConfigError as exc:
        assert "use spaces" in str(exc) and f"({p}:2)" in str(exc)
    else:
        raise AssertionError("accepted")


def test_startup_log_names_config_and_counts_and_list_changes_are_confirmed(serve, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    srv = serve(lists={"own": "a.example\nb.example\n"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"config {tmp_path / 'config.yaml'}: 1 lists, 2 names: own 2" in text
    (tmp_path / "own.txt").write_text("a.example\nb.example\nc.example\n")
    deadline = time.monotonic() + 10
    want = "list own changed on disk: 3 entries now (was 2)"
    while want not in "\n".join(r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "list change never logged"
        time.sleep(0.2)
    assert srv.server.lists.lists["own"].entries == 3


def test_never_loaded_url_list_logs_one_error_at_start(serve, caplog) -> None:
    caplog.set_level(logging.INFO)
    serve(f'blocking: {{lists: {{sub: "http://127.0.0.1:{free_port()}/l.txt"}}}}\n'
          "state_dir: state\n")
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and "not downloaded yet" in r.getMessage()]
    assert len(errors) == 1 and "list sub has never loaded" in errors[0], errors


def test_one_logger_namespace() -> None:
    for mod in pkgutil.walk_packages(resolver.__path__, "resolver."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith("resolver")]
    assert names == [], names


def test_lists_show_into_head_ends_quietly(tmp_path: Path) -> None:
    """More output than a pipe holds, so `head` really closes it early."""
    (tmp_path / "big.txt").write_text("".join(f"host{i}.example\n" for i in range(50_000)))
    cfg = _write(tmp_path, "upstreams: ['192.0.2.53']\nblocking: {lists: {big: big.txt}}\n")
    out = subprocess.run(f"{sys.executable} -m resolver lists show big -c {cfg} | head -1",
                         shell=True, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.count("\n") == 1 and "big.txt:1: host0.example" in out.stdout
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_config_default_prints_the_embedded_default(tmp_path: Path, capsys) -> None:
    assert main(["config", "--default"]) == 0
    text = capsys.readouterr().out
    assert text == bundled.default_config_text()
    assert load_config(_write(tmp_path, text)).listen == load_config(None).listen


def test_lists_show_a_bundled_list_the_config_does_not_use(capsys) -> None:
    assert main(["lists", "show", "xiaomi-strict"]) == 0
    assert "xiaomi-strict.txt:" in capsys.readouterr().out and "api.account.xiaomi.com" in \
        Path(bundled.lists_dir() / "xiaomi-strict.txt").read_text()
    assert main(["lists", "show", "no-such-list"]) == 2
    assert "bundled: amazon, amazon-strict" in capsys.readouterr().err

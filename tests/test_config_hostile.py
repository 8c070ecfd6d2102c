"""Hostile config files: every failure is one clean ConfigError with key and line, never a
traceback or a stall, at start-up and at reload (where systemd still gets READY=1)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resolver.config import ConfigError, load_config
from tests.fakes import FakeUpstream, start_server

ROOT = Path(__file__).resolve().parent.parent

LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
    f"*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 10))


def _problems(tmp_path: Path, data: bytes) -> list[str]:
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return e.value.problems


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, b"workers: 1\nlog:\n  level: inf\xe9o\n")
    assert len(problems) == 1 and "not UTF-8" in problems[0] and "c.yaml:3)" in problems[0]


def test_python_tag_is_a_clean_error_with_key_and_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, b"cache:\n  max_entries: !!python/object/apply:os.system [id]\n")
    assert any(p.startswith("cache.max_entries:") and "c.yaml:2)" in p for p in problems), problems


def test_huge_integer_is_a_clean_error(tmp_path: Path) -> None:
    problems = _problems(tmp_path, b"server:\n  upstream_timeout: " + b"9" * 5000 + b"\n")
    assert any(p.startswith("server.upstream_timeout:") and "c.yaml:2)" in p for p in problems)
    problems = _problems(tmp_path, b"server:\n  upstream_timeout: " + b"9" * 400 + b"\n")
    assert any(p.startswith("server.upstream_timeout:") for p in problems), problems


def test_deep_nesting_is_refused_with_its_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, b"clients:\n  a: " + b"[" * 5000 + b"]" * 5000 + b"\n")
    assert len(problems) == 1 and "nested deeper" in problems[0] and "c.yaml:2)" in problems[0]


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    t0 = time.monotonic()
    problems = _problems(tmp_path, LAUGHS.encode())
    assert time.monotonic() - t0 < 1.0
    assert len(problems) == 1 and "expands to more than" in problems[0] and "c.yaml:" in problems[0]


def test_fifo_config_is_refused_without_blocking(tmp_path: Path) -> None:
    import os
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as e:
        load_config(fifo)
    assert "not a regular file" in str(e.value)


def test_serve_with_a_hostile_config_exits_2_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(LAUGHS)
    r = subprocess.run([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "expands to more than" in r.stderr


@pytest.mark.parametrize("bad", [
    b"cache:\n  max_entries: !!python/object/apply:os.system [id]\n",
    b"log:\n  level: \xff\xfe\n",
    LAUGHS.encode(),
])
def test_hostile_reload_fails_cleanly_and_reports(tmp_path: Path, bad: bytes) -> None:
    up = FakeUpstream()
    srv = start_server(tmp_path, up)
    events: list[str] = []
    srv.server.on_reload_start = lambda: events.append("RELOADING")
    srv.server.on_reload_done = lambda: events.append("READY")
    try:
        good = (tmp_path / "config.yaml").read_bytes()
        (tmp_path / "config.yaml").write_bytes(good + bad)
        assert srv.reload() is False
        assert srv.stats.config_reload_success == 0
        assert events == ["RELOADING", "READY"]
        (tmp_path / "config.yaml").write_bytes(good)
        assert srv.reload() is True and srv.stats.config_reload_success == 1
    finally:
        srv.stop()
        up.close()


def test_unexpected_reload_error_still_ends_with_ready_and_zero(tmp_path: Path) -> None:
    up = FakeUpstream()
    srv = start_server(tmp_path, up)
    events: list[str] = []
    srv.server.on_reload_start = lambda: events.append("RELOADING")
    srv.server.on_reload_done = lambda: events.append("READY")

    def broken() -> None:
        raise RuntimeError("not a ConfigError")

    srv.server.reload_config = broken
    try:
        assert srv.reload() is False
        assert events == ["RELOADING", "READY"] and srv.stats.config_reload_success == 0
    finally:
        srv.stop()
        up.close()


def test_reload_parses_the_config_off_the_event_loop(tmp_path: Path) -> None:
    up = FakeUpstream()
    srv = start_server(tmp_path, up)
    path = tmp_path / "config.yaml"
    seen: list[threading.Thread] = []

    def reader():
        seen.append(threading.current_thread())
        return load_config(path)

    srv.server.reload_config = reader
    try:
        assert srv.reload() is True
        assert seen and seen[0] is not srv.thread
    finally:
        srv.stop()
        up.close()

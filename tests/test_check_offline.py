"""The unit's pre-start check never waits on the network: `check --offline`, run exactly as
systemd/hushdns.service's ExecStartPre says, against a list host that refuses and one that
accepts and never answers (both on 127.0.0.1)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes import free_port
from tests.test_systemd_unit import INSTALLED_HUSHDNS, UNIT_DIR, parse_unit

ROOT = Path(__file__).resolve().parents[1]


def _pre_start_argv(config: Path) -> list[str]:
    """ExecStartPre from the unit, with the installed paths swapped for this checkout's."""
    (line,) = parse_unit(UNIT_DIR / "hushdns.service")["ExecStartPre"]
    argv = shlex.split(line.lstrip("-+!@"))
    assert argv[0] == INSTALLED_HUSHDNS
    argv = [sys.executable, "-m", "resolver", *argv[1:]]
    return [str(config) if a == "/etc/hushdns/config.yaml" else a for a in argv]


def _config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "own.txt").write_text("tracker.example\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text('listen: ["127.0.0.1:5533"]\nupstreams: ["192.0.2.53"]\n'
                   f'blocking:\n  lists:\n    own: own.txt\n    subscribed: "{url}"\n')
    return cfg


def _run(tmp_path: Path, url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    state = tmp_path / "state"
    state.mkdir()
    t0 = time.monotonic()
    out = subprocess.run(_pre_start_argv(_config(tmp_path, url)), capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "STATE_DIRECTORY": str(state)})
    return out, time.monotonic() - t0


def test_pre_start_check_with_a_refusing_list_host(tmp_path: Path) -> None:
    out, took = _run(tmp_path, f"http://127.0.0.1:{free_port()}/list.txt")   # nothing listens
    assert out.returncode == 0, out.stdout + out.stderr
    assert took < 5
    assert "list subscribed: warning: not downloaded yet" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("check OK")


@pytest.fixture
def hanging_host():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)   # accepts (the kernel completes the handshake), never answers
    yield f"http://127.0.0.1:{s.getsockname()[1]}/list.txt"
    s.close()


def test_pre_start_check_with_a_host_that_accepts_and_never_answers(tmp_path: Path,
                                                                    hanging_host: str) -> None:
    out, took = _run(tmp_path, hanging_host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert took < 5   # systemd's default start timeout is 90 s; the old check took 96
    assert "list subscribed: warning: not downloaded yet" in out.stdout


def test_offline_check_reads_the_disk_copy(tmp_path: Path, hanging_host: str) -> None:
    """A URL list downloaded earlier is checked from its copy, still without the network."""
    from resolver.config import load_config
    from resolver.lists import remote

    cfg = load_config(_config(tmp_path, hanging_host))
    state = tmp_path / "state2"
    spec = next(s for s in cfg.all_lists() if s.name == "subscribed")
    body, meta = remote.copy_paths(spec.source, str(state))
    body.parent.mkdir(parents=True, exist_ok=True)
    body.write_text("a.example\nb.example\n")
    meta.write_text("{}")
    out = subprocess.run(_pre_start_argv(cfg.path if isinstance(cfg.path, Path) else Path(cfg.path)),
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "STATE_DIRECTORY": str(state)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "block list subscribed: 2 entries" in out.stdout


def test_query_never_downloads_a_list_without_a_copy(tmp_path: Path, hanging_host: str) -> None:
    """docs/lists.md: `query` reads disk copies only; a list with no copy is reported, not fetched."""
    state = tmp_path / "state"
    state.mkdir()
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "resolver", "query", "a.example", "-c",
                          str(_config(tmp_path, hanging_host))], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "STATE_DIRECTORY": str(state)})
    assert out.returncode == 0 and time.monotonic() - t0 < 5, out.stdout + out.stderr
    assert "note: list subscribed failed to load: not downloaded yet" in out.stdout

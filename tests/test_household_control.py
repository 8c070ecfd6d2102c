"""Household controls end to end: pause / resume / allow / status against a running server,
over the unix socket (the CLI, found through -c) and over TCP with a token."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import dns.rcode
import pytest

from resolver import cli
from resolver.config import load_config
from resolver.control.commands import request
from resolver.control.state import ControlError, HouseholdState
from resolver.metrics import render
from tests.conftest import ask
from tests.fakes import ServerThread

TOKEN = "s3cret-token-for-tests"
EXTRA = f"""clients:
  tablet: [127.0.0.1/32]
  tv: [127.0.0.2/32]
groups:
  kids: {{clients: [tablet], lists: [ads]}}
  living: {{clients: [tv], lists: [ads]}}
control: {{listen: "127.0.0.1:0", token: {TOKEN}}}
"""
LISTS = {"ads": "ads.example\n"}


@pytest.fixture
def srv(serve):
    return serve(EXTRA, lists=LISTS)


def _cli(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "-c", str(tmp_path / "config.yaml")])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tcp(srv: ServerThread, req: dict, token: str | None = TOKEN) -> dict:
    return request(req, address=srv.server.control.tcp_address, token=token)


def _blocked(srv: ServerThread, name: str = "ads.example", source: str = "127.0.0.1") -> bool:
    return ask(srv, name, source=source).rcode() == dns.rcode.NXDOMAIN


def test_the_unix_socket_is_group_readable_only(srv, tmp_path: Path) -> None:
    path = Path(srv.server.control.socket_path)
    assert path.parent == Path(os.environ["STATE_DIRECTORY"])
    assert path.stat().st_mode & 0o777 == 0o660


def test_pause_and_resume_over_the_unix_socket_found_through_the_config(srv, capsys, tmp_path,
                                                                        upstream) -> None:
    memo_answers = srv.server.stats.memo_counts   # (answers given, replies remembered)
    before = memo_answers()[0]
    for _ in range(3):
        assert _blocked(srv)
    assert memo_answers()[0] - before == 1      # the third answer came from the reply memo
    code, out, _ = _cli(capsys, tmp_path, "pause", "10m")
    assert code == 0 and "paused for everyone until" in out
    # At once, the repeated question is forwarded: the memo holds no reply made before the pause.
    seen = len(upstream.queries())
    assert not _blocked(srv)
    assert len(upstream.queries()) == seen + 1
    assert 'hushdns_blocking_paused{group="kids"} 1.0' in render(srv.stats).decode()
    code, out, _ = _cli(capsys, tmp_path, "resume")
    assert code == 0 and "resumed: everyone" in out
    assert _blocked(srv)
    assert 'hushdns_blocking_paused{group="kids"} 0.0' in render(srv.stats).decode()


def test_a_group_pause_leaves_other_groups_blocked(srv, capsys, tmp_path) -> None:
    code, _, _ = _cli(capsys, tmp_path, "pause", "1h", "--group", "living")
    assert code == 0
    assert not _blocked(srv, source="127.0.0.2")    # the tv
    assert _blocked(srv, source="127.0.0.1")        # the tablet


def test_a_device_pause(srv, capsys, tmp_path) -> None:
    assert _cli(capsys, tmp_path, "pause", "--device", "tv")[0] == 0
    assert not _blocked(srv, source="127.0.0.2")
    assert _blocked(srv, source="127.0.0.1")
    assert 'hushdns_blocking_paused_device{device="tv"} 1.0' in render(srv.stats).decode()
    assert _cli(capsys, tmp_path, "resume", "--device", "tv")[0] == 0
    assert _blocked(srv, source="127.0.0.2")


def test_temporary_allow_for_one_device(srv, capsys, tmp_path, caplog) -> None:
    assert _blocked(srv, "www.ads.example", "127.0.0.1")
    with caplog.at_level(logging.INFO, logger="hushdns"):
        code, out, _ = _cli(capsys, tmp_path, "allow", "ads.example", "--device", "tablet", "--for", "1h")
    assert code == 0 and "allowed ads.example for device tablet until" in out
    assert not _blocked(srv, "www.ads.example", "127.0.0.1")   # names below it too
    assert _blocked(srv, "www.ads.example", "127.0.0.2")       # the tv is not the tablet
    assert any("temporarily allowed ads.example for device tablet" in r.message for r in caplog.records)


def test_status_lists_everything(srv, capsys, tmp_path) -> None:
    _cli(capsys, tmp_path, "pause", "30m", "--group", "kids")
    _cli(capsys, tmp_path, "allow", "ads.example", "--device", "127.0.0.2", "--for", "2h")
    code, out, _ = _cli(capsys, tmp_path, "status")
    assert code == 0
    assert "lists: ads 1" in out
    assert "paused: group kids until" in out
    assert "temporary allows: ads.example for device 127.0.0.2 until" in out
    assert "upstreams: 127.0.0.1:" in out and "hushdns up 0d 0h 0m" in out
    code, out, _ = _cli(capsys, tmp_path, "status", "--json")
    st = json.loads(out)
    assert st["pauses"][0]["target"] == "kids" and 1700 < st["pauses"][0]["left"] <= 1800


def test_tcp_needs_the_token(srv, caplog) -> None:
    assert _tcp(srv, {"verb": "pause", "group": "kids"})["ok"]
    assert not _blocked(srv, source="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="hushdns"):
        wrong = _tcp(srv, {"verb": "resume"}, token="not-the-token-at-all")
        missing = _tcp(srv, {"verb": "status"}, token=None)
    assert not wrong["ok"] and "wrong or missing token" in wrong["error"]
    assert not missing["ok"]
    assert not _blocked(srv, source="127.0.0.1")     # the refused resume changed nothing
    assert srv.stats.control_refused[("tcp", "bad_token")] == 2
    assert 'hushdns_control_refused_total{listener="tcp",reason="bad_token"} 2.0' in render(srv.stats).decode()
    assert sum("refused: bad token" in r.message for r in caplog.records) == 2


def test_the_cli_over_tcp(srv, capsys, monkeypatch) -> None:
    host, port = srv.server.control.tcp_address
    monkeypatch.setenv("HUSHDNS_CONTROL_TOKEN", TOKEN)
    assert cli.main(["pause", "5m", "--control", f"{host}:{port}"]) == 0
    assert "paused for everyone" in capsys.readouterr().out
    monkeypatch.setenv("HUSHDNS_CONTROL_TOKEN", "wrong-token-wrong-token")
    assert cli.main(["resume", "--control", f"{host}:{port}"]) == 1
    assert "wrong or missing token" in capsys.readouterr().err


def test_concurrent_pauses_of_different_groups(srv) -> None:
    replies: list[dict] = []

    def pause(group: str) -> None:
        replies.append(_tcp(srv, {"verb": "pause", "duration": "1h", "group": group}))

    threads = [threading.Thread(target=pause, args=(g,)) for g in ("kids", "living") * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["ok"] for r in replies) and len(replies) == 10
    st = _tcp(srv, {"verb": "status"})["result"]
    assert sorted(p["target"] for p in st["pauses"]) == ["kids", "living"]
    assert not _blocked(srv, source="127.0.0.1") and not _blocked(srv, source="127.0.0.2")


@pytest.mark.parametrize("req, error", [
    ({"verb": "pause", "group": "nobody"}, "unknown group 'nobody' (groups: default, kids, living)"),
    ({"verb": "pause", "device": "fridge"}, "unknown device 'fridge': not an address or a known device name"),
    ({"verb": "pause", "duration": "-5m"}, "cannot be negative"),
    ({"verb": "pause", "duration": "0"}, "must be longer than 0"),
    ({"verb": "pause", "duration": "400d"}, "longer than the limit of 7 days"),
    ({"verb": "pause", "duration": "soon"}, "not a duration like 30m"),
    ({"verb": "allow", "name": "ads.example", "device": "tablet"}, "say for how long"),
    ({"verb": "allow", "name": "not a name", "device": "tablet", "for": "1h"}, "not a domain name"),
    ({"verb": "allow", "name": "ads.example", "for": "1h"}, "say which device"),
    ({"verb": "explode"}, "unknown verb 'explode'"),
])
def test_bad_requests_are_refused_with_a_reason(srv, req, error) -> None:
    reply = _tcp(srv, req)
    assert not reply["ok"] and error in reply["error"], reply
    assert _tcp(srv, {"verb": "status"})["result"]["pauses"] == []


def test_bad_input_on_the_command_line(srv, capsys, tmp_path) -> None:
    code, _, err = _cli(capsys, tmp_path, "pause", "--group", "nobody")
    assert code == 1 and "unknown group 'nobody'" in err


def test_a_timed_pause_expires_once_and_blocking_returns(srv, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="hushdns"):
        assert _tcp(srv, {"verb": "pause", "duration": "1s", "group": "kids"})["ok"]
        assert not _blocked(srv)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _blocked(srv):
            time.sleep(0.2)
        time.sleep(1.5)   # more ticks: the expiry must not be logged again
    assert _blocked(srv)
    assert sum("pause of group kids expired" in r.message for r in caplog.records) == 1


def test_state_survives_a_reload_and_a_restart(serve, tmp_path, upstream) -> None:
    srv = serve(EXTRA, lists=LISTS)
    assert _tcp(srv, {"verb": "pause", "duration": "1h", "group": "kids"})["ok"]
    assert _tcp(srv, {"verb": "pause", "duration": "1s", "group": "living"})["ok"]
    assert srv.reload()
    assert not _blocked(srv, source="127.0.0.1")
    srv.stop()
    time.sleep(1.2)   # the living room's pause expires while hushdns is stopped
    path = tmp_path / "config.yaml"
    again = ServerThread(load_config(path), reload_config=lambda: load_config(path))
    try:
        assert not _blocked(again, source="127.0.0.1")    # kids: still paused
        assert _blocked(again, source="127.0.0.2")        # living: expired, forgotten
        st = request({"verb": "status"}, socket_path=again.server.control.socket_path)["result"]
        assert [p["target"] for p in st["pauses"]] == ["kids"]
    finally:
        again.stop()


def test_expiry_is_logged_exactly_once_with_a_clock(tmp_path, caplog) -> None:
    cfg = load_config(text="groups: {kids: {clients: [10.0.0.0/24]}}\n",
                      overrides={"state_dir": str(tmp_path)})
    now = [1000.0]
    st = HouseholdState(cfg, clock=lambda: now[0])
    st.pause("10m", group="kids")
    st.allow("x.example", "10.0.0.5", "5m")
    with caplog.at_level(logging.INFO, logger="hushdns"):
        assert not st.tick()
        now[0] += 301
        assert st.tick()
        now[0] += 300
        assert st.tick()
        assert not st.tick()
    msgs = [r.message for r in caplog.records]
    assert msgs == ["temporary allow of x.example for device 10.0.0.5 expired",
                    "pause of group kids expired: blocking resumed"]
    with pytest.raises(ControlError, match="say --group or --device, not both"):
        st.pause(group="kids", device="10.0.0.5")


def test_garbage_on_the_socket_is_refused_and_counted(srv) -> None:
    import socket as s

    with s.socket(s.AF_UNIX, s.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect(srv.server.control.socket_path)
        c.sendall(b"pause everything now\n")
        reply = json.loads(c.makefile().readline())
    assert not reply["ok"] and "not a JSON object" in reply["error"]
    assert srv.stats.control_refused[("unix", "bad_request")] == 1
    for line in (b"[" * 5000 + b"\n", b'{"verb": "pause", "duration": 1e400}\n', b'{"verb": "pause", "group": 5}\n'):
        with s.socket(s.AF_UNIX, s.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(srv.server.control.socket_path)
            c.sendall(line)
            assert not json.loads(c.makefile().readline())["ok"]
    with s.socket(s.AF_UNIX, s.SOCK_STREAM) as c:   # a line over the limit: closed, no crash
        c.settimeout(5)
        c.connect(srv.server.control.socket_path)
        with contextlib.suppress(OSError):
            c.sendall(b"x" * 100_000 + b"\n")
        assert c.recv(100) == b""
    assert _tcp(srv, {"verb": "status"})["ok"]


def test_query_explains_a_saved_pause(srv, capsys, tmp_path) -> None:
    _cli(capsys, tmp_path, "pause", "1h", "--group", "kids")
    code, out, _ = _cli(capsys, tmp_path, "query", "ads.example", "--client", "tablet")
    assert code == 0
    assert "group kids: forwarded to" in out
    assert "  note: blocking paused for group kids until" in out


def test_negative_durations_on_the_command_line_get_the_servers_reason(srv, capsys, tmp_path) -> None:
    code, _, err = _cli(capsys, tmp_path, "pause", "-5m", "--group", "kids")
    assert code == 1 and "cannot be negative: '-5m'" in err
    code, _, err = _cli(capsys, tmp_path, "allow", "ads.example", "--device", "tablet", "--for", "-1h")
    assert code == 1 and "cannot be negative: '-1h'" in err
    code, _, err = _cli(capsys, tmp_path, "pause", "400d")
    assert code == 1 and "longer than the limit of 7 days" in err

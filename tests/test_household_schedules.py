"""Schedules: weekly windows per group in the config's time zone (overnight too), validated
with key and line, and followed by the running server (memo answers included)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dns.rcode
import pytest

from resolver.config import ConfigError, load_config
from resolver.household_config import Schedule
from tests.conftest import ask


def _at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 30 + day, hh, mm) if day < 1 else datetime(2026, 12, day, hh, mm)


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    # mon-fri 21:00-07:00; 2026-11-30 is a Monday, 2026-12-05 a Saturday.
    s = Schedule(("social",), frozenset(range(5)), 21 * 60, 7 * 60)
    assert _at(0, 22).weekday() == 0
    assert s.active(_at(0, 21)) and s.active(_at(0, 23, 59))
    assert s.active(_at(1, 6, 59)) and not s.active(_at(1, 7))
    assert not s.active(_at(0, 20, 59))
    assert s.active(_at(5, 6))            # Saturday morning: Friday night's window
    assert not s.active(_at(5, 22))       # Saturday night: no window starts on Saturday
    assert not s.active(_at(0, 6))        # Monday morning: Sunday started none
    day = Schedule(("games",), frozenset({5, 6}), 9 * 60, 12 * 60, "unblock")
    assert day.active(_at(6, 10)) and not day.active(_at(6, 12)) and not day.active(_at(4, 10))


def _cfg(schedule: str) -> str:
    return ("blocking: {lists: {ads: ads.txt, social: ads.txt}}\n"
            "groups:\n"
            "  kids:\n"
            "    clients: [10.0.0.0/24]\n"
            "    schedules:\n"
            f"      - {schedule}\n")


@pytest.mark.parametrize("schedule, error", [
    ('{lists: [social], from: "25:00", to: "07:00"}', 'groups.kids.schedules[0].from: needs from: a time'),
    ('{lists: [social], from: 21:00, to: "07:00"}', "(24-hour, quoted), not 1260"),
    ('{lists: [social], from: "21:00"}', "groups.kids.schedules[0]: needs to:"),
    ('{lists: [social], from: "21:00", to: "21:00"}', "from and to are the same time"),
    ('{lists: [social], days: [funday], from: "21:00", to: "07:00"}', "not a day or a range of days: 'funday'"),
    ('{lists: [tiktok], from: "21:00", to: "07:00"}', "no list named 'tiktok' in blocking.lists"),
    ('{lists: [social], from: "21:00", to: "07:00", action: maybe}', "must be one of block, unblock"),
    ('{lists: [social], from: "21:00", to: "07:00", every: day}', "unknown key"),
    ('{from: "21:00", to: "07:00"}', "a schedule needs at least one list"),
])
def test_malformed_windows_name_key_and_line(tmp_path, schedule, error) -> None:
    (tmp_path / "ads.txt").write_text("ads.example\n")
    (tmp_path / "c.yaml").write_text(_cfg(schedule))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert error in str(e.value) and "c.yaml:6)" in str(e.value), str(e.value)


def test_day_ranges(tmp_path) -> None:
    (tmp_path / "ads.txt").write_text("ads.example\n")
    (tmp_path / "c.yaml").write_text(_cfg('{lists: [social], days: [fri-mon, "wed"], from: "21:00", to: "07:00"}'))
    s = load_config(tmp_path / "c.yaml").groups["kids"].schedules[0]
    assert s.days == frozenset({4, 5, 6, 0, 2})


def _hhmm(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return f"{d.hour:02d}:{d.minute:02d}"


def test_the_server_follows_the_window_and_the_memo_with_it(serve, upstream) -> None:
    now = time.time()
    srv = serve("timezone: UTC\n"
                "clients: {tablet: [127.0.0.1/32]}\n"
                "groups:\n"
                "  default: {lists: [ads]}\n"
                "  kids:\n"
                "    clients: [tablet]\n"
                "    lists: [ads]\n"
                "    schedules:\n"
                f'      - {{lists: [social], from: "{_hhmm(now - 3600)}", to: "{_hhmm(now + 3600)}"}}\n',
                lists={"ads": "ads.example\n", "social": "social.example\n"})
    assert ask(srv, "social.example").rcode() == dns.rcode.NXDOMAIN     # bedtime
    assert ask(srv, "social.example").rcode() == dns.rcode.NXDOMAIN     # (remembered)
    assert ask(srv, "social.example").rcode() == dns.rcode.NXDOMAIN     # (from the memo)
    assert ask(srv, "social.example", source="127.0.0.2").rcode() == dns.rcode.NOERROR  # not a kid
    hh = srv.server.household
    assert "kids" in hh.status()["schedules"]

    async def later() -> None:
        hh.clock = lambda: time.time() + 3 * 3600   # the window is over
        hh.tick()

    srv.call(later())
    assert ask(srv, "social.example").rcode() == dns.rcode.NOERROR
    assert ask(srv, "ads.example").rcode() == dns.rcode.NXDOMAIN        # the group's own list stays


def test_unblock_window(serve) -> None:
    now = time.time()
    srv = serve("timezone: UTC\n"
                "groups:\n"
                "  default:\n"
                "    schedules:\n"
                f'      - {{lists: [games], action: unblock, from: "{_hhmm(now - 3600)}", '
                f'to: "{_hhmm(now + 3600)}"}}\n',
                lists={"games": "games.example\n", "ads": "ads.example\n"})
    assert ask(srv, "games.example").rcode() == dns.rcode.NOERROR
    assert ask(srv, "ads.example").rcode() == dns.rcode.NXDOMAIN


def test_windows_are_read_in_the_config_time_zone(tmp_path) -> None:
    from resolver.control.state import HouseholdState

    (tmp_path / "ads.txt").write_text("ads.example\n")
    (tmp_path / "c.yaml").write_text("timezone: Asia/Tokyo\n" + _cfg('{lists: [social], from: "21:00", to: "07:00"}'))
    cfg = load_config(tmp_path / "c.yaml")
    now = [datetime(2026, 12, 3, 13, 0, tzinfo=UTC).timestamp()]    # 22:00 in Tokyo
    st = HouseholdState(cfg, clock=lambda: now[0])
    assert st.windows == {"kids": (0,)}
    now[0] = datetime(2026, 12, 3, 23, 0, tzinfo=UTC).timestamp()   # 08:00 in Tokyo
    st.tick()
    assert st.windows == {}


def test_query_at_a_time(tmp_path, capsys) -> None:
    from resolver import cli

    (tmp_path / "ads.txt").write_text("ads.example\n")
    (tmp_path / "c.yaml").write_text("upstreams: ['127.0.0.1:1']\ntimezone: UTC\n"
                                     + _cfg('{lists: [social], days: [fri], from: "21:00", to: "07:00"}')
                                     .replace("clients: [10.0.0.0/24]", "clients: [10.0.0.0/24]\n    lists: []"))
    args = ["query", "ads.example", "--client", "10.0.0.5", "-c", str(tmp_path / "c.yaml")]
    assert cli.main([*args, "--at", "2026-12-05 06:59"]) == 0          # Saturday morning
    assert "blocked by list social" in capsys.readouterr().out
    assert cli.main([*args, "--at", "sat 07:00"]) == 0
    assert "forwarded to 127.0.0.1:1" in capsys.readouterr().out
    assert cli.main([*args, "--at", "teatime"]) == 2
    assert "not a time like 'sat 21:00'" in capsys.readouterr().err

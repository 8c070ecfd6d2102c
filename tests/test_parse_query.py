"""parse_query's one-pass read of the plain stub query agrees with the general parse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from resolver import wire
from resolver.wire import Drop, Reject, Request, parse_query
from tests.test_memo import datagrams

# Every field of a Request (slots in the pure-Python build, native attributes compiled).
_FIELDS = [n for n in dir(Request) if not n.startswith("_") and not callable(getattr(Request, n))]

def _slow(data: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as m:
        m.setattr(wire, "_plain_query", lambda *a: None)
        m.setattr(wire, "_QUESTIONS", {})
        return _outcome(data)


def _outcome(data: bytes) -> object:
    try:
        req = parse_query(data)
    except Drop:
        return "drop"
    except Reject as rej:
        return ("reject", rej.reply, rej.result)
    return {s: getattr(req, s, None) for s in _FIELDS}


def test_the_plain_query_read_matches_the_general_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = {"plain": 0, "other": 0}

    @settings(max_examples=1500, deadline=None, derandomize=True)
    @given(data=datagrams())
    def check(data: bytes) -> None:
        plain = wire._plain_query(data, "", "udp", None, None, None, 0.0) is not None
        taken["plain" if plain else "other"] += 1
        assert _outcome(data) == _slow(data, monkeypatch)

    check()
    assert taken["plain"] > 300 and taken["other"] > 300, taken

"""Upstream trouble is logged once per transition: WARNING with the reason when an upstream
goes down, INFO when it comes back, nothing per query."""

from __future__ import annotations

import logging
import time

import dns.rcode

from tests.conftest import ask
from tests.fakes import FakeUpstream, free_port

FAST = "server: {upstream_timeout: 0.2, upstream_total_timeout: 0.5}\ncache: {servfail_ttl: 0}\n"


def _records(caplog, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hushdns.upstream" and r.levelno == level]


def test_refusing_upstream_one_warning_naming_refused(serve, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"127.0.0.1:{free_port()}"   # nothing listens: ICMP port unreachable
    srv = serve(f'upstreams: ["{dead}"]\n' + FAST)
    for i in range(8):
        assert ask(srv, f"n{i}.example").rcode() == dns.rcode.SERVFAIL
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"upstream {dead} is down (refused" in warnings[0].getMessage()


def test_silent_upstream_warning_with_timeout_then_info_when_back(serve, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    up = FakeUpstream(silent=True)
    try:
        srv = serve(f'upstreams: ["{up.address}"]\n' + FAST, up=up)
        for i in range(6):
            assert ask(srv, f"s{i}.example").rcode() == dns.rcode.SERVFAIL
        warnings = _records(caplog, logging.WARNING)
        assert len(warnings) == 1 and "is down (timeout" in warnings[0].getMessage()
        up.silent = False
        deadline = time.monotonic() + 10
        while ask(srv, f"b{time.monotonic()}.example").rcode() != dns.rcode.NOERROR:
            assert time.monotonic() < deadline, "upstream never came back"
            time.sleep(0.2)
        for i in range(5):   # healthy queries log nothing more
            assert ask(srv, f"ok{i}.example").rcode() == dns.rcode.NOERROR
        infos = _records(caplog, logging.INFO)
        assert [r.getMessage() for r in infos] == [f"upstream {up.address} is back up"]
        assert len(_records(caplog, logging.WARNING)) == 1
    finally:
        up.close()

"""A reload keeps what the running server learned: rate-limit buckets, upstream health,
questions in flight (tests/test_server.py covers the cache carrying over)."""

from __future__ import annotations

import threading
import time

import dns.rcode

from tests.conftest import ask
from tests.fakes import FakeUpstream


def test_a_reload_does_not_refill_rate_limit_buckets(serve):
    srv = serve("rate_limit: {qps: 0.01, burst: 2, action: refused}\n")
    assert [ask(srv, f"n{i}.example").rcode() for i in range(3)] == [
        dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.REFUSED]
    assert srv.reload()
    assert ask(srv, "n9.example").rcode() == dns.rcode.REFUSED   # was a fresh burst


def test_a_reload_keeps_a_down_upstream_down(serve):
    dead = FakeUpstream(silent=True)
    good = FakeUpstream()
    try:
        srv = serve(f'upstreams: ["{dead.address}", "{good.address}"]\n'
                    "server: {upstream_timeout: 0.2}\n", up=good)
        for i in range(4):   # three failures: down
            assert ask(srv, f"d{i}.example").rcode() == dns.rcode.NOERROR
        asked = len(dead.queries())
        assert srv.stats.upstream_state[dead.address] == 0
        assert srv.reload()
        assert srv.stats.upstream_state[dead.address] == 0
        t0 = time.monotonic()
        assert ask(srv, "after.example").rcode() == dns.rcode.NOERROR
        assert time.monotonic() - t0 < 0.2       # not waiting upstream_timeout for it first
        assert len(dead.queries()) == asked      # was asked first again after the reload
    finally:
        dead.close()
        good.close()


def test_a_question_in_flight_during_a_reload_is_asked_upstream_once(serve):
    slow = FakeUpstream(delay=0.6)
    try:
        srv = serve(up=slow)
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(ask(srv, "slow.example").rcode()))
        first.start()
        deadline = time.monotonic() + 5
        while not slow.queries() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.reload()
        assert ask(srv, "slow.example").rcode() == dns.rcode.NOERROR
        first.join(5)
        assert results == [dns.rcode.NOERROR]
        assert len(slow.queries()) == 1          # the second one joined the first
    finally:
        slow.close()

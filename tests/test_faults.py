"""Faults: slow, silent and dead upstreams, serve-stale, broken reloads, and bounded memory."""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.rcode
import dnslib
import pytest

from resolver.clients import MAX_CACHED_ADDRESSES, ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists import loader
from resolver.stages.cache import Cache
from tests.conftest import ask
from tests.fakes import FakeUpstream, default_answer

FAST = "server: {upstream_timeout: 0.3, upstream_total_timeout: 1.0}\n"


@pytest.fixture
def ups():
    made: list[FakeUpstream] = []

    def _make(**kw) -> FakeUpstream:
        u = FakeUpstream(**kw)
        made.append(u)
        return u

    yield _make
    for u in made:
        u.close()


def two(serve, a: FakeUpstream, b: FakeUpstream, extra: str = ""):
    return serve(f'upstreams: ["{a.address}", "{b.address}"]\n' + extra, up=a)


def ede(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if o.otype == 15]


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    r = fn(*a, **kw)
    return r, time.monotonic() - t0


# --- failover ---------------------------------------------------------------------------------


def test_silent_upstream_next_one_asked_after_about_a_second(serve, ups):
    a, b = ups(silent=True), ups()
    srv = two(serve, a, b)
    r, took = timed(ask, srv, "failover.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert 0.9 <= took <= 1.5
    assert b.queries()[0].at - a.queries()[0].at == pytest.approx(1.0, abs=0.2)


def test_a_slow_answer_from_the_first_upstream_still_counts(serve, ups):
    """An ISP resolver that takes 1.5 s on a cold miss is answered, although the next one
    was asked at 1 s: the first query stays open until the total timeout."""
    def slow_answer(q):
        r = default_answer(q)
        r.rr[0].rdata = dnslib.A("192.0.2.15")
        return r

    a, b = ups(delay=1.5, answer=slow_answer), ups(silent=True)
    srv = two(serve, a, b)
    r, took = timed(ask, srv, "cold-miss.test")
    assert [rd.address for rd in r.answer[0]] == ["192.0.2.15"]
    assert 1.4 <= took <= 2.0
    assert len(b.queries()) == 1           # the second upstream was asked meanwhile
    # With a single upstream the same holds (its own retransmission does not lose the first).
    c = ups(delay=1.5)
    srv1 = serve(up=c)
    r, took = timed(ask, srv1, "cold-miss.test")
    assert r.rcode() == dns.rcode.NOERROR and 1.4 <= took <= 2.0


def test_all_upstreams_down_servfail_within_5s_then_cached_briefly(serve, ups):
    a, b = ups(silent=True), ups(silent=True)
    srv = two(serve, a, b, "cache: {servfail_ttl: 2}\n")
    r, took = timed(ask, srv, "down.test", edns=True)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert ede(r) == [23]                   # Network Error (RFC 8914)
    assert 3.5 <= took < 5.0                # before a LAN client's own resolver gives up
    asked = len(a.queries()) + len(b.queries())
    # The failure is cached (RFC 9520): asked again at once, no upstream traffic.
    r, took = timed(ask, srv, "down.test")
    assert r.rcode() == dns.rcode.SERVFAIL and took < 0.2
    assert len(a.queries()) + len(b.queries()) == asked
    # ... only briefly: after servfail_ttl the upstreams are asked again, and they are back.
    a.silent = b.silent = False
    time.sleep(2.1)
    r = ask(srv, "down.test")
    assert r.rcode() == dns.rcode.NOERROR


def short_ttl(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    r = default_answer(q)
    for rr in r.rr:
        rr.ttl = 1
    return r


def test_serve_stale_when_upstreams_fail_within_the_configured_age(serve, ups):
    up = ups(answer=short_ttl)
    srv = serve(FAST + "cache: {serve_stale: 2}\n", up=up)
    for name in ("stale-ok.test", "stale-old.test"):
        assert ask(srv, name).answer[0].ttl == 1
    t0 = time.monotonic()
    time.sleep(1.3)
    up.silent = True
    # Expired 0.3 s ago, upstream silent: the old answer, TTL 30, marked stale (EDE 3).
    r, took = timed(ask, srv, "stale-ok.test", edns=True)
    assert r.rcode() == dns.rcode.NOERROR
    assert [rd.address for rd in r.answer[0]] == ["192.0.2.1"]
    assert r.answer[0].ttl == 30
    assert ede(r) == [3]
    assert took < 1.5
    # It is not asked upstream again for a while: the stale answer is served from the cache.
    n = len(up.queries())
    r = ask(srv, "stale-ok.test")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl <= 30
    assert len(up.queries()) == n
    # Expired longer ago than serve_stale: no stale answer.
    time.sleep(max(0.0, 3.2 - (time.monotonic() - t0)))
    assert ask(srv, "stale-old.test").rcode() == dns.rcode.SERVFAIL


def test_failing_upstream_is_backed_off_probed_and_comes_back(serve, ups):
    a, b = ups(silent=True), ups()
    srv = two(serve, a, b, "server: {upstream_timeout: 0.3, upstream_total_timeout: 1.5}\n")
    for i in range(3):                       # each waits 0.3 s for a, then b answers
        r, took = timed(ask, srv, f"warm{i}.test")
        assert r.rcode() == dns.rcode.NOERROR and took >= 0.25
    assert srv.stats.upstream_state == {a.address: 0, b.address: 1}
    before = len(a.queries())
    t0 = time.monotonic()
    slow = 0
    while time.monotonic() - t0 < 2.4:      # ~2.4 s of traffic while a is down
        r, took = timed(ask, srv, f"busy{time.monotonic()}.test")
        assert r.rcode() == dns.rcode.NOERROR
        slow += took > 0.2
        time.sleep(0.02)
    assert slow == 0                         # nobody waits for the dead upstream
    probes = len(a.queries()) - before
    assert 1 <= probes <= 2                  # probed once a second at most, not hammered
    # It recovers: the next probe gets an answer and it is back in rotation.
    a.silent = False
    t1 = time.monotonic()
    while srv.stats.upstream_state[a.address] == 0 and time.monotonic() - t1 < 6:
        ask(srv, f"recover{time.monotonic()}.test")
        time.sleep(0.05)
    assert srv.stats.upstream_state[a.address] == 1
    n = len(a.queries())
    ask(srv, "back.test")
    assert len(a.queries()) == n + 1


def test_all_down_upstreams_are_still_asked(serve, ups):
    """Being marked down must not fail queries fast when there is nobody else to ask."""
    up = ups(silent=True)
    srv = serve(FAST, up=up)
    for i in range(4):
        ask(srv, f"gone{i}.test")
    assert srv.stats.upstream_state[up.address] == 0
    up.silent = False
    r, took = timed(ask, srv, "returns.test")
    assert r.rcode() == dns.rcode.NOERROR and took < 0.3
    assert srv.stats.upstream_state[up.address] == 1


# --- reload with broken input ------------------------------------------------------------------


def test_reload_with_bad_yaml_keeps_the_old_config(serve, tmp_path, caplog):
    srv = serve(lists={"vendor": "blocked.test\n"})
    assert ask(srv, "blocked.test").rcode() == dns.rcode.NXDOMAIN
    cfg = tmp_path / "config.yaml"
    good = cfg.read_text()
    for broken in ("listen: [\n", good + "cache: {max_entries: lots}\n", good + "bogus_key: 1\n"):
        cfg.write_text(broken)
        with caplog.at_level(logging.ERROR, logger="hushdns"):
            assert srv.reload() is False
        assert srv.stats.config_reload_success == 0
        assert "reload failed" in caplog.text and "config.yaml" in caplog.text
        caplog.clear()
        assert ask(srv, "blocked.test").rcode() == dns.rcode.NXDOMAIN
        assert ask(srv, "fine.test").rcode() == dns.rcode.NOERROR
    cfg.write_text(good)
    assert srv.reload() is True
    assert srv.stats.config_reload_success == 1


def test_reload_with_a_mostly_garbage_list_keeps_the_old_rules(serve, tmp_path, caplog):
    srv = serve(lists={"vendor": "blocked.test\nalso-blocked.test\n"})
    assert ask(srv, "also-blocked.test").rcode() == dns.rcode.NXDOMAIN
    (tmp_path / "vendor.txt").write_text(
        "<html><body>404 Not Found</body></html>\n" * 20 + "new.test\n")
    with caplog.at_level(logging.ERROR):
        srv.reload()
    assert srv.stats.config_reload_success == 0
    assert "vendor" in caplog.text and "refusing" in caplog.text
    assert ask(srv, "also-blocked.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(srv, "new.test").rcode() == dns.rcode.NOERROR
    assert srv.stats.list_load_failures["vendor"] >= 1
    (tmp_path / "vendor.txt").write_text("new.test\n")
    assert srv.reload() is True and srv.stats.config_reload_success == 1
    assert ask(srv, "new.test").rcode() == dns.rcode.NXDOMAIN


def test_a_downloaded_list_with_zero_entries_is_refused_and_the_last_good_kept(tmp_path):
    cfg = load_config(tmp_path / "c.yaml", text=(
        "upstreams: [127.0.0.1]\nstate_dir: state\n"
        "blocking: {lists: {remote: 'https://lists.invalid/vendor.txt'}}\n"))
    first = loader.load_all(cfg, texts={"remote": "tracker.test\n"})
    assert first.index.match("a.tracker.test", 1, 0) is not None
    for empty in ("", "# nothing here\n", "<!doctype html>\n"):
        snap = loader.load_all(cfg, first, texts={"remote": empty})
        assert snap.lists["remote"].error
        assert snap.lists["remote"].entries == 1
        assert snap.index.match("a.tracker.test", 1, 0) is not None


# --- bounded memory -------------------------------------------------------------------------------


def flood(srv, names: list[str], source: str = "127.0.0.1", wait: float = 3.0,
          window: int = 100) -> list:
    """Send every name, at most ``window`` unanswered at a time (a raw client does not
    retry, so the server's socket buffer must not overflow); return the parsed replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    raw: list[bytes] = []

    def reader() -> None:
        s.settimeout(wait)
        while len(raw) < len(names):
            try:
                raw.append(s.recv(4096))
            except (TimeoutError, OSError):
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i, n in enumerate(names):
            q = dns.message.make_query(n, "A")
            q.id = i & 0xFFFF
            s.sendto(q.to_wire(), (srv.host, srv.port))
            while i + 1 - len(raw) >= window and t.is_alive():   # bounded outstanding queries
                time.sleep(0.001)
        t.join(wait + len(names) / 1000)
    finally:
        s.close()
    return [dns.message.from_wire(r) for r in raw]


def test_cache_stays_within_max_entries_under_a_flood_of_unique_names(serve):
    srv = serve("cache: {max_entries: 200}\n")
    got = flood(srv, [f"u{i}.flood.test" for i in range(1000)])
    assert len(got) == 1000
    assert len(srv.server.pipeline.find(Cache).entries) == 200
    assert srv.stats.cache_evictions == 800
    assert srv.stats.cache_entries() == 200
    # The newest names are the ones kept (LRU).
    assert ask(srv, "u999.flood.test").rcode() == dns.rcode.NOERROR
    assert srv.stats.cache_hits == 1


def test_inflight_cap_answers_servfail_counted_and_not_cached(serve, ups):
    up = ups(delay=0.5)
    srv = serve("server: {max_inflight: 3}\n", up=up)
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda i: ask(srv, f"if{i}.test"), range(10)))
    rcodes = [r.rcode() for r in replies]
    assert rcodes.count(dns.rcode.NOERROR) == 3
    assert rcodes.count(dns.rcode.SERVFAIL) == 7
    assert srv.stats.limited[("127.0.0.1", "inflight")] == 7
    assert len(up.queries()) == 3
    refused = [i for i, r in enumerate(replies) if r.rcode() == dns.rcode.SERVFAIL]
    assert ask(srv, f"if{refused[0]}.test").rcode() == dns.rcode.NOERROR


def test_client_labels_and_client_table_are_bounded(serve, tmp_path: Path):
    srv = serve("metrics: {listen: null, max_clients: 4}\n")
    for i in range(2, 12):
        ask(srv, "label.test", source=f"127.0.0.{i}")
    labels = {client for client, _, _ in srv.stats.queries}
    assert len(labels) == 5 and "other" in labels
    assert sum(srv.stats.queries.values()) == 10
    cfg = load_config(None, text="upstreams: [127.0.0.1]\nblocking: {}")
    table = ClientTable(cfg, loader.Blocklists(), LabelBound(10))
    for i in range(MAX_CACHED_ADDRESSES + 500):
        table.lookup(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(table.cache) <= MAX_CACHED_ADDRESSES

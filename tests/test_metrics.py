"""The collector, the client-label bound and the /metrics server, over real sockets."""

from __future__ import annotations

import asyncio
import gc
import gzip
import http.client
import random
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resolver import __version__
from resolver.clients import ClientTable, LabelBound
from resolver.config import load_config
from resolver.lists.loader import Blocklists
from resolver.metrics import (
    CONTENT_TYPE,
    MAX_REQUEST_HEAD,
    make_registry,
    render,
    snapshot,
    start_metrics_server,
)
from resolver.stats import DURATION_BUCKETS, RESULTS, Stats
from resolver.wire import COMPILED
from tests.fakes import FakeUpstream, ServerThread

Sample = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Sample, float]:
    """Exposition text -> {(sample name, sorted labels): value}; raises on bad syntax."""
    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def scrape_text(stats: Stats) -> str:
    return generate_latest(make_registry(stats)).decode()


# What hushdns_build_info says of this build: CI runs the suite pure and compiled.
HOT_PATH = "compiled" if COMPILED else "python"

def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def http_get(address: tuple[str, int], path: str, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    # Generous: on a loaded 2-core CI machine a scrape competes for the GIL with
    # the test's own counting loop; a real failure shows up as a wrong value, not a wait.
    conn = http.client.HTTPConnection(address[0], address[1], timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- collector


def test_every_series_in_the_issue_is_exported_with_exact_values() -> None:
    s = Stats()
    for _ in range(7):
        s.query("phone", "A", "blocked", 0.00005)
        s.block("phone", "xiaomi", "api.account.xiaomi.com")
    s.query("laptop", "AAAA", "forwarded", 0.03)
    s.query("laptop", "AAAA", "cached", 0.0002)
    s.upstream("9.9.9.9:53", "ok", 0.03)
    s.upstream("9.9.9.9:53", "timeout")
    s.cache_hits, s.cache_misses, s.cache_evictions = 5, 3, 1
    s.cache_entries = lambda: 42
    s.list_entries["xiaomi"] = 12
    s.list_last_success["xiaomi"] = 1700000000.5
    s.list_load_failures["remote"] = 2
    s.config_reload_success = 0
    s.limited[("phone", "rate")] = 4
    s.upstream_state["9.9.9.9:53"] = 1

    got = parse(scrape_text(s))
    assert value(got, "hushdns_queries_total", client="phone", qtype="A", result="blocked") == 7
    assert value(got, "hushdns_blocked_total", client="phone", list="xiaomi") == 7
    assert value(got, "hushdns_blocked_domains_total", list="xiaomi",
                 domain="api.account.xiaomi.com") == 7
    assert value(got, "hushdns_request_duration_seconds_count", result="blocked") == 7
    assert value(got, "hushdns_upstream_requests_total", upstream="9.9.9.9:53", transport="udp", outcome="timeout") == 1
    assert value(got, "hushdns_upstream_duration_seconds_count", upstream="9.9.9.9:53", transport="udp") == 1
    assert value(got, "hushdns_upstream_up", upstream="9.9.9.9:53", transport="udp") == 1
    assert value(got, "hushdns_cache_entries") == 42
    assert value(got, "hushdns_cache_hits_total") == 5
    assert value(got, "hushdns_cache_misses_total") == 3
    assert value(got, "hushdns_cache_evictions_total") == 1
    assert value(got, "hushdns_list_entries", list="xiaomi") == 12
    assert value(got, "hushdns_list_last_success_timestamp_seconds", list="xiaomi") == 1700000000.5
    # A list that never loaded: age is "forever", failures are visible, no size.
    assert value(got, "hushdns_list_last_success_timestamp_seconds", list="remote") == 0
    assert value(got, "hushdns_list_load_failures_total", list="remote") == 2
    assert value(got, "hushdns_list_load_failures_total", list="xiaomi") == 0
    assert ("hushdns_list_entries", (("list", "remote"),)) not in got
    assert value(got, "hushdns_config_reload_success") == 0
    assert value(got, "hushdns_build_info", version=__version__, hot_path=HOT_PATH) == 1
    assert value(got, "hushdns_limited_total", client="phone", reason="rate") == 4


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    s = Stats()
    # One observation per bucket, one past the last bound, one exactly on a bound.
    values = [b / 2 for b in DURATION_BUCKETS] + [100.0, DURATION_BUCKETS[3]]
    for v in values:
        s.query("c", "A", "forwarded", v)
    got = parse(scrape_text(s))
    buckets = sorted(
        ((float(dict(lbl)["le"]), v) for (name, lbl), v in got.items()
         if name == "hushdns_request_duration_seconds_bucket"))
    assert [b for b, _ in buckets] == [*DURATION_BUCKETS, float("inf")]
    expected = [sum(1 for v in values if v <= b) for b, _ in buckets]
    assert [c for _, c in buckets] == expected
    assert buckets[-1][1] == value(got, "hushdns_request_duration_seconds_count", result="forwarded")
    assert value(got, "hushdns_request_duration_seconds_sum", result="forwarded") == pytest.approx(
        sum(values))


def test_process_series_are_exported_next_to_ours() -> None:
    got = parse(scrape_text(Stats()))
    names = {n for n, _ in got}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_start_time_seconds", "process_open_fds"} <= names
    assert value(got, "process_resident_memory_bytes") > 0


def test_empty_stats_still_scrape_cleanly() -> None:
    got = parse(scrape_text(Stats()))
    assert value(got, "hushdns_build_info", version=__version__, hot_path=HOT_PATH) == 1
    assert value(got, "hushdns_config_reload_success") == 1
    assert "hushdns_upstream_up" not in {n for n, _ in got}  # no upstream asked yet


def test_label_values_are_escaped() -> None:
    s = Stats()
    s.block('we"ird\\name\n', "l", None)
    got = parse(scrape_text(s))
    assert value(got, "hushdns_blocked_total", client='we"ird\\name\n', list="l") == 1


def test_broken_cache_size_callback_does_not_break_the_scrape() -> None:
    s = Stats()

    def boom() -> int:
        raise RuntimeError("bug")

    s.cache_entries = boom
    got = parse(scrape_text(s))
    assert value(got, "hushdns_cache_entries") != value(got, "hushdns_cache_entries")  # NaN


def test_snapshot_is_detached_from_later_increments() -> None:
    s = Stats()
    s.query("a", "A", "blocked", 0.001)
    s.upstream_state["u"] = 1
    s.cache_entries = lambda: 3
    snap = snapshot(s)
    s.query("a", "A", "blocked", 0.001)
    s.query("b", "A", "cached", 0.001)
    s.upstream_state["u"] = 0
    s.cache_entries = lambda: 9
    got = parse(render(snap).decode())
    assert value(got, "hushdns_queries_total", client="a", qtype="A", result="blocked") == 1
    assert ("hushdns_queries_total", (("client", "b"), ("qtype", "A"), ("result", "cached"))) not in got
    assert value(got, "hushdns_request_duration_seconds_count", result="blocked") == 1
    assert value(got, "hushdns_upstream_up", upstream="u", transport="udp") == 1
    assert value(got, "hushdns_cache_entries") == 3


# ---------------------------------------------------------------- client labels
# The bound lives in the core (resolver.clients.LabelBound, applied by
# ClientTable); these tests pin down what the metrics promise about it.

OTHER = "other"


def client_table(tmp_path: Path, yaml_text: str) -> ClientTable:
    path = tmp_path / "config.yaml"
    path.write_text('listen: ["127.0.0.1:0"]\nupstreams: ["127.0.0.1:53"]\n' + yaml_text)
    config = load_config(path)
    return ClientTable(config, Blocklists(), LabelBound(config.metrics.max_clients))


def test_client_label_is_the_configured_name_else_the_address(tmp_path: Path) -> None:
    table = client_table(tmp_path, "clients:\n  redmi-phone: [192.168.1.20]\n"
                                   "  laptop: [192.168.1.30, 'fd00::30']\n")
    assert table.lookup("192.168.1.20").label == "redmi-phone"
    assert table.lookup("192.168.1.21").label == "192.168.1.21"
    # Several addresses with one name take one label (and one slot).
    assert table.lookup("192.168.1.30").label == "laptop"
    assert table.lookup("fd00::30").label == "laptop"
    assert table.labels.seen == {"redmi-phone", "192.168.1.21", "laptop"}


def test_client_labels_are_bounded_and_counts_stay_exact(tmp_path: Path) -> None:
    table = client_table(tmp_path, "metrics: {listen: null, max_clients: 3}\n")
    stats = Stats()
    ips = [f"10.0.0.{i}" for i in range(1, 11)]
    sent = {ip: (i + 1) * 3 for i, ip in enumerate(ips)}
    order = [ip for ip, n in sent.items() for _ in range(n)]
    random.Random(7).shuffle(order)
    first_seen: list[str] = []
    for ip in order:
        if ip not in first_seen:
            first_seen.append(ip)
        stats.block(table.lookup(ip).label, "l", None)
    kept = first_seen[:3]
    got = parse(scrape_text(stats))
    clients = {dict(lbl)["client"] for (name, lbl) in got if name == "hushdns_blocked_total"}
    assert clients == {*kept, OTHER}
    for ip in kept:
        assert value(got, "hushdns_blocked_total", client=ip, list="l") == sent[ip]
    assert value(got, "hushdns_blocked_total", client=OTHER, list="l") == sum(
        n for ip, n in sent.items() if ip not in kept)
    assert sum(v for (n, _), v in got.items() if n == "hushdns_blocked_total") == len(order)


def test_client_label_bound_survives_a_reload(tmp_path: Path) -> None:
    """Labels handed out keep their series in Stats, so they keep their slots."""
    bound = LabelBound(2)
    assert bound("10.0.0.1") == "10.0.0.1"
    assert bound("tv") == "tv"
    bound.limit = 2            # what Server._install does on reload
    assert bound("10.0.0.3") == OTHER
    assert bound("10.0.0.1") == "10.0.0.1"
    assert bound("tv") == "tv"


def test_many_distinct_addresses_never_exceed_the_bound(tmp_path: Path) -> None:
    table = client_table(tmp_path, "metrics: {listen: null, max_clients: 5}\n")
    labels = {table.lookup(f"fd00::{i:x}").label for i in range(20_000)}
    assert len(labels) == 6 and OTHER in labels


# ---------------------------------------------------------------- HTTP server


def run(coro):  # noqa: ANN001, ANN201 - tiny test helper
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_metrics_and_healthz_over_http() -> None:
    async def main() -> None:
        stats = Stats()
        stats.block("tv", "samsung", None)
        srv = await start_metrics_server(stats, "127.0.0.1", 0)
        try:
            assert srv.address[0] == "127.0.0.1" and srv.address[1] > 0
            status, headers, body = await asyncio.to_thread(http_get, srv.address, "/metrics")
            assert status == 200
            assert headers["content-type"] == CONTENT_TYPE
            assert value(parse(body.decode()), "hushdns_blocked_total", client="tv",
                         list="samsung") == 1
            status, _, body = await asyncio.to_thread(http_get, srv.address, "/healthz")
            assert (status, body) == (200, b"ok\n")
            status, _, _ = await asyncio.to_thread(http_get, srv.address, "/nope")
            assert status == 404
            status, headers, _ = await asyncio.to_thread(http_get, srv.address, "/metrics", "POST")
            assert status == 405 and headers["allow"] == "GET, HEAD"
            status, headers, body = await asyncio.to_thread(
                http_get, srv.address, "/metrics?x=1", "GET", {"Accept-Encoding": "gzip"})
            assert status == 200 and headers["content-encoding"] == "gzip"
            assert b"hushdns_build_info" in gzip.decompress(body)
            status, headers, body = await asyncio.to_thread(http_get, srv.address, "/metrics", "HEAD")
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        finally:
            await srv.close()
        # Closed means closed: nothing listens any more.
        with pytest.raises(OSError):
            socket.create_connection(srv.address, timeout=2).close()

    run(main())


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async def main() -> None:
        stats = Stats()
        srv = await start_metrics_server(stats, "127.0.0.1", 0)
        try:
            def three() -> list[int]:
                conn = http.client.HTTPConnection(*srv.address, timeout=10)
                out = []
                for _ in range(3):
                    stats.cache_hits += 1
                    conn.request("GET", "/metrics")
                    r = conn.getresponse()
                    out.append(int(value(parse(r.read().decode()), "hushdns_cache_hits_total")))
                conn.close()
                return out

            assert await asyncio.to_thread(three) == [1, 2, 3]
        finally:
            await srv.close()

    run(main())


def raw_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /metrics SPDY/3\r\n\r\n", b"505"),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (MAX_REQUEST_HEAD * 2) + b"\r\n\r\n", b"413"),
        (b"\xff\xfe\x00\x01\r\n\r\n", b"400"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(payload: bytes, status: bytes) -> None:
    async def main() -> None:
        srv = await start_metrics_server(Stats(), "127.0.0.1", 0)
        try:
            reply = await asyncio.to_thread(raw_exchange, srv.address, payload)
            assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == status
            code, _, _ = await asyncio.to_thread(http_get, srv.address, "/healthz")
            assert code == 200
        finally:
            await srv.close()

    run(main())


def test_truncated_request_and_silent_clients_do_not_wedge_the_server() -> None:
    async def main() -> None:
        srv = await start_metrics_server(Stats(), "127.0.0.1", 0)
        try:
            silent = [socket.create_connection(srv.address, timeout=5) for _ in range(5)]
            half = socket.create_connection(srv.address, timeout=5)
            half.sendall(b"GET /metr")
            half.close()
            code, _, _ = await asyncio.to_thread(http_get, srv.address, "/metrics")
            assert code == 200
            for s in silent:
                s.close()
        finally:
            await srv.close()

    run(main())


# ---------------------------------------------------------------- scrapes under load


def assert_monotonic(prev: dict[Sample, float], cur: dict[Sample, float]) -> None:
    for key, v in prev.items():
        name = key[0]
        if name.endswith(("_total", "_bucket", "_count", "_sum")):
            assert key in cur, f"{key} vanished"
            assert cur[key] >= v, f"{key} went down: {v} -> {cur[key]}"


def assert_histograms_consistent(cur: dict[Sample, float]) -> None:
    for (name, lbl), v in cur.items():
        if name == "hushdns_request_duration_seconds_count":
            inf = cur[("hushdns_request_duration_seconds_bucket",
                       tuple(sorted((*lbl, ("le", "+Inf")))))]
            assert inf == v


def hammer(stats: Stats, stop: threading.Event | None, n: int, rng: random.Random) -> None:
    clients = [f"10.0.0.{i}" for i in range(40)]
    for _ in range(n):
        if stop is not None and stop.is_set():
            return
        c = rng.choice(clients)
        r = rng.choice(RESULTS)
        stats.query(c, rng.choice(("A", "AAAA", "HTTPS")), r, rng.random() / 100)
        if r == "blocked":
            stats.block(c, rng.choice(("xiaomi", "samsung")), "api.example")
        stats.upstream(f"u{rng.randrange(3)}", "ok", rng.random() / 10)


def test_scrapes_during_heavy_traffic_on_the_loop_parse_and_never_go_down() -> None:
    """The intended deployment: increments and scrapes share one asyncio loop."""
    async def main() -> None:
        stats = Stats()
        srv = await start_metrics_server(stats, "127.0.0.1", 0)
        stop = asyncio.Event()
        sent = 0

        async def traffic() -> None:
            nonlocal sent
            rng = random.Random(1)
            while not stop.is_set():
                hammer(stats, None, 500, rng)
                sent += 500
                # ~500 queries per millisecond at most: heavy, yet the loop still turns,
                # as it does between datagrams in the real server.
                await asyncio.sleep(0.0005)

        task = asyncio.create_task(traffic())
        try:
            prev: dict[Sample, float] = {}
            for _ in range(20):
                _, _, body = await asyncio.to_thread(http_get, srv.address, "/metrics")
                cur = parse(body.decode())
                assert_monotonic(prev, cur)
                assert_histograms_consistent(cur)
                prev = cur
        finally:
            stop.set()
            await task
        total = sum(v for (n, _), v in prev.items() if n == "hushdns_queries_total")
        assert 0 < total <= sent
        _, _, body = await asyncio.to_thread(http_get, srv.address, "/metrics")
        final = parse(body.decode())
        assert sum(v for (n, _), v in final.items() if n == "hushdns_queries_total") == sent
        await srv.close()

    run(main())


def test_collecting_from_another_thread_while_counting_stays_valid() -> None:
    """If someone ever serves /metrics from a thread, a racy read must still be sane."""
    stats = Stats()
    registry = make_registry(stats)
    stop = threading.Event()
    worker = threading.Thread(target=hammer, args=(stats, stop, 10**9, random.Random(2)))
    worker.start()
    try:
        prev: dict[Sample, float] = {}
        deadline = time.monotonic() + 3
        scrapes = 0
        while time.monotonic() < deadline:
            cur = parse(generate_latest(registry).decode())
            assert_monotonic(prev, cur)
            assert_histograms_consistent(cur)
            prev = cur
            scrapes += 1
        assert scrapes > 3
    finally:
        stop.set()
        worker.join()


def test_a_large_scrape_does_not_stall_the_event_loop() -> None:
    """512 clients x 5 qtypes x 9 results = 23k series take ~0.2 s to format;
    DNS answers on the same loop must not wait for that."""
    stats = Stats()
    for c in range(512):
        for q in ("A", "AAAA", "HTTPS", "PTR", "TXT"):
            for r in RESULTS:
                stats.query(f"10.0.{c // 250}.{c % 250}", q, r, 0.001)

    async def main() -> tuple[float, float]:
        srv = await start_metrics_server(stats, "127.0.0.1", 0)
        worst = 0.0
        done = False

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        # The same ticker with nothing else going on, for as long as the scrapes take:
        # what a busy shared machine alone does to the loop's wake-ups.
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.6)
        done = True
        await tick
        quiet, worst, done = worst, 0.0, False
        tick = asyncio.create_task(ticker())
        try:
            for _ in range(3):
                status, _, body = await asyncio.to_thread(http_get, srv.address, "/metrics")
                assert status == 200 and body.count(b"hushdns_queries_total{") == 512 * 5 * len(RESULTS)
        finally:
            done = True
            await tick
            await srv.close()
        return worst, quiet

    t0 = time.perf_counter()
    render(snapshot(stats))
    inline = time.perf_counter() - t0
    # As the server does (lifecycle.tune_gc freezes its start-up heap): otherwise a full
    # collection of this test process's heap, every earlier test's objects, can run in
    # the render thread and hold the GIL for ~100 ms (seen once in a full suite run).
    gc.collect()
    gc.freeze()
    try:
        worst, quiet = run(main())
    finally:
        gc.unfreeze()
    # Inline formatting would hold the loop for all of ``inline``; formatted off the loop,
    # the worst wake-up is the machine's own jitter plus a few GIL switch intervals.
    assert worst < max(0.1, inline / 2) + quiet, (worst, inline, quiet)


# ---------------------------------------------------------------- wired into the Server


def test_server_serves_metrics_and_rebinds_them_on_reload(tmp_path: Path) -> None:
    up = FakeUpstream()
    cfg = tmp_path / "config.yaml"
    base = f'listen: ["127.0.0.1:0"]\nupstreams: ["{up.address}"]\n'
    cfg.write_text(base + 'metrics: {listen: "127.0.0.1:0"}\n')
    srv = ServerThread(load_config(cfg), reload_config=lambda: load_config(cfg))
    try:
        addr = srv.server.metrics_server.address
        assert http_get(addr, "/healthz")[0] == 200
        dns.query.udp(dns.message.make_query("www.example.org", "A"), srv.host, port=srv.port,
                      timeout=5, source="127.0.0.7")
        got = parse(http_get(addr, "/metrics")[2].decode())
        assert value(got, "hushdns_queries_total", client="127.0.0.7", qtype="A",
                     result="forwarded") == 1

        cfg.write_text(base + "metrics: {listen: null}\n")
        assert srv.reload()
        assert srv.server.metrics_server is None
        with pytest.raises(OSError):
            socket.create_connection(addr, timeout=2).close()

        cfg.write_text(base + 'metrics: {listen: "127.0.0.1:0"}\n')
        assert srv.reload()
        got = parse(http_get(srv.server.metrics_server.address, "/metrics")[2].decode())
        # Same Stats: the counters survived both reloads.
        assert value(got, "hushdns_queries_total", client="127.0.0.7", qtype="A",
                     result="forwarded") == 1
        assert value(got, "hushdns_config_reload_success") == 1
    finally:
        srv.stop()
        up.close()

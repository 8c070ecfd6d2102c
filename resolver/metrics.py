"""Prometheus export: a custom Collector over ``Stats`` and a tiny /metrics server.

Why a custom Collector: the hot path only bumps ints in dicts (see ``stats.py``);
this module turns those dicts into samples when Prometheus scrapes, so counting
costs nothing extra per query and the counts stay exact.

Why our own HTTP server on the asyncio loop instead of prometheus-client's
threaded one: a scrape copies the dicts on the same thread that mutates them,
between two awaits, so it sees one consistent snapshot and the hot path needs
no lock.  Only the formatting of that private copy runs in a worker thread, so
a large scrape does not stall DNS answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from resolver import __version__
from resolver.stats import Histogram, Stats
from resolver.tcp_limits import ConnectionTable
from resolver.wire import COMPILED

log = logging.getLogger("hushdns.metrics")

# The classic text format; Prometheus 2.x and every scraper understand it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

K = TypeVar("K")
V = TypeVar("V")


def _items(d: dict[K, V]) -> list[tuple[K, V]]:
    """Snapshot a dict's items.

    On the asyncio loop this is a plain copy.  Should anyone collect from
    another thread, a concurrent insert can raise RuntimeError mid-copy;
    retrying is then correct because counters only grow.
    """
    for _ in range(100):
        try:
            return list(d.items())
        except RuntimeError:
            continue
    return list(d.copy().items())


def _buckets(h: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Stats' per-bucket counts -> Prometheus cumulative buckets ending in +Inf.

    The count is derived from the copied buckets (not ``h.n``) so that
    ``_count`` always equals the ``+Inf`` bucket, even in a racy read.
    """
    counts = list(h.counts)
    out: list[tuple[str, float]] = []
    cum = 0
    for bound, c in zip(h.bounds, counts, strict=False):
        cum += c
        out.append((floatToGoString(bound), cum))
    cum += sum(counts[len(h.bounds):])
    out.append(("+Inf", cum))
    return out, h.total


class StatsCollector:
    """Builds every ``hushdns_*`` family from a ``Stats`` at scrape time."""

    def __init__(self, stats: Stats, version: str = __version__) -> None:
        self.stats = stats
        self.version = version

    def describe(self) -> list[Metric]:
        # Nothing to pre-register: names are fixed, and an empty describe()
        # keeps the registry from calling collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.stats

        m = CounterMetricFamily(
            "hushdns_queries", "DNS queries answered (or dropped), by client, query type and result.",
            labels=("client", "qtype", "result"))
        for (client, qtype, result), n in _items(s.queries):
            m.add_metric((client, qtype, result), n)
        yield m

        m = CounterMetricFamily(
            "hushdns_blocked", "Queries blocked, by client and by the list whose rule matched.",
            labels=("client", "list"))
        for (client, name), n in _items(s.blocked):
            m.add_metric((client, name), n)
        yield m

        m = CounterMetricFamily(
            "hushdns_blocked_domains",
            "Blocked queries per listed domain; only lists with track_domains: true.",
            labels=("list", "domain"))
        for (name, domain), n in _items(s.blocked_domains):
            m.add_metric((name, domain), n)
        yield m

        m = CounterMetricFamily(
            "hushdns_limited", "Requests turned away by a bound (rate limit, in-flight cap, ...).",
            labels=("client", "reason"))
        for (client, reason), n in _items(s.limited):
            m.add_metric((client, reason), n)
        yield m

        m = CounterMetricFamily(
            "hushdns_proxy_dropped",
            "Datagrams and TCP connections dropped at the PROXY protocol v2 check "
            "(untrusted source, malformed, truncated, header missing from a trusted proxy).",
            labels=("reason",))
        for reason, n in _items(getattr(s, "proxy_dropped", {})):
            m.add_metric((reason,), n)
        yield m

        yield CounterMetricFamily(
            "hushdns_dnstap_dropped",
            "dnstap messages dropped because the queue was full or the collector was gone.",
            value=getattr(s, "dnstap_dropped", 0) + getattr(s, "dnstap_lost", lambda: 0)())

        answered, stored = s.memo_counts()
        yield CounterMetricFamily(
            "hushdns_reply_memo_answers",
            "UDP answers given from the reply memo (remembered replies), this pipeline's memo.",
            value=answered)
        yield CounterMetricFamily(
            "hushdns_reply_memo_stored",
            "Replies remembered by the reply memo (this pipeline's memo); many stores and few "
            "answers make it remember only a sample of questions.",
            value=stored)

        m = CounterMetricFamily(
            "hushdns_client_connections",
            "Client connections accepted, by transport (tcp, tls = DoT, https = DoH).",
            labels=("proto",))
        for proto, n in _items(s.connections):
            m.add_metric((proto,), n)
        yield m

        yield CounterMetricFamily(
            "hushdns_client_labels_released",
            "Client label values released after metrics.client_idle without a query "
            "(their series are gone; the slot is free for a new client).",
            value=getattr(s, "client_labels_released", 0))

        m = CounterMetricFamily(
            "hushdns_rebind_removed",
            "Private or loopback addresses removed from answers for public names "
            "(rebind_protection).")
        m.add_metric((), getattr(s, "rebind_removed", 0))
        yield m

        h = HistogramMetricFamily(
            "hushdns_request_duration_seconds",
            "Time from receiving a query to sending its answer, by result.",
            labels=("result",))
        for result, hist in _items(s.request_duration):
            buckets, total = _buckets(hist)
            h.add_metric((result,), buckets, total)
        yield h

        m = CounterMetricFamily(
            "hushdns_upstream_requests",
            "Exchanges with upstream resolvers, by outcome (ok, timeout, error, truncated, "
            "spoof_rejected, late).",
            labels=("upstream", "transport", "outcome"))
        tr = s.upstream_transport
        for (upstream, outcome), n in _items(s.upstream_requests):
            m.add_metric((upstream, tr.get(upstream, "udp"), outcome), n)
        yield m

        h = HistogramMetricFamily(
            "hushdns_upstream_duration_seconds",
            "Round-trip time of upstream exchanges that got an answer.",
            labels=("upstream", "transport"))
        for upstream, hist in _items(s.upstream_duration):
            buckets, total = _buckets(hist)
            h.add_metric((upstream, tr.get(upstream, "udp")), buckets, total)
        yield h

        g = GaugeMetricFamily(
            "hushdns_upstream_up",
            "1 if the upstream answered last time, 0 while it is in back-off after repeated failures.",
            labels=("upstream", "transport"))
        for upstream, up in _items(s.upstream_state):
            g.add_metric((upstream, tr.get(upstream, "udp")), up)
        yield g

        yield GaugeMetricFamily(
            "hushdns_cache_entries", "Answers currently held in the cache.",
            value=_safe_call(s.cache_entries))
        yield CounterMetricFamily(
            "hushdns_cache_hits", "Cache lookups that found a fresh answer.", value=s.cache_hits)
        yield CounterMetricFamily(
            "hushdns_cache_misses", "Cache lookups that found nothing usable.", value=s.cache_misses)
        yield CounterMetricFamily(
            "hushdns_cache_evictions", "Cache entries evicted to stay within the size bound.",
            value=s.cache_evictions)

        entries = dict(_items(s.list_entries))
        last_ok = dict(_items(s.list_last_success))
        failures = dict(_items(s.list_load_failures))
        # Every list we know of gets all three series, so a first failure is
        # a visible 0 -> 1 increase and a never-loaded list shows age "now".
        names = sorted(set(entries) | set(last_ok) | set(failures))
        g = GaugeMetricFamily(
            "hushdns_list_entries", "Rules in the list version currently in service.",
            labels=("list",))
        for name in names:
            if name in entries:
                g.add_metric((name,), entries[name])
        yield g
        g = GaugeMetricFamily(
            "hushdns_list_last_success_timestamp_seconds",
            "Unix time of the list's last successful load (0: never loaded).",
            labels=("list",))
        for name in names:
            g.add_metric((name,), last_ok.get(name, 0.0))
        yield g
        m = CounterMetricFamily(
            "hushdns_list_load_failures", "Failed attempts to load or refresh the list.",
            labels=("list",))
        for name in names:
            m.add_metric((name,), failures.get(name, 0))
        yield m

        yield from _querylog_families(s)
        g = GaugeMetricFamily(
            "hushdns_device_last_query_timestamp_seconds",
            "Unix time of the device's (client's) last query, to within 10 s; 0 for a device "
            "known from leases or the neighbour table that never asked.",
            labels=("client",))
        for client, t in _items(getattr(s, "device_last_query", {})):
            g.add_metric((client,), t)
        yield g
        g = GaugeMetricFamily(
            "hushdns_blocking_paused",
            "1 while blocking is paused for the group (hushdns pause), else 0.",
            labels=("group",))
        for group, v in sorted(_items(s.paused)):
            g.add_metric((group,), v)
        yield g
        g = GaugeMetricFamily(
            "hushdns_blocking_paused_device",
            "1 for each device (clients: name or address) whose blocking is paused.",
            labels=("device",))
        for device, v in sorted(_items(s.paused_devices)):
            g.add_metric((device,), v)
        yield g
        m = CounterMetricFamily(
            "hushdns_control_refused",
            "Control API requests refused (listener tcp/unix; reason bad_token, bad_request).",
            labels=("listener", "reason"))
        for (listener, reason), v in sorted(_items(s.control_refused)):
            m.add_metric((listener, reason), v)
        yield m
        m = CounterMetricFamily(
            "hushdns_bypass_lookups",
            "Lookups of names that move a device off this resolver (kind: firefox_canary, ddr, "
            "private_relay, doh_resolver), per client.",
            labels=("client", "kind"))
        for (client, kind), v in sorted(_items(s.bypass_lookups)):
            m.add_metric((client, kind), v)
        yield m

        yield GaugeMetricFamily(
            "hushdns_config_reload_success",
            "1 if the last configuration (re)load succeeded, 0 if it failed (the old one stays in service).",
            value=s.config_reload_success)
        g = GaugeMetricFamily(
            "hushdns_build_info", "Always 1; the version label says which hushdns is running, "
            "hot_path whether its per-query modules are the mypyc-compiled build.",
            labels=("version", "hot_path"))
        g.add_metric((self.version, "compiled" if COMPILED else "python"), 1)
        yield g


def _querylog_families(s: Stats) -> Iterator[Metric]:
    """The query log's counters and the per-device facts its writer keeps."""
    yield CounterMetricFamily(
        "hushdns_querylog_written", "Rows written to the query log.",
        value=getattr(s, "querylog_written", 0))
    m = CounterMetricFamily(
        "hushdns_querylog_dropped",
        "Query log rows not written, by reason (queue_full, disk_full, locked, corrupt, "
        "unavailable, error); DNS answered them all.",
        labels=("reason",))
    for reason, n in _items(getattr(s, "querylog_dropped", {})):
        m.add_metric((reason,), n)
    yield m
    m = CounterMetricFamily(
        "hushdns_device_new_names",
        "Names a device asked for the first time (per the query log's inventory).",
        labels=("client",))
    for client, n in _items(getattr(s, "device_new_names", {})):
        m.add_metric((client,), n)
    yield m


def _safe_call(fn: Callable[[], int]) -> float:
    """A broken size callback must not fail the whole scrape."""
    try:
        return float(fn())
    except Exception:  # noqa: BLE001 - any failure here is a bug elsewhere; keep scraping
        log.exception("cache_entries callback failed")
        return float("nan")


def snapshot(stats: Stats) -> Stats:
    """A copy of ``stats`` that later increments do not touch.

    Taken on the asyncio loop (a few dict copies: ~1 ms for 20k series), so
    the expensive part, formatting the text, can run in a worker thread
    without stalling DNS answers for the ~200 ms a 20k-series scrape takes.
    Generic over attributes so counters added to Stats later are copied too.
    """
    snap = copy.copy(stats)
    for name, v in vars(stats).items():
        if not isinstance(v, dict):
            continue
        if isinstance(next(iter(v.values()), None), Histogram):
            setattr(snap, name, {k: _copy_hist(h) for k, h in _items(v)})
        else:
            setattr(snap, name, v.copy())  # one C call: atomic even against threads
    entries = _safe_call(stats.cache_entries)
    snap.cache_entries = lambda: entries  # type: ignore[assignment,return-value]
    return snap


def _copy_hist(h: Histogram) -> Histogram:
    return Histogram(bounds=h.bounds, counts=list(h.counts), total=h.total)


def make_registry(stats: Stats, process: bool = True) -> CollectorRegistry:
    """A private registry: hushdns's collector plus the standard ``process_*`` series.

    Private so nothing else in the process (or a test) leaks series into it.
    ``process_*`` (memory, CPU, open fds, start time) is what tells a slow or
    leaking resolver apart from a busy LAN; it reads /proc, never Stats.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    if process:
        ProcessCollector(registry=registry)
    return registry


# --------------------------------------------------------------------------
# /metrics and /healthz over a minimal HTTP/1.1 server on the asyncio loop.

MAX_REQUEST_HEAD = 8192       # request line + headers; Prometheus sends ~300 bytes
MAX_CONNECTIONS = 64          # concurrent scrapers/browsers (see ConnectionTable for who yields)
MAX_PER_CLIENT = 8            # per client address; Prometheus keeps one
IDLE_TIMEOUT = 30.0           # seconds a keep-alive connection may sit idle
HEAD_TIMEOUT = 10.0           # seconds to send a complete request head

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Request Header Fields Too Large", 500: "Internal Server Error",
            505: "HTTP Version Not Supported"}


class MetricsServer:
    """The running /metrics endpoint; ``address`` is the bound (host, port)."""

    def __init__(self, stats: Stats,
                 source: Callable[[], Awaitable[Stats]] | None = None) -> None:
        self.stats = stats
        # Where a scrape's numbers come from: this process's Stats, or (workers)
        # the merged snapshots of every worker process.
        self.source = source or self._local
        self.serving = False
        self._server: asyncio.base_events.Server | None = None
        # Idle keep-alive connections make room for new ones, the biggest holder's first:
        # 64 idle connections used to lock every scrape out.
        self._conns: ConnectionTable[_Conn] = ConnectionTable(
            MAX_CONNECTIONS, MAX_PER_CLIENT, lambda c: c.idle_since)
        self.address: tuple[str, int] = ("", 0)

    async def _local(self) -> Stats:
        return snapshot(self.stats)

    async def _start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=MAX_REQUEST_HEAD)
        sock = self._server.sockets[0]
        self.address = tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        self.serving = True

    async def close(self) -> None:
        """Stop listening and drop open connections (a scrape in flight just fails)."""
        self.serving = False
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Conn()
        conn.idle_since = time.monotonic()   # has asked for nothing yet
        admitted, victim = self._conns.admit(conn, str(peer[0]) if peer else "")
        if not admitted or not self.serving:
            self._conns.remove(conn)
            writer.close()
            return
        if victim is not None and victim.task is not None:
            victim.task.cancel()
        conn.task = task = asyncio.ensure_future(self._serve(reader, writer, conn))
        task.add_done_callback(lambda _t: self._conns.remove(conn))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     conn: _Conn | None = None) -> None:
        conn = conn or _Conn()
        try:
            first = True
            while self.serving:
                try:
                    conn.idle_since = time.monotonic()
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT if first else IDLE_TIMEOUT)
                    conn.idle_since = None
                except asyncio.LimitOverrunError:
                    await self._send(writer, 413, b"request head too large\n", close=True)
                    return
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                first = False
                keep_alive = await self._handle(head, writer)
                if not keep_alive:
                    return
        except Exception:  # noqa: BLE001 - one bad connection must never take the loop down
            log.exception("metrics connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection may be reused."""
        try:
            text = head.decode("latin-1")
            request_line, *header_lines = text[:-4].split("\r\n")
            method, target, version = request_line.split(" ")
            headers: dict[str, str] = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                headers[name.lower()] = value.strip()
        except ValueError:
            await self._send(writer, 400, b"bad request\n", close=True)
            return False
        if not version.startswith("HTTP/1."):
            await self._send(writer, 505, b"HTTP/1.x only\n", close=True)
            return False
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            # We never read bodies; refuse rather than misparse the next request.
            await self._send(writer, 400, b"request bodies are not accepted\n", close=True)
            return False
        close = (headers.get("connection", "").lower() == "close"
                 or (version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive"))
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"only GET and HEAD\n", close=close,
                             extra={"Allow": "GET, HEAD"})
            return not close
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if path == "/metrics":
            gz = "gzip" in headers.get("accept-encoding", "")
            try:
                # Copy on the loop (consistent, cheap); format in a thread (slow).
                body = await asyncio.to_thread(render, await self.source(), gz)
            except Exception:  # noqa: BLE001 - report, keep serving
                log.exception("metrics collection failed")
                await self._send(writer, 500, b"collection failed\n", close=close)
                return not close
            extra = {"Content-Encoding": "gzip"} if gz else {}
            await self._send(writer, 200, body, close=close, content_type=CONTENT_TYPE,
                             extra=extra, head_only=head_only)
        elif path == "/healthz":
            await self._send(writer, 200, b"ok\n", close=close, head_only=head_only)
        else:
            await self._send(writer, 404, b"not found; try /metrics\n", close=close,
                             head_only=head_only)
        return not close

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, *, close: bool,
                    content_type: str = "text/plain; charset=utf-8",
                    extra: dict[str, str] | None = None, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}",
                 f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}",
                 f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()


class _Conn:
    """One /metrics connection: its task, and since when it waits for a request (idle)."""

    __slots__ = ("task", "idle_since")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.idle_since: float | None = None


def render(stats: Stats, gzipped: bool = False) -> bytes:
    """The text exposition of ``stats`` (which should be a ``snapshot``)."""
    body = generate_latest(make_registry(stats))
    return gzip.compress(body, compresslevel=1) if gzipped else body


async def start_metrics_server(stats: Stats, host: str, port: int,
                               source: Callable[[], Awaitable[Stats]] | None = None
                               ) -> MetricsServer:
    """Serve /metrics for ``stats`` (or what ``source`` returns) on (host, port); port 0 picks one."""
    server = MetricsServer(stats, source)
    await server._start(host, port)
    log.info("metrics on http://%s:%d/metrics", *server.address[:2])
    return server

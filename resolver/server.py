"""The edge: UDP and TCP listeners, bytes in and bytes out; lifecycle and reloads.

Why the edge does so little per packet: a repeated question is answered by the
reply memo before it is even parsed; anything else is validated once
(``wire.parse_query``), its client looked up (one dict lookup), and handed to
the pipeline (``resolver.pipeline``), which answers through the sink given
with the query, now or when the upstream answers.  Unexpected errors become
SERVFAIL here and in the pipeline's forwarding callback, nowhere else.  The
per-datagram code (the UDP batches, one query handled) is resolver/udp_edge.py,
compiled with the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from . import upstream
from .carryover import carry_over
from .clients import ClientTable, LabelBound
from .config import Config, ConfigError, Endpoint, format_endpoint
from .control.api import ControlApi
from .control.state import HouseholdState
from .devices.service import DeviceService
from .dnstap import DnstapWriter
from .listen_errors import ListenError, listen_error
from .lists import loader, offload
from .lists.loader import Blocklists
from .lists.upkeep import ListUpkeep
from .memo import ReplyMemo
from .metrics import snapshot, start_metrics_server
from .pipeline import Pipeline, build_pipeline, new_memo
from .proxy_protocol import SIGNATURE, ProxyDrop, ProxyGate, parse
from .querylog import QueryLog, open_log
from .stats import Stats
from .tcp_limits import ConnectionTable
from .udp_edge import UdpEdge, handle_query
from .wire import COMPILED

HOSTS_POLL_SECONDS = 2.0
log = logging.getLogger("hushdns")

UDP_RCVBUF = 4 * 1024 * 1024
TCP_WRITE_HIGH = 16 * 1024   # answers buffered for a TCP client before its reading pauses
TCP_BATCH = 64               # frames of one connection answered per loop iteration


class TcpConnection(asyncio.Protocol):
    """One DNS-over-TCP client (RFC 7766): length-prefixed messages, pipelined, answered as ready."""

    proto = "tcp"   # edge_tls.TlsConnection: "tls"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.pending = 0
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[Any, ...] = ("", 0)
        self.last = time.monotonic()
        self.frame_started: float | None = None
        self.read_paused = False
        self.write_paused = False
        self.dispatching = False
        # PROXY v2: "header" until a trusted proxy's header is read, "check" for the
        # first bytes of anyone else while the feature is on, None after that.
        self.proxy: str | None = None
        self.batch_full = False   # a batch was cut short; the rest follows next iteration

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername") or ("", 0)
        srv = self.server
        if not srv.admit_connection(self, transport, self.proto):
            return
        # A client that does not read its answers is paused after 16 KB, not 64 KB.
        with contextlib.suppress(AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=TCP_WRITE_HIGH)  # type: ignore[attr-defined]
        gate = srv.proxy
        if gate is not None:
            self.proxy = "header" if gate.trusted(self.peer[0]) else "check"
            if self.proxy == "header":
                self.frame_started = time.monotonic()   # the sweep closes a stalled header

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp_connections.remove(self)

    def idle_since(self) -> float | None:
        """When it went idle (nothing in flight, no partial frame), or None while busy."""
        if self.pending or self.buf or self.write_paused:
            return None
        return self.last

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last = time.monotonic()
        if self.proxy is not None and not self._proxy_header():
            return
        self._dispatch()

    def _proxy_header(self) -> bool:
        """Read (trusted proxy) or refuse (anyone else) a PROXY v2 header; False: not yet, or gone."""
        buf, gate = self.buf, self.server.proxy
        if self.proxy == "check":
            if len(buf) < 12 and buf == SIGNATURE[:len(buf)]:
                return False
            if buf[:12] == SIGNATURE:
                gate.drop("untrusted")  # type: ignore[union-attr]
                self.transport.abort()  # type: ignore[union-attr]
                return False
            self.proxy = None
            return True
        try:
            end, client = parse(buf, self.peer)
        except ProxyDrop as d:
            if d.reason != "truncated":
                gate.drop(d.reason)  # type: ignore[union-attr]
                self.transport.abort()  # type: ignore[union-attr]
            return False
        del buf[:end]
        self.peer, self.proxy, self.frame_started = client, None, None
        return True

    def _dispatch(self) -> None:
        """Hand complete frames to the server, at most ``tcp_max_pipelined`` in flight.

        Frames beyond the cap wait in the buffer (and reading pauses) until
        answers go out, even when many arrived in one segment; so do all
        frames while the client is not reading its answers (write buffer
        full), or one 256 KB read of questions could queue megabytes of answers.
        """
        if self.dispatching:   # re-entered through a synchronous answer
            return
        self.dispatching = True
        self.batch_full = False
        try:
            buf = self.buf
            limit = self.server.config.server.tcp_max_pipelined
            budget = TCP_BATCH   # then UDP and other connections get their turn
            while len(buf) >= 2 and self.pending < limit and not self.write_paused:
                if budget == 0:
                    self.batch_full = True
                    asyncio.get_running_loop().call_soon(self._next_batch)
                    break
                budget -= 1
                n = buf[0] << 8 | buf[1]
                if n < 12:   # cannot even hold a header: the stream is garbage
                    self.transport.abort()  # type: ignore[union-attr]
                    return
                if len(buf) < 2 + n:
                    break
                msg = bytes(buf[2:2 + n])
                del buf[:2 + n]
                self.frame_started = None
                self.pending += 1
                self.server.handle(msg, self.peer, self.proto, self)
                t = self.transport
                if t is None or t.is_closing():
                    return
            if len(buf) >= 2 and len(buf) >= 2 + (buf[0] << 8 | buf[1]):
                self.frame_started = None   # complete frames waiting for the cap
            elif buf and self.frame_started is None:
                self.frame_started = time.monotonic()
        finally:
            self.dispatching = False
        self._flow()

    def _next_batch(self) -> None:
        self.batch_full = False
        t = self.transport
        if t is not None and not t.is_closing():
            self._dispatch()

    def sendto(self, wire: bytes | None, addr: Any = None) -> None:
        self.pending -= 1
        t = self.transport
        if wire is not None and t is not None and not t.is_closing():
            t.write(len(wire).to_bytes(2, "big") + wire)
            self.last = time.monotonic()
        if self.buf and not self.dispatching and not self.batch_full:
            self._dispatch()
        else:
            self._flow()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions.
        self.write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.buf and not self.dispatching and not self.batch_full:
            self._dispatch()
        else:
            self._flow()

    def _flow(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        limit = self.server.config.server.tcp_max_pipelined
        should_pause = self.write_paused or self.pending >= limit or self.batch_full
        if should_pause and not self.read_paused:
            t.pause_reading()
            self.read_paused = True
        elif not should_pause and self.read_paused:
            t.resume_reading()
            self.read_paused = False

    def expired(self, now: float, idle: float) -> bool:
        """Idle with nothing in flight, a frame dribbling in too slowly, or a client not reading."""
        if self.frame_started is not None and now - self.frame_started > idle:
            return True
        if self.write_paused and now - self.last > idle:
            return True
        return self.pending == 0 and now - self.last > idle


class Server:
    """Owns the sockets, the pipeline, the lists and the stats for one configuration at a time."""

    def __init__(self, config: Config, stats: Stats | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port   # several worker processes share the listen ports
        self.stats = stats or Stats()
        self.reload_config = reload_config
        self.labels = LabelBound(config.metrics.max_clients, config.metrics.client_idle)
        self.lists = Blocklists()
        self.pipeline: Pipeline | None = None
        self.clients: ClientTable | None = None
        # Device names (leases, neighbours, PTR) refreshed in the background: resolver/devices/.
        self.devices = DeviceService(self.stats, lambda: self.clients)
        # The reply memo of the current pipeline, or None (see resolver/memo.py).
        self.memo: ReplyMemo | None = None
        # Questions waiting for an upstream, shared by every pipeline this server builds.
        self.inflight: dict[bytes, Any] = {}
        self.udp_edges: list[UdpEdge] = []
        self.tcp_servers: list[asyncio.AbstractServer] = []
        self.tcp_connections: ConnectionTable[TcpConnection] = ConnectionTable(
            config.server.tcp_max_connections, config.server.tcp_max_per_client,
            lambda c: c.idle_since())   # TcpConnection, TlsConnection, DohServerConnection
        self.udp_addresses: list[Endpoint] = []
        self.tcp_addresses: list[Endpoint] = []
        from .edge_tls import EncryptedListeners  # edge_tls builds on TcpConnection

        self.encrypted = EncryptedListeners(self)
        self._background: list[asyncio.Task[Any]] = []
        self._reload_lock = asyncio.Lock()
        self._disposals: set[asyncio.Task[Any]] = set()   # old snapshots being freed
        self.metrics_server: Any = None
        # PROXY v2 trusted sources, or None when server.proxy_protocol_from is empty.
        self.proxy: ProxyGate | None = None
        # The dnstap writer (kept across reloads while its settings hold), or None.
        self.tap: DnstapWriter | None = None
        self.querylog: QueryLog | None = None   # query_log: the SQLite log (resolver/querylog)
        # Lifecycle hooks (sd_notify uses them); plain callables.
        self.on_ready: Callable[[], None] = lambda: None
        self.on_reload_start: Callable[[], None] = lambda: None
        self.on_reload_done: Callable[[], None] = lambda: None
        self.on_stopping: Callable[[], None] = lambda: None
        # Pauses, temporary allows, schedules: outlive every pipeline (resolver/control).
        self.household = HouseholdState(config, stats=self.stats)
        self.household.on_change.append(self._household_changed)
        self.household.device_names = lambda: set(self.devices.map.names.values())
        self.control: ControlApi | None = None
        self.started = time.time()

    @property
    def waiting(self) -> dict[bytes, Any]:
        """The questions in flight upstream (each with the queries waiting for it)."""
        return self.inflight

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load lists, build the pipeline, bind every listener; returns once serving."""
        # The loader logs each list that fails, once.
        self.lists = await asyncio.to_thread(loader.load_all, self.config, None, self.stats)
        log.info("config %s: %s", self.config.path, _lists_summary(self.lists))
        await self.devices.configure(self.config)
        if not self.reuse_port:   # workers: N have no control API; a saved pause could not end
            self.household.load()
        self._install(self.config, self.lists)
        for ep in self.config.listen:
            await self._bind(ep)
        await self.encrypted.start(self.config)
        await self._start_metrics()
        await self._start_control()
        self._background.append(asyncio.create_task(self._sweep_tcp()))
        self._background.append(asyncio.create_task(self._release_idle_labels()))
        upkeep = ListUpkeep(lambda: self.config, lambda: self.lists, self.stats,
                            lambda lists: self._swap(self.config, lists), self._reload_lock)
        self._background += upkeep.tasks()
        self._background.append(asyncio.create_task(self.devices.run()))
        log.info("serving on %s (udp) and %s (tcp); upstreams %s; hot path %s",
                 ", ".join(map(format_endpoint, self.udp_addresses)),
                 ", ".join(map(format_endpoint, self.tcp_addresses)),
                 ", ".join(map(format_endpoint, self.config.upstreams)),
                 "compiled (mypyc)" if COMPILED else "pure Python")
        if self.encrypted.addresses:
            log.info("serving encrypted DNS on %s", ", ".join(u.url() for u in self.encrypted.addresses))
        self.on_ready()

    async def stop(self) -> None:
        self.on_stopping()
        if self.control is not None:
            await self.control.close()
        for t in [*self._background, *self._disposals]:
            t.cancel()
        for edge in self.udp_edges:
            edge.close()
        for s in self.tcp_servers:
            s.close()
        self.encrypted.close()
        for c in list(self.tcp_connections):
            if c.transport is not None:
                c.transport.abort()
        if self.pipeline is not None:
            self.pipeline.close()   # the questions in flight, of this and earlier pipelines
        if self.tap is not None:
            await asyncio.to_thread(self.tap.close)
        upstream.close_idle_sockets(asyncio.get_running_loop())
        await asyncio.gather(*self._background, return_exceptions=True)
        for s in self.tcp_servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        await self.encrypted.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.querylog is not None:
            await asyncio.to_thread(self.querylog.close)

    async def reload(self) -> bool:
        """Re-read config and lists; on any failure the running ones keep serving."""
        async with self._reload_lock:
            self.on_reload_start()
            try:
                return await self._reload_locked()
            except Exception as exc:   # whatever broke, the running config keeps serving
                log.error("reload failed, keeping the running configuration:\n%s",
                          exc if isinstance(exc, ConfigError) else repr(exc),
                          exc_info=not isinstance(exc, ConfigError))
                self.stats.config_reload_success = 0
                return False
            finally:
                self.on_reload_done()   # READY=1 after every RELOADING=1, failed or not

    async def _reload_locked(self) -> bool:
        # The config is read and parsed in a thread: never on the event loop.
        new = await asyncio.to_thread(self.reload_config) if self.reload_config else self.config
        lists = await offload.build(new, self.lists, self.stats)
        if new.listen != self.config.listen or new.listen_encrypted != self.config.listen_encrypted:
            log.warning("listen addresses changed: restart hushdns to rebind them")
        metrics_moved = new.metrics.listen != self.config.metrics.listen
        await self.devices.configure(new)
        if new.household.control != self.config.household.control:
            log.warning("control API settings changed: restart hushdns to apply them")
        self.household.configure(new)
        self._swap(new, lists)
        self.encrypted.reload(new)
        if metrics_moved:
            await self._start_metrics(reloading=True)
        failed = lists.failed()
        # A list that failed keeps its previous rules (loader), but the reload
        # did not fully succeed: say so in the metric and the log.
        self.stats.config_reload_success = 0 if failed else 1
        for info in failed:
            log.error("reload: list %s failed: %s", info.spec.name, info.error)
        log.info("reloaded: %d lists, %d domains", len(lists.lists), len(lists.index))
        return True

    async def _start_metrics(self, reloading: bool = False) -> None:
        """(Re)bind /metrics to ``config.metrics.listen``; off when it is null."""
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        ep = self.config.metrics.listen
        if ep is None:
            return
        try:
            self.metrics_server = await start_metrics_server(self.stats, ep[0], ep[1],
                                                             source=self._scrape)
        except OSError as exc:
            # A busy metrics port must not take DNS down with it, at start-up or on reload.
            log.error("metrics: %s; DNS keeps serving without /metrics",
                      listen_error(ep, "tcp", exc, "--metrics ADDR or --metrics off"))

    async def _scrape(self) -> Stats:
        """What /metrics reads: a snapshot, with the devices' last-query clock brought up to now."""
        self.devices.note_activity()
        return snapshot(self.stats)

    def _swap(self, config: Config, lists: Blocklists) -> None:
        """Install a new snapshot; the replaced one is freed in slices, after in-flight
        queries (which may still check a CNAME against it) are done."""
        old = self.lists
        self._install(config, lists)
        if old is not lists and len(old.index) >= offload.SLICE * 4:
            task = asyncio.ensure_future(offload.dispose(
                old, after=config.server.upstream_total_timeout + 1.0))
            self._disposals.add(task)
            task.add_done_callback(self._disposals.discard)

    def _install(self, config: Config, lists: Blocklists) -> None:
        """Swap in a new pipeline; the cache table carries over when its settings did not change."""
        old = self.pipeline
        keep = old is not None and self.config.cache == config.cache and \
            self.config.upstreams == config.upstreams and \
            self.config.forward_zones == config.forward_zones and \
            self.config.rebind_protection == config.rebind_protection
        entries = old.cache_entries if keep else None  # type: ignore[union-attr]
        pipeline = build_pipeline(config, lists, self.stats, entries, self.inflight)
        carry_over(old, pipeline, self.stats)   # buckets, upstream health, in flight
        self.labels.limit = config.metrics.max_clients
        self.labels.idle = config.metrics.client_idle
        clients = ClientTable(config, lists, self.labels, self.devices.map.names, self.household)
        # The text query log wants every query through the pipeline, with its reasons;
        # server.reply_memo: false (the bench's hushdns-nomemo) measures the pipeline alone.
        memo = None if config.log_queries or not config.server.reply_memo else \
            new_memo(pipeline, clients.cache, self.stats)
        if memo is not None:
            # Compiled to compiled: no Python frame between the memo's miss and the pipeline.
            memo.on_miss = functools.partial(handle_query, self)
        tap = self.tap
        if tap is not None and tap.cfg != config.dnstap:
            tap.close(0.5)
            tap = None
        if tap is None and config.dnstap is not None:
            tap = DnstapWriter(config.dnstap, self.stats)
        self.tap = pipeline.tap = tap
        if memo is not None:
            memo.tap = tap
        nets = config.server.proxy_protocol_from
        self.proxy = ProxyGate(nets, self.stats.proxy_dropped) if nets else None
        self.config, self.lists, self.pipeline, self.clients, self.memo = \
            config, lists, pipeline, clients, memo
        self._install_querylog(config)
        # The SQLite query log: a row per answer, from finish and from the memo alike.
        pipeline.record = self.querylog.record if self.querylog is not None else None

    def _install_querylog(self, config: Config) -> None:
        """(Re)open the query log when its settings changed; the old writer finishes on its own."""
        old = self.querylog
        if old is not None and old.settings == config.query_log:
            return
        if old is not None:
            old.close_soon()   # ships what it has queued, then ends (not awaited here)
        # workers: N -- every worker has its own writer, all on one file.
        self.querylog = open_log(config.query_log, self.stats, shared=config.workers > 1)

    async def _bind(self, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        host, port = ep
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            if self.reuse_port:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            try:
                udp.bind((host, port))
            except OSError as exc:
                udp.close()
                raise listen_error(ep, "udp", exc) from None
            bound = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                tcp.bind((host, bound))
            except OSError as exc:
                udp.close()
                tcp.close()
                if port == 0:   # the TCP twin of a random UDP port was taken: try another
                    continue
                raise listen_error(ep, "tcp", exc) from None
            break
        else:
            raise ListenError(f"cannot listen on {format_endpoint(ep)}: no port free for both "
                              "UDP and TCP; use --listen")
        tcp.listen(128)
        edge = UdpEdge(self, udp)
        edge.start(loop)
        self.udp_edges.append(edge)
        server = await loop.create_server(lambda: TcpConnection(self), sock=tcp)
        self.tcp_servers.append(server)
        self.udp_addresses.append((host, bound))
        self.tcp_addresses.append((host, bound))

    async def _start_control(self) -> None:
        """The control API (hushdns pause/resume/allow/status) and the once-a-second expiry tick."""
        self._background.append(asyncio.create_task(self._household_tick()))
        self._background.append(asyncio.create_task(self._watch_hosts_files()))
        ctl = self.config.household.control
        if self.reuse_port:   # workers: N; each worker would hold its own pauses
            if ctl.socket or ctl.listen:
                log.warning("control API off with workers > 1: pauses and allows need workers: 1")
            return
        self.control = ControlApi(self.household, self.status, self.stats)
        await self.control.start(ctl.socket, ctl.listen, ctl.token)

    async def _watch_hosts_files(self) -> None:
        """``hosts_files`` are watched like list files: a change is a reload (which re-reads and
        checks them; a bad line fails the reload, logged with file:line, old names keep serving)."""
        def stamps() -> dict[str, tuple[float, int] | None]:
            out: dict[str, tuple[float, int] | None] = {}
            for f in self.config.household.local.hosts_files:
                try:
                    st = os.stat(f)
                    out[f] = (st.st_mtime, st.st_size)
                except OSError:
                    out[f] = None
            return out

        seen = stamps()
        while True:
            await asyncio.sleep(HOSTS_POLL_SECONDS)
            now = await asyncio.to_thread(stamps)
            if now != seen and set(now) == set(seen):
                log.info("hosts file changed: reloading")
                await self.reload()
            seen = await asyncio.to_thread(stamps)

    async def _household_tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.household.tick()
            except Exception:   # a bug here must not stop expiries for good
                log.exception("household tick failed")

    def _household_changed(self) -> None:
        """Pauses, allows or schedule windows changed: every client is looked up again."""
        if self.clients is not None:
            self.clients.cache.clear()

    def status(self) -> dict[str, Any]:
        """What ``hushdns status`` shows besides the household state."""
        return {
            "uptime": round(time.time() - self.started),
            "config": self.config.path,
            "listen": [format_endpoint(ep) for ep in self.udp_addresses],
            "lists": {n: ("FAILED: " + str(i.error)) if i.error else i.entries
                      for n, i in self.lists.lists.items()},
            "upstreams": {u: ("up" if v else "down") for u, v in sorted(self.stats.upstream_state.items())}
            or {format_endpoint(u): "unknown" for u in self.config.upstreams},
        }

    def admit_connection(self, conn: Any, transport: Any, proto: str) -> bool:
        """The one connection table for TCP, DoT and DoH: global and per-client caps, the
        idle connection of the client holding most evicted for a newcomer; counted."""
        table = self.tcp_connections
        opts = self.config.server
        table.limit, table.per_client = opts.tcp_max_connections, opts.tcp_max_per_client
        admitted, victim = table.admit(conn, conn.peer[0])
        if not admitted:
            self.count_limited(conn.peer[0], "tcp_connections")
            transport.abort()
            return False
        if victim is not None and victim.transport is not None:
            self.count_limited(victim.peer[0], "tcp_evicted")
            victim.transport.abort()
        conns = self.stats.connections
        conns[proto] = conns.get(proto, 0) + 1
        return True

    def count_limited(self, addr: str, reason: str) -> None:
        key = (self.clients.lookup(addr).label, reason)  # type: ignore[union-attr]
        self.stats.limited[key] = self.stats.limited.get(key, 0) + 1

    # --- per query -----------------------------------------------------------------

    def handle(self, data: bytes, addr: tuple[Any, ...], proto: str, sink: Any) -> None:
        """Answer one message from ``addr``; ``sink.sendto(wire, addr)`` delivers the reply."""
        handle_query(self, data, addr, sink, time.perf_counter(), None, proto)

    # --- background ----------------------------------------------------------------

    async def _release_idle_labels(self) -> None:
        """Free the client label slots of addresses gone quiet (metrics.client_idle)."""
        while True:
            idle = self.labels.idle
            await asyncio.sleep(min(60.0, max(0.05, idle / 4)) if idle > 0 else 60.0)
            keep = frozenset(self.config.clients) | {"other"}
            gone = self.labels.release_idle(self.stats, time.monotonic(), keep, self.clients)
            if gone:
                log.info("released %d idle client label(s)", len(gone))

    async def _sweep_tcp(self) -> None:
        """Close idle, slow-loris and never-reading TCP clients."""
        while True:
            await asyncio.sleep(min(1.0, self.config.server.tcp_idle_timeout / 2))
            now = time.monotonic()
            idle = self.config.server.tcp_idle_timeout
            for conn in list(self.tcp_connections):
                if conn.expired(now, idle) and conn.transport is not None:
                    conn.transport.abort()


def _lists_summary(lists: Blocklists) -> str:
    """``9 lists, 412 names: xiaomi 40, huawei 35, ...`` for the start-up log line."""
    parts = [f"{n} {'FAILED' if i.error else i.entries}" for n, i in lists.lists.items()]
    return (f"{len(lists.lists)} lists, {len(lists.index)} names"
            + (": " + ", ".join(parts) if parts else " (nothing is blocked)"))

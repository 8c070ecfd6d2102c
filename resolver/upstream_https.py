"""DNS over HTTPS upstreams (RFC 8484): POST application/dns-message over one HTTP/2 connection.

Why ``h2`` on an asyncio Protocol rather than an HTTP client library: a DoH
exchange is one POST of a few hundred bytes on a connection that lives for
minutes; ``h2`` is the protocol state machine alone (no I/O, no pools, no
Task per request), so a query costs a few frames written to one TLS
transport and the answer is matched by stream, as DoT matches by ID -- the
same ``StreamAttempt``, the same policy.  httpx would add a Task, a Request and
a Response object per query and its own pool, timeouts and retries beside the
policy's (README "Dependencies and why").

A reply counts only with status 200, content type application/dns-message and
a body that is the DNS answer to the question; anything else fails the attempt
(the policy asks the next upstream) and is counted as an error.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from .upstream_tls import Link, StreamAttempt, check_pins, client_context
from .wire import WireError

CONTENT_TYPE = b"application/dns-message"
MAX_STREAMS = 100
# Our request headers are constants we wrote, and a response is judged by status,
# content type and body alone: h2's per-header validation and normalisation
# would be most of a query's CPU (profiled), for nothing.
FAST = {"validate_outbound_headers": False, "normalize_outbound_headers": False,
        "validate_inbound_headers": False, "normalize_inbound_headers": False}


class DohError(OSError):
    """The DoH server answered, but not with a DNS message (status, content type, reset)."""


class DohConnection(asyncio.Protocol):
    """One HTTP/2 connection to a DoH upstream: a stream per query, at most as many as it allows."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self.link, self.loop = link, loop
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, **FAST))
        self.streams: dict[int, tuple[StreamAttempt, list[Any]]] = {}
        self.queue: collections.deque[StreamAttempt] = collections.deque()
        self.closed = False
        self.worked = False
        self.idle: asyncio.TimerHandle | None = None
        up = link.up
        authority = up.spec.auth_name if up.port == 443 else f"{up.spec.auth_name}:{up.port}"
        self.headers = [(b":method", b"POST"), (b":scheme", b"https"),
                        (b":authority", authority.encode()), (b":path", up.spec.path.encode()),
                        (b"content-type", CONTENT_TYPE), (b"accept", CONTENT_TYPE)]
        self.task = loop.create_task(self._connect())

    async def _connect(self) -> None:
        up, opts = self.link.up, self.link.opts
        ctx = client_context(up.spec.ca_file, ("h2",))
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: self, up.host, up.port, ssl=ctx, server_hostname=up.spec.auth_name,
                ssl_handshake_timeout=opts.tls_handshake_timeout), opts.tls_handshake_timeout + 1)
            check_pins(up, self.transport)  # type: ignore[arg-type]
            sslobj = self.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
            if sslobj is None or sslobj.selected_alpn_protocol() != "h2":
                raise DohError("the server does not speak HTTP/2 (ALPN h2)")
        except (TimeoutError, OSError, ValueError) as exc:
            err = self.link.failed(exc)
            if self.transport is not None:
                self.transport.abort()
            self._shut(err, worked=False)
            return
        self.link.connected()
        self.worked = True
        self._start_queued()
        self._arm_idle()

    def full(self) -> bool:
        return False   # streams beyond the server's limit wait in the queue

    def send(self, a: StreamAttempt) -> None:
        a.conn = self
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        queue = self.queue
        if not queue and self.worked:   # one burst of queries: one write (as DoT)
            self.loop.call_soon(self._start_queued)
        queue.append(a)

    def _start_queued(self) -> None:
        conn, queue = self.h2, self.queue
        # Before the server's SETTINGS arrive its limit reads as unlimited: 100 (RFC 9113's
        # recommended floor) until then, and never more (unbound resets the connection).
        limit = min(conn.remote_settings.max_concurrent_streams, MAX_STREAMS)
        while queue and len(self.streams) < limit:
            a = queue.popleft()
            if a.done:
                continue
            try:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [*self.headers, (b"content-length", str(len(a.msg)).encode())])
                conn.send_data(sid, a.msg, end_stream=True)
            except h2.exceptions.H2Error as exc:
                a.fail(DohError(f"HTTP/2: {exc}"))
                continue
            self.streams[sid] = (a, [])
            a.sid = sid
        self._flush()

    def _flush(self) -> None:
        if not self.worked:   # the preamble (queued at connection_made) goes first, once checked
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def forget(self, a: StreamAttempt) -> None:
        entry = self.streams.get(a.sid)
        if entry is not None and entry[0] is a:
            del self.streams[a.sid]
            if a.data is None:   # given up on: tell the server
                self._reset(a.sid)
        if not self.streams and not self.queue:
            self._arm_idle()

    def _reset(self, sid: int) -> None:
        try:
            self.h2.reset_stream(sid)
        except h2.exceptions.H2Error:
            return
        self._flush()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The server's SETTINGS may arrive before _connect resumes: the preamble must
        # be first in h2's output, before the SETTINGS ACK that receiving them queues.
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.H2Error as exc:
            if self.transport is not None:
                self.transport.abort()
            self._shut(DohError(f"HTTP/2 protocol error: {exc}"), self.worked)
            return
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                entry = self.streams.get(ev.stream_id)
                if entry is not None:
                    entry[1].append(dict(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                entry = self.streams.get(ev.stream_id)
                if entry is not None:
                    entry[1].append(ev.data)
            elif isinstance(ev, h2.events.StreamEnded):
                entry = self.streams.pop(ev.stream_id, None)
                if entry is not None:
                    self._answer(*entry)
            elif isinstance(ev, h2.events.StreamReset):
                entry = self.streams.pop(ev.stream_id, None)
                if entry is not None:
                    entry[0].fail(DohError(f"stream reset by the server (code {ev.error_code})"))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._goaway(ev.last_stream_id)
        self._flush()
        self._start_queued()
        if not self.streams and not self.queue:
            self._arm_idle()

    def _answer(self, a: StreamAttempt, parts: list[Any]) -> None:
        headers = parts[0] if parts and isinstance(parts[0], dict) else {}
        status = headers.get(b":status", b"?").decode(errors="replace")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        body = b"".join(p for p in parts[1:] if isinstance(p, bytes))
        if status != "200":
            a.fail(DohError(f"HTTP status {status}"))
        elif ctype != CONTENT_TYPE:
            a.fail(DohError(f"content type {ctype.decode(errors='replace') or 'missing'}, "
                            "not application/dns-message"))
        elif not a.offer(body):
            a.fail(WireError("the body is not the DNS answer to the question"))

    def _goaway(self, last: int | None) -> None:
        """GOAWAY: streams above ``last`` were not processed (a fresh connection gets them)."""
        self.closed = True
        if self.link.conn is self:
            self.link.conn = None
        for sid, (a, _) in list(self.streams.items()):
            if last is None or sid > last:
                del self.streams[sid]
                a.lost(DohError("the server closed the connection (GOAWAY)"), self.link, True)
        queued, self.queue = list(self.queue), collections.deque()
        for a in queued:
            a.lost(DohError("the server closed the connection (GOAWAY)"), self.link, True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(exc or ConnectionResetError("the upstream closed the connection"), self.worked)

    def _shut(self, exc: BaseException, worked: bool) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.closed = True
        if self.link.conn is self:
            self.link.conn = None
        pending = [a for a, _ in self.streams.values()] + list(self.queue)
        self.streams, self.queue = {}, collections.deque()
        for a in pending:
            a.lost(exc, self.link, worked)

    def _arm_idle(self) -> None:
        if self.idle is None and not self.closed:
            self.idle = self.loop.call_later(self.link.opts.upstream_idle_timeout, self._idle_close)

    def _idle_close(self) -> None:
        self.idle = None
        if not self.streams and not self.queue and self.transport is not None:
            self.closed = True
            if self.link.conn is self:
                self.link.conn = None
            self.h2.close_connection()
            self._flush()
            self.transport.close()

    def abandon(self) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        try:
            if self.transport is not None:
                self.transport.abort()
            elif not self.task.done():
                self.task.cancel()
        except RuntimeError:   # its event loop is closed
            pass

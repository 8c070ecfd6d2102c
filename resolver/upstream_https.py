"""DNS over HTTPS upstreams (RFC 8484): POST application/dns-message over one HTTP/2 connection.

Why its own HTTP/2 framing (and ``hpack`` only to read response headers): a DoH
query is one POST of a padded 128-byte message to one fixed path on a connection
that lives for minutes.  Its HEADERS block never changes, so it is built once
(HPACK literals without indexing, no dynamic-table state to keep), and a query
costs two frame headers and one write -- the same ``StreamAttempt`` as DoT, the
same policy.  Profiled, the ``h2`` state machine took four times the CPU of
the whole UDP miss path per query, and httpx adds a Task, Request and Response
per query and its own pool, timeouts and retries beside the policy's (README
"Dependencies and why").  What a client must handle is handled: SETTINGS
(concurrent-stream limit), PING, WINDOW_UPDATE (our send window), GOAWAY,
RST_STREAM, padding, CONTINUATION; push is refused in our SETTINGS.

A reply counts only with status 200, content type application/dns-message and
a body that is the DNS answer to the question; anything else fails the attempt
(the policy asks the next upstream) and is counted as an error.
"""

from __future__ import annotations

import asyncio
import collections
import struct

import hpack

from .upstream_tls import Link, PersistentConnection, StreamAttempt, check_pins, client_context
from .wire import WireError

CONTENT_TYPE = b"application/dns-message"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 100          # until the server's SETTINGS say otherwise (and never more)
BIG_WINDOW = 2 ** 31 - 1
MAX_BODY = 65535 + 512

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_FRAME = struct.Struct("!HBBBL")   # length split 16+8 bits, type, flags, stream id


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload


def _int(value: int, bits: int) -> bytes:
    """An HPACK integer with a ``bits``-bit prefix (RFC 7541 5.1), the prefix's flags zero."""
    top = (1 << bits) - 1
    if value < top:
        return bytes([value])
    out, value = [top], value - top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _literal(index: int, value: bytes) -> bytes:
    """HPACK literal without indexing, name from the static table (RFC 7541 6.2.2), no Huffman."""
    return _int(index, 4) + _int(len(value), 7) + value


def request_block(authority: bytes, path: bytes, length: int) -> bytes:
    """The HEADERS block of every query to this upstream (static-table names, no dynamic state)."""
    return (b"\x83\x87"                                  # :method POST, :scheme https
            + _literal(1, authority) + _literal(4, path)  # :authority, :path
            + _literal(31, CONTENT_TYPE) + _literal(19, CONTENT_TYPE)   # content-type, accept
            + _literal(28, str(length).encode()))         # content-length


class DohError(OSError):
    """The DoH server answered, but not with a DNS message (status, content type, reset)."""


class _Stream:
    __slots__ = ("a", "headers", "block", "body")

    def __init__(self, a: StreamAttempt) -> None:
        self.a = a
        self.headers: dict[bytes, bytes] | None = None
        self.block = b""
        self.body = bytearray()


class DohConnection(PersistentConnection):
    """One HTTP/2 connection to a DoH upstream: a stream per query, at most as many as it allows."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self.link, self.loop = link, loop
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.queue: collections.deque[StreamAttempt] = collections.deque()
        self.closed = False
        self.worked = False
        self.idle: asyncio.TimerHandle | None = None
        self.next_sid = 1
        self.max_streams = MAX_STREAMS
        self.send_window = 65535          # connection-level, for our DATA frames
        self.received = 0                 # DATA bytes since our last WINDOW_UPDATE
        self.buf = bytearray()
        self.decoder = hpack.Decoder()
        self.continuing: int | None = None   # stream whose header block awaits CONTINUATION
        up = link.up
        authority = up.spec.auth_name if up.port == 443 else f"{up.spec.auth_name}:{up.port}"
        self.authority, self.path = authority.encode(), up.spec.path.encode()
        self.blocks: dict[int, bytes] = {}   # body length -> HEADERS block
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
        if not self.streams and not self.queue:
            self._arm_idle()

    def full(self) -> bool:
        return False   # streams beyond the server's limit wait in the queue

    def send(self, a: StreamAttempt) -> None:
        a.conn = self
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        queue = self.queue
        if not queue and self.worked:   # a burst of queries: one write (as DoT)
            self.loop.call_soon(self._start_queued)
        queue.append(a)

    def _start_queued(self) -> None:
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return
        queue, streams, out = self.queue, self.streams, []
        while queue and len(streams) < self.max_streams:
            a = queue[0]
            if a.done:
                queue.popleft()
                continue
            n = len(a.msg)
            if n > self.send_window:
                break   # wait for the server's WINDOW_UPDATE
            queue.popleft()
            block = self.blocks.get(n)
            if block is None:
                block = self.blocks[n] = request_block(self.authority, self.path, n)
            sid = self.next_sid
            self.next_sid += 2
            self.send_window -= n
            out.append(frame(HEADERS, END_HEADERS, sid, block))
            out.append(frame(DATA, END_STREAM, sid, a.msg))
            streams[sid] = _Stream(a)
            a.sid = sid
        if out:
            t.write(b"".join(out))

    def forget(self, a: StreamAttempt) -> None:
        s = self.streams.get(a.sid)
        if s is not None and s.a is a:
            del self.streams[a.sid]
            if a.data is None and self.transport is not None and not self.closed:
                self.transport.write(frame(RST_STREAM, 0, a.sid, b"\x00\x00\x00\x08"))  # CANCEL
        if not self.streams and not self.queue:
            self._arm_idle()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The preface first, at once: the server's SETTINGS may arrive (and be ACKed)
        # before _connect resumes.  SETTINGS: no push, a wide stream window; then a
        # wide connection window.  No query is sent before the pin and ALPN checks.
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack("!HLHL", 0x2, 0, 0x4, BIG_WINDOW)
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)  # type: ignore[attr-defined]
                        + frame(WINDOW_UPDATE, 0, 0, struct.pack("!L", BIG_WINDOW - 65535)))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME.unpack_from(buf, pos)
                n = hi << 8 | lo
                if end - pos < 9 + n:
                    break
                payload = bytes(buf[pos + 9:pos + 9 + n])
                pos += 9 + n
                self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        except (hpack.HPACKError, struct.error, IndexError, ValueError) as exc:
            self._protocol_error(f"HTTP/2 protocol error: {exc}")
            return
        finally:
            del buf[:pos]
        if self.received > BIG_WINDOW // 2:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0,  # type: ignore[union-attr]
                                       struct.pack("!L", self.received)))
            self.received = 0
        self._start_queued()
        if not self.streams and not self.queue:
            self._arm_idle()

    def _frame(self, ftype: int, flags: int, sid: int, p: bytes) -> None:
        if self.continuing is not None and ftype != CONTINUATION:
            raise ValueError("expected CONTINUATION")
        if ftype == DATA:
            self.received += len(p)
            s = self.streams.get(sid)
            if s is not None:
                if flags & PADDED:
                    p = p[1:len(p) - p[0]]
                s.body += p
                if len(s.body) > MAX_BODY:
                    self._end(sid, DohError("response body too large"))
                elif flags & END_STREAM:
                    self._end(sid)
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                if flags & PADDED:
                    p = p[1:len(p) - p[0]]
                if flags & PRIORITY:
                    p = p[5:]
            s = self.streams.get(sid if ftype == HEADERS else self.continuing)  # type: ignore[arg-type]
            block = (s.block if s is not None else b"") + p
            if not flags & END_HEADERS:
                self.continuing = sid
                if s is not None:
                    s.block = block
                return
            self.continuing = None
            headers = self.decoder.decode(block, raw=True)   # always: the table stays in sync
            if s is not None:
                s.block = b""
                if s.headers is None:   # trailers after the body are ignored
                    s.headers = dict(headers)
                if flags & END_STREAM:
                    self._end(sid)
        elif ftype == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(p) - 5, 6):
                    key, value = struct.unpack_from("!HL", p, i)
                    if key == 0x3:
                        self.max_streams = min(value, MAX_STREAMS)
                self.transport.write(frame(SETTINGS, ACK, 0))  # type: ignore[union-attr]
        elif ftype == PING:
            if not flags & ACK:
                self.transport.write(frame(PING, ACK, 0, p))  # type: ignore[union-attr]
        elif ftype == WINDOW_UPDATE:
            if sid == 0:
                self.send_window += struct.unpack("!L", p)[0] & 0x7FFFFFFF
        elif ftype == RST_STREAM:
            code = struct.unpack("!L", p)[0]
            if code == 0x7:   # REFUSED_STREAM: not processed, safe to ask again
                s = self.streams.pop(sid, None)
                if s is not None:
                    s.a.lost(DohError("stream refused"), self.link, True)
            else:
                self._end(sid, DohError(f"stream reset by the server (code {code})"))
        elif ftype == GOAWAY:
            self._goaway(struct.unpack_from("!L", p)[0] & 0x7FFFFFFF)
        elif ftype == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE after SETTINGS_ENABLE_PUSH=0")

    def _end(self, sid: int, err: BaseException | None = None) -> None:
        s = self.streams.pop(sid, None)
        if s is None:
            return
        a = s.a
        if err is not None:
            a.fail(err)
            return
        headers = s.headers or {}
        status = headers.get(b":status", b"?").decode(errors="replace")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if status != "200":
            a.fail(DohError(f"HTTP status {status}"))
        elif ctype != CONTENT_TYPE:
            a.fail(DohError(f"content type {ctype.decode(errors='replace') or 'missing'}, "
                            "not application/dns-message"))
        elif not a.offer(bytes(s.body)):
            a.fail(WireError("the body is not the DNS answer to the question"))

    def _protocol_error(self, why: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._shut(DohError(why), self.worked)

    def _goaway(self, last: int) -> None:
        """GOAWAY: streams above ``last`` were not processed (a fresh connection gets them)."""
        self.closed = True
        if self.link.conn is self:
            self.link.conn = None
        err = DohError("the server closed the connection (GOAWAY)")
        for sid in [sid for sid in self.streams if sid > last]:
            self.streams.pop(sid).a.lost(err, self.link, True)
        queued, self.queue = list(self.queue), collections.deque()
        for a in queued:
            a.lost(err, self.link, True)
        if not self.streams and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(exc or ConnectionResetError("the upstream closed the connection"), self.worked)

    def _shut(self, exc: BaseException, worked: bool) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.closed = True
        if self.link.conn is self:
            self.link.conn = None
        pending = [s.a for s in self.streams.values()] + list(self.queue)
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
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack("!LL", 0, 0)))
            self.transport.close()


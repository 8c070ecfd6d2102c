"""DoT and DoH listeners: the LAN's phones (Android Private DNS) and browsers, same pipeline as TCP.

Why here and this small: DNS over TLS (RFC 7858) is DNS over TCP inside TLS,
so a DoT client is a ``TcpConnection`` whose transport asyncio wraps in TLS
(proto ``tls``).  DoH (RFC 8484) is an HTTP/2 server (``h2``; HTTP/1.1 for a
client that does not offer ``h2``) whose every request -- GET ``?dns=`` base64url or
POST application/dns-message -- is handed to ``Server.handle`` with a sink that
answers its stream (proto ``https``).  Both count in the TCP connection table,
so ``server.tcp_max_connections``, ``tcp_idle_timeout`` and ``tcp_max_pipelined``
bound them as they bound TCP; ``server.tls_handshake_timeout`` bounds a client
that connects and never finishes its handshake.

Certificates: one ``ssl.SSLContext`` for every listener, loaded from
``server.tls_certificate``/``tls_key``.  A reload loads the pair again into the
same context (new connections get it, open ones keep theirs); the config loader
has already checked that the pair is readable and matches, so a bad pair fails
the reload and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .encrypted_endpoints import ListenURL
from .listen_errors import listen_error
from .server import TcpConnection

if TYPE_CHECKING:
    from .config import Config
    from .server import Server

log = logging.getLogger("hushdns")

CONTENT_TYPE = b"application/dns-message"
MAX_BODY = 65535


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1", "dot"])
    ctx.load_cert_chain(cert, key)
    return ctx


class TlsConnection(TcpConnection):
    """A DoT client: RFC 7766 framing and limits of TCP, inside TLS."""

    proto = "tls"


def dns_message(path: str, method: bytes, target: bytes, ctype: bytes, body: bytes | bytearray) -> bytes | int:
    """The DNS query of a DoH request (RFC 8484 4.1), or the HTTP status that refuses it."""
    url = urlsplit(target.decode("latin-1"))
    if url.path != path:
        return 404
    if method == b"GET":
        values = parse_qs(url.query).get("dns")
        try:
            msg = base64.urlsafe_b64decode(values[0] + "=" * (-len(values[0]) % 4)) if values else b""
        except (binascii.Error, ValueError):
            msg = b""
    elif method == b"POST":
        if ctype.split(b";")[0].strip().lower() != CONTENT_TYPE:
            return 415
        msg = bytes(body)
    else:
        return 405
    return msg if len(msg) >= 12 else 400


class _Stream:
    """The sink of one DoH request: the pipeline's reply becomes its HTTP response."""

    __slots__ = ("conn", "sid")

    def __init__(self, conn: DohServerConnection, sid: int) -> None:
        self.conn, self.sid = conn, sid

    def sendto(self, wire: bytes | None, addr: Any = None) -> None:
        self.conn.respond(self.sid, wire)


class DohServerConnection(asyncio.Protocol):
    """One HTTP/2 client of the DoH listener at ``path``."""

    proto = "https"

    def __init__(self, server: Server, path: str) -> None:
        self.server, self.path = server, path
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[Any, ...] = ("", 0)
        self.last = time.monotonic()
        self.pending = 0
        self.h1: Http1 | None = None
        self.requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        opts = server.config.server
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                                          opts.tcp_max_pipelined})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername") or ("", 0)
        # The TCP connection table: the same global and per-client caps, fair eviction.
        if not self.server.admit_connection(self, transport, "https"):
            return
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() != "h2":
            self.h1 = Http1(self)   # a client without ALPN h2: HTTP/1.1
            return
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp_connections.remove(self)  # type: ignore[arg-type]
        self.transport = None

    def idle_since(self) -> float | None:
        """When it went idle (no request in flight or half-received), or None while busy."""
        if self.pending or self.requests:
            return None
        return self.last

    def _flush(self) -> None:
        t = self.transport
        data = self.h2.data_to_send()
        if data and t is not None and not t.is_closing():
            t.write(data)

    def data_received(self, data: bytes) -> None:
        # ``last`` moves on whole frames (HTTP/2) or whole requests (HTTP/1.1), not on
        # bytes: a client dribbling a request byte by byte is closed by the idle sweep.
        if self.h1 is not None:
            self.h1.data(data)
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.H2Error:
            self._flush()   # h2 queued a GOAWAY
            if self.transport is not None:
                self.transport.close()
            return
        if events:
            self.last = time.monotonic()
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.requests[ev.stream_id] = (dict(ev.headers), bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                req = self.requests.get(ev.stream_id)
                if req is not None:
                    req[1].extend(ev.data)
                    if len(req[1]) > MAX_BODY:
                        del self.requests[ev.stream_id]
                        self._status(ev.stream_id, b"413")
            elif isinstance(ev, h2.events.StreamEnded):
                req = self.requests.pop(ev.stream_id, None)
                if req is not None:
                    self._request(ev.stream_id, *req)
            elif isinstance(ev, h2.events.StreamReset):
                self.requests.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self._flush()

    def _request(self, sid: int, headers: dict[bytes, bytes], body: bytearray) -> None:
        msg = dns_message(self.path, headers.get(b":method", b""), headers.get(b":path", b""),
                          headers.get(b"content-type", b""), body)
        if isinstance(msg, int):
            self._status(sid, str(msg).encode())
            return
        self.pending += 1
        self.server.handle(msg, self.peer, "https", _Stream(self, sid))

    def respond(self, sid: int, wire: bytes | None) -> None:
        """The pipeline's answer for stream ``sid`` (None: the query is dropped -> stream reset)."""
        self.pending -= 1
        self.last = time.monotonic()
        if self.transport is None:
            return
        try:
            if wire is None:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            else:
                self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", CONTENT_TYPE),
                                           (b"content-length", str(len(wire)).encode()),
                                           (b"cache-control", b"max-age=0")])
                self._send_body(sid, wire)
        except h2.exceptions.H2Error:   # the client reset the stream meanwhile
            pass
        self._flush()

    def _send_body(self, sid: int, wire: bytes) -> None:
        # A DNS answer is at most 64 KiB, the initial window; a client that
        # shrank its window gets what fits (the idle sweep ends a stalled one).
        room = min(self.h2.local_flow_control_window(sid), len(wire))
        size = self.h2.max_outbound_frame_size
        for i in range(0, room, size):
            chunk = wire[i:i + min(size, room - i)]
            self.h2.send_data(sid, chunk, end_stream=i + len(chunk) >= len(wire))

    def _status(self, sid: int, status: bytes) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.send_headers(sid, [(b":status", status), (b"content-length", b"0")], end_stream=True)

    def expired(self, now: float, idle: float) -> bool:
        """Nothing in flight and no whole frame or request for ``idle`` seconds (idle or dribbling)."""
        return self.pending == 0 and now - self.last > idle


class Http1:
    """DoH over HTTP/1.1 for a client that did not pick h2: one request at a time, kept alive.

    Why so little: browsers and Android use HTTP/2; this serves curl, scripts and old
    stubs.  Requests are answered in order (a pipelined one waits in the buffer), the
    head is bounded to 8 KiB and the body to 64 KiB; anything else closes the connection.
    """

    MAX_HEAD = 8192

    def __init__(self, conn: DohServerConnection) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.busy = False
        self.close_after = False

    def data(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        conn, buf = self.conn, self.buf
        if self.busy or conn.transport is None:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.MAX_HEAD:
                self._reply(431, b"", close=True)
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = -1
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not 0 <= length <= MAX_BODY:
            self._reply(400, b"", close=True)
            return
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        conn.last = time.monotonic()
        self.close_after = headers.get(b"connection", b"").lower() == b"close" or parts[2] == b"HTTP/1.0"
        msg = dns_message(conn.path, parts[0], parts[1], headers.get(b"content-type", b""), body)
        if isinstance(msg, int):
            self._reply(msg, b"", close=self.close_after)
            return
        self.busy = True
        conn.pending += 1
        conn.server.handle(msg, conn.peer, "https", self)

    def sendto(self, wire: bytes | None, addr: Any = None) -> None:
        """The pipeline's answer (None: the query is dropped -> the connection closes)."""
        self.conn.pending -= 1
        self.conn.last = time.monotonic()
        self.busy = False
        if wire is None:
            self._reply(503, b"", close=True)
        else:
            self._reply(200, wire, close=self.close_after)
        if self.buf:
            self._next()

    def _reply(self, status: int, body: bytes, close: bool) -> None:
        t = self.conn.transport
        if t is None or t.is_closing():
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
                  503: "Service Unavailable"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        if status == 200:
            head += "Content-Type: application/dns-message\r\nCache-Control: max-age=0\r\n"
        if close:
            head += "Connection: close\r\n"
        t.write(head.encode() + b"\r\n" + body)
        if close:
            self.buf.clear()
            t.close()


class EncryptedListeners:
    """The DoT/DoH listen sockets of a server and their one certificate context."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ctx: ssl.SSLContext | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[ListenURL] = []
        self.loaded: tuple[str, str, float, float] | None = None

    async def start(self, config: Config) -> None:
        opts = config.server
        if not config.listen_encrypted:
            return
        self.ctx = server_context(opts.tls_certificate, opts.tls_key)  # type: ignore[arg-type]
        self.loaded = _stamp(opts.tls_certificate, opts.tls_key)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for ep in config.listen_encrypted:
            sock = _stream_socket(ep, self.server.reuse_port)
            if ep.scheme == "tls":
                def factory() -> asyncio.Protocol:
                    return TlsConnection(self.server)
            else:
                def factory(path: str = ep.path) -> asyncio.Protocol:
                    return DohServerConnection(self.server, path)
            srv = await loop.create_server(factory, sock=sock, ssl=self.ctx,
                                           ssl_handshake_timeout=opts.tls_handshake_timeout)
            self.servers.append(srv)
            self.addresses.append(ListenURL(ep[0], sock.getsockname()[1], ep.scheme, ep.path))

    def reload(self, config: Config) -> None:
        """Load the certificate pair again when its files (or paths) changed; new connections get it."""
        opts = config.server
        if self.ctx is None or opts.tls_certificate is None or opts.tls_key is None:
            return
        stamp = _stamp(opts.tls_certificate, opts.tls_key)
        if stamp == self.loaded:
            return
        try:
            self.ctx.load_cert_chain(opts.tls_certificate, opts.tls_key)
        except (OSError, ssl.SSLError) as exc:
            # config.py checked the pair a moment ago; a file swapped in between lands here.
            log.error("TLS certificate reload failed, the old one keeps serving: %s", exc)
            return
        self.loaded = stamp
        log.info("TLS certificate reloaded from %s", opts.tls_certificate)

    def close(self) -> None:
        for s in self.servers:
            s.close()

    async def wait_closed(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()


def _stamp(cert: str, key: str) -> tuple[str, str, float, float]:
    def mtime(p: str) -> float:
        try:
            return os.stat(p).st_mtime
        except OSError:
            return -1.0
    return cert, key, mtime(cert), mtime(key)


def _stream_socket(ep: ListenURL, reuse_port: bool) -> socket.socket:
    host, port = ep
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise listen_error(ep, ep.scheme, exc) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock

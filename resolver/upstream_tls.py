"""DNS over TLS upstreams (RFC 7858, 8310): one persistent, pipelined connection per upstream.

Why persistent and pipelined: a TLS handshake costs more than a hundred cache
misses, so every query to an upstream goes over one long-lived connection,
written as it comes (RFC 7766 framing), and its answers are matched by ID in
whatever order they arrive.  The connection closes after
``server.upstream_idle_timeout`` without queries; a failed connect is retried
no sooner than a back-off (0.25 s doubling to 8 s) so a dead upstream is not
hammered with handshakes -- the policy (``upstream.Upstreams``) does the rest
(fail-over, health, probes), exactly as for UDP.

Trust: the certificate must chain to the system store (``SSL_CERT_FILE``
honoured) or the upstream's ``ca_file``, show the ``#auth-name``, and, with
``pin-sha256=``, carry one of the pinned keys (SHA-256 of the SubjectPublicKeyInfo,
RFC 7858 section 4.2).  TLS 1.2 at least.  Queries are padded to a multiple of
128 bytes (RFC 8467's recommended block length) so their sizes tell less.

DoH (``upstream_https``) shares the attempt and the trust code; only the
connection differs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

from .config import ServerOptions
from .stats import Stats
from .upstream import Attempt, Check, Upstream
from .wire import FORMERR, NOTIMP, Request, WireError, make_query, question_matches

log = logging.getLogger("hushdns.upstream")

PAD_BLOCK = 128
BACKOFF_MIN = 0.25
BACKOFF_MAX = 8.0
MAX_PENDING = 256          # queries in flight on one connection; more wait for the next


class PinMismatch(OSError):
    """The upstream's key is not one of its ``pin-sha256`` pins."""


def pad_query(msg: bytes) -> bytes:
    """Add an EDNS Padding option (RFC 7830) so the query is a multiple of PAD_BLOCK bytes.

    ``make_query`` ends an EDNS query with an empty OPT record (its RDLENGTH the
    last two bytes); a query without EDNS cannot carry padding and is sent as is.
    """
    if len(msg) < 23 or msg[10:12] != b"\x00\x01" or msg[-11:-8] != b"\x00\x00\x29" \
            or msg[-2:] != b"\x00\x00":
        return msg
    pad = -(len(msg) + 4) % PAD_BLOCK
    return msg[:-2] + (4 + pad).to_bytes(2, "big") + b"\x00\x0c" + pad.to_bytes(2, "big") + bytes(pad)


def _der_item(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``i``."""
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i:i + k], "big")
        i += k
    return tag, i, i + n


def spki_sha256(cert_der: bytes) -> bytes:
    """SHA-256 of a certificate's SubjectPublicKeyInfo (what ``pin-sha256`` names).

    Why by hand: the walk to the seventh field of a TBSCertificate is a few DER
    headers, not worth a dependency at run time.
    """
    _, i, _ = _der_item(cert_der, 0)        # Certificate
    _, i, _ = _der_item(cert_der, i)        # TBSCertificate
    if cert_der[i] == 0xA0:                 # [0] version
        i = _der_item(cert_der, i)[2]
    for _ in range(5):                      # serial, signature, issuer, validity, subject
        i = _der_item(cert_der, i)[2]
    _, _, end = _der_item(cert_der, i)
    return hashlib.sha256(cert_der[i:end]).digest()


_CONTEXTS: dict[tuple[str | None, tuple[str, ...]], ssl.SSLContext] = {}


def client_context(ca_file: str | None, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A verifying client context (system store or ``ca_file``), TLS 1.2+, shared per CA and ALPN."""
    key = (ca_file, alpn)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        _CONTEXTS[key] = ctx
    return ctx


def check_pins(up: Upstream, transport: asyncio.BaseTransport) -> None:
    pins = up.spec.pins
    if not pins:
        return
    sslobj = transport.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    got = spki_sha256(der) if der else b""
    if got not in pins:
        raise PinMismatch(f"pin-sha256 mismatch (the server's key is pin-sha256="
                          f"{base64.b64encode(got).decode()})")


class StreamAttempt(Attempt):
    """One query over a persistent DoT or DoH connection; validated like UDP (ID, question, check).

    The connection calls ``offer`` with each reply for its ID and ``lost`` when it
    goes away; a query lost with a connection that had worked is re-sent once on a
    new one (the upstream closing an idle connection as the query left, RFC 7766 6.2.3).
    """

    __slots__ = ("up", "req", "edns", "stats", "check", "notify", "parsed", "qid", "t0",
                 "done", "data", "error", "msg", "conn", "retried", "sid")
    transport = "tls"

    def __init__(self, up: Upstream, req: Request, edns: bool, stats: Stats,
                 check: Check | None, notify: Callable[[], None], link: Any) -> None:
        self.up, self.req, self.edns, self.stats = up, req, edns, stats
        self.check, self.notify = check, notify
        self.parsed: Any = None
        self.done = False
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.retried = False
        self.sid = 0   # DoH: the HTTP/2 stream
        self.t0 = time.perf_counter()
        self.qid = 0 if self.transport == "https" else secrets.randbits(16)  # RFC 8484 4.1: ID 0
        self.msg = pad_query(make_query(req, self.qid, edns))
        self.conn: Any = None
        link.submit(self)   # raises OSError when the upstream cannot be reached right now

    def offer(self, data: bytes) -> bool:
        """A reply carrying our ID: True when accepted (the attempt ends)."""
        if self.done:
            return True
        if not self._acceptable(data):
            self.stats.upstream(self.up.label, "spoof_rejected")
            return False
        if self.check is not None and not data[2] & 0x02 and data[4:6] != b"\x00\x00":
            try:
                self.parsed = self.check(data)
            except WireError as exc:
                self.fail(exc)
                return True
        self.data = data
        self._end()
        return True

    def _acceptable(self, data: bytes) -> bool:
        if len(data) < 12 or not data[2] & 0x80 or (data[0] << 8 | data[1]) != self.qid:
            return False
        if question_matches(data, self.req):
            return True
        return data[4:6] == b"\x00\x00" and data[3] & 0xF in (FORMERR, NOTIMP)

    def lost(self, exc: BaseException, link: Any, worked: bool) -> None:
        """The connection went away before the answer."""
        if self.done:
            return
        self.conn = None
        if worked and not self.retried:
            self.retried = True
            try:
                link.submit(self)
                return
            except OSError as e:
                exc = e
        self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.error = exc
            self._end()

    def _end(self) -> None:
        self.done = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.forget(self)
        self.notify()

    def close(self) -> None:
        if not self.done:
            self.done = True
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.forget(self)


class HttpsAttempt(StreamAttempt):
    __slots__ = ()
    transport = "https"


class Link:
    """An upstream's current connection, its connect back-off, and what was logged about it."""

    def __init__(self, up: Upstream, opts: ServerOptions, connection: type) -> None:
        self.up, self.opts, self.connection = up, opts, connection
        self.conn: Any = None
        self.backoff = 0.0
        self.retry_at = 0.0
        self.last_error: OSError | None = None
        self.logged: str | None = None

    def submit(self, a: StreamAttempt) -> None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        if conn is None or conn.closed or conn.loop is not loop or conn.full():
            if conn is not None and conn.loop is not loop:
                conn.abandon()
            if self.retry_at > time.monotonic() and self.last_error is not None:
                raise self.last_error
            self.conn = conn = self.connection(self, loop)
        conn.send(a)

    def connected(self) -> None:
        self.backoff = 0.0
        self.retry_at = 0.0
        if self.logged is not None:
            log.info("upstream %s: %s connection works again", self.up.label,
                     self.up.transport.upper())
        self.logged = None

    def failed(self, exc: BaseException) -> OSError:
        """A connect or handshake failed: back off, and log the reason once (until it works)."""
        err = exc if isinstance(exc, OSError) else OSError(str(exc) or type(exc).__name__)
        if isinstance(exc, asyncio.TimeoutError | TimeoutError) or (
                isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc)):
            err = TimeoutError(f"TLS handshake timed out ({self.opts.tls_handshake_timeout:g} s)")
        self.last_error = err
        self.backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        from .upstream import failure_reason

        reason = failure_reason(err)
        if reason != self.logged:
            self.logged = reason
            log.warning("upstream %s: %s connection failed: %s", self.up.label,
                        self.up.transport.upper(), reason)
        return err

    def close(self) -> None:
        if self.conn is not None:
            self.conn.abandon()
            self.conn = None


class PersistentConnection(asyncio.Protocol):
    """What a DoT and a DoH upstream connection share: how one is given up at once."""

    closed: bool
    idle: Any
    transport: Any
    task: Any

    def abandon(self) -> None:
        """Close now (server stop, or a connection of an event loop that is gone)."""
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


class DotConnection(PersistentConnection):
    """One TLS connection to a DoT upstream: queries written as they come, replies matched by ID."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self.link, self.loop = link, loop
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, StreamAttempt] = {}
        self.queue: list[bytes] = []
        self.buf = bytearray()
        self.closed = False
        self.worked = False      # the handshake finished: a lost query is worth one re-send
        self.idle: asyncio.TimerHandle | None = None
        self.task = loop.create_task(self._connect())

    async def _connect(self) -> None:
        up, opts = self.link.up, self.link.opts
        ctx = client_context(up.spec.ca_file)
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: self, up.host, up.port, ssl=ctx, server_hostname=up.spec.auth_name,
                ssl_handshake_timeout=opts.tls_handshake_timeout), opts.tls_handshake_timeout + 1)
            check_pins(up, self.transport)  # type: ignore[arg-type]
        except (TimeoutError, OSError, ValueError) as exc:
            err = self.link.failed(exc)
            self._shut(err, worked=False)
            return
        self.link.connected()
        self.worked = True
        self._write_queued()
        if not self.waiting:
            self._arm_idle()

    def _write_queued(self) -> None:
        queue, t = self.queue, self.transport
        if queue and t is not None and not t.is_closing():
            t.write(b"".join(queue))
        queue.clear()

    def full(self) -> bool:
        return len(self.waiting) >= MAX_PENDING

    def send(self, a: StreamAttempt) -> None:
        waiting = self.waiting
        while a.qid in waiting:
            a.qid = secrets.randbits(16)
            a.msg = a.msg[:0] + a.qid.to_bytes(2, "big") + a.msg[2:]
        waiting[a.qid] = a
        a.conn = self
        # Written once this loop iteration's callbacks have run: the queries of one
        # burst go out as one TLS record and one send, not a syscall each (profiled).
        queue = self.queue
        if not queue and self.worked:
            self.loop.call_soon(self._write_queued)
        queue.append(len(a.msg).to_bytes(2, "big") + a.msg)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def forget(self, a: StreamAttempt) -> None:
        if self.waiting.get(a.qid) is a:
            del self.waiting[a.qid]
            if not self.waiting:
                self._arm_idle()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        waiting = self.waiting
        while len(buf) >= 2:
            n = buf[0] << 8 | buf[1]
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2:2 + n])
            del buf[:2 + n]
            if n < 12:
                continue
            a = waiting.get(msg[0] << 8 | msg[1])
            if a is not None:
                a.offer(msg)   # ends it (and forgets it here) when accepted

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(exc or ConnectionResetError("the upstream closed the connection"), self.worked)

    def _shut(self, exc: BaseException, worked: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        if self.link.conn is self:
            self.link.conn = None
        waiting, self.waiting = self.waiting, {}
        for a in waiting.values():
            a.lost(exc, self.link, worked)

    def _arm_idle(self) -> None:
        if self.idle is None and not self.closed:
            self.idle = self.loop.call_later(self.link.opts.upstream_idle_timeout, self._idle_close)

    def _idle_close(self) -> None:
        self.idle = None
        if not self.waiting and self.transport is not None:
            self.closed = True
            if self.link.conn is self:
                self.link.conn = None
            self.transport.close()



def stream_attempt(up: Upstream, req: Request, edns: bool, stats: Stats, check: Check | None,
                   notify: Callable[[], None], opts: ServerOptions) -> StreamAttempt:
    """The Attempt for a DoT or DoH upstream (``Upstreams._send``'s non-UDP branch)."""
    link = up.link
    if up.transport == "https":
        if link is None:
            from .upstream_https import DohConnection

            link = up.link = Link(up, opts, DohConnection)
        return HttpsAttempt(up, req, edns, stats, check, notify, link)
    if link is None:
        link = up.link = Link(up, opts, DotConnection)
    return StreamAttempt(up, req, edns, stats, check, notify, link)

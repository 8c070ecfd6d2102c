"""Talking to upstream resolvers: a fresh random source port and a random ID per query.

Why so careful (RFC 5452, DNSpooq, TuDoor): a forwarder is the classic cache
poisoning target.  Each UDP query is sent from a socket connected for it alone
(the kernel picks a random source port and drops datagrams from any other
address), with an ID from ``secrets``, and a reply is accepted only if its ID
and question match; anything else -- garbage included -- is counted and
ignored while the genuine answer is still awaited.

Why it looks low-level: a cache miss is mostly this module's work.  The sockets
are the C ``_socket.socket`` type, created non-blocking, and watched through one
private epoll per event loop instead of an event-loop reader each (see ``_Mux``);
an attempt that ends wakes its query directly, without a Future of its own.  On
Linux a socket whose query got its answer is disconnected, which gives its port
back, and kept for a later query, whose ``connect`` draws a new random port
(see ``_Mux.recycle``): the same port per query as a new socket, without the
``socket``/``close``/``epoll_ctl`` calls.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import contextlib
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import fd_exhaustion, late_replies
from .config import Endpoint, ServerOptions, format_endpoint
from .stats import Stats
from .wire import (
    FORMERR,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Request,
    WireError,
    make_query,
    question_matches,
)

MAX_REPLY = 65535
# Consecutive failures after which an upstream counts as down.
DOWN_AFTER = 3
# Longest wait between two probes of a down upstream (seconds).
MAX_PROBE_INTERVAL = 30.0


log = logging.getLogger("hushdns.upstream")


def failure_reason(exc: BaseException | None) -> str:
    """A few words for the log line saying why an upstream went down."""
    if exc is None or isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused (nothing listens on that port)"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    if isinstance(exc, WireError):
        return f"malformed answer: {exc}"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    return str(exc) or type(exc).__name__


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time; ``ede`` is the reason (RFC 8914) if not the
    network's."""

    def __init__(self, msg: str, ede: int | None = None) -> None:
        super().__init__(msg)
        self.ede = ede


# RFC 8914 22, "No Reachable Authority": every upstream refused (what unbound says).
EDE_NO_REACHABLE_AUTHORITY = 22


# Parses an accepted reply (raising WireError when it is malformed); its result
# is handed back with the reply so the caller does not parse twice.
Check = Callable[[bytes], Any]


@dataclass
class Upstream:
    """One upstream server and its recent health."""

    host: str
    port: int
    label: str = ""
    failures: int = 0            # consecutive failures (>= DOWN_AFTER: down)
    down_until: float = 0.0      # while down: monotonic time of the next probe
    probing: bool = False        # while down: a probe query is in flight
    transport: str = "udp"       # udp (TCP after TC), tls (DoT) or https (DoH)
    # DoT/DoH: the EncryptedEndpoint and the persistent connection(s) (upstream_tls.Link)
    spec: Any = None
    link: Any = None

    def __post_init__(self) -> None:
        self.label = self.label or format_endpoint((self.host, self.port))
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.addr = (self.host, self.port)

    @property
    def down(self) -> bool:
        return self.failures >= DOWN_AFTER

    @classmethod
    def of(cls, ep: Endpoint) -> Upstream:
        scheme = getattr(ep, "scheme", None)
        if scheme is None:
            return cls(ep[0], ep[1])
        return cls(ep[0], ep[1], label=format_endpoint(ep), transport=scheme, spec=ep)

    def close(self) -> None:
        """Close a DoT/DoH upstream's persistent connection (server stop)."""
        if self.link is not None:
            self.link.close()


def _query_id() -> int:
    """A random 16-bit query ID from ``secrets``, drawn 256 at a time (one getrandom per 256 queries)."""
    if not _IDS:
        _IDS.extend(memoryview(secrets.token_bytes(512)).cast("H"))
    return _IDS.pop()


_IDS: list[int] = []
if hasattr(os, "register_at_fork"):
    # A forked child must not replay the IDs its parent has yet to use.
    os.register_at_fork(after_in_child=_IDS.clear)

# Non-blocking from birth: no separate ioctl per upstream socket.
_NONBLOCK = getattr(_socket, "SOCK_NONBLOCK", 0)
_DGRAM = _socket.SOCK_DGRAM | _NONBLOCK | getattr(_socket, "SOCK_CLOEXEC", 0)
# Disconnected sockets kept per address family and event loop for later queries.
# They hold no port (so nothing can be sent to them), only a file descriptor each.
POOL_MAX = 256


def _disconnector() -> Callable[[int], bool] | None:
    """``connect(fd, AF_UNSPEC)`` through libc, or None where it is not known to free the port.

    Why libc: Python's ``socket.connect`` only takes an address of the socket's
    own family, and dissolving a UDP association needs an ``AF_UNSPEC`` one.
    On Linux that also unbinds a port the kernel chose at ``connect`` time, so
    the next ``connect`` draws a new random one (``_Mux.recycle`` checks that
    once per family before it trusts it).  Elsewhere: None, a socket per query.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        connect = ctypes.CDLL(None, use_errno=True).connect
    except (ImportError, OSError, AttributeError):
        return None
    unspec = ctypes.create_string_buffer(16)   # all zeros: sa_family = AF_UNSPEC

    def disconnect(fd: int) -> bool:
        return connect(fd, unspec, 16) == 0

    return disconnect


_disconnect = _disconnector()


def _new_socket(family: int) -> Any:
    """A non-blocking UDP socket of the C type (``socket.socket``'s Python ``__init__``
    costs more than the syscall)."""
    sock = _socket.socket(family, _DGRAM)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock


class _Timeouts:
    """The waits of in-flight queries, timed by one event-loop timer instead of one each.

    Why: uvloop's ``call_later`` + ``cancel`` per query allocate and free a libuv
    timer; nearly every query wakes up because its answer came, not its timer.
    A query's wait almost always ends ``upstream_timeout`` after it started, so
    the deadlines arrive in order: a FIFO, whose head one timer waits for.  A wait
    that ended early is left in place (its future is done) and dropped when it
    reaches the head.  A deadline earlier than the last one queued (rare: the
    end of ``upstream_total_timeout`` cutting a wait short) gets its own timer.
    Timeouts fire up to ``TICK`` late, so that one timer serves a burst of them.
    """

    TICK = 0.01

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fifo: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.outbox: list[tuple[UdpAttempt, bytes]] = []

    def send_soon(self, a: UdpAttempt, msg: bytes) -> None:
        """Send ``msg`` on ``a``'s socket once this loop iteration's callbacks have run.

        Why: the upstream is woken by every datagram that finds it asleep, and on
        loopback the sender pays for that wakeup.  The queries of one burst of
        client packets go out back to back, so it wakes once per burst.
        """
        outbox = self.outbox
        if not outbox:
            self.loop.call_soon(self._flush)
        outbox.append((a, msg))

    def _flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        for a, msg in outbox:
            sock = a.sock
            if sock is None:   # the query went away before its turn
                continue
            try:
                sock.send(msg)
            except OSError as exc:
                if not a.done:
                    a.error = exc
                    a._end()

    def wake_at(self, when: float, fut: asyncio.Future[None]) -> asyncio.TimerHandle | None:
        """Set ``fut``'s result at ``when`` unless it is done by then; a handle to cancel, or None."""
        fifo = self.fifo
        if fifo and when < fifo[-1][0]:
            return self.loop.call_at(when, _wake, fut)
        fifo.append((when, fut))
        if self.timer is None:
            self.timer = self.loop.call_at(when + self.TICK, self._expire)
        return None

    def _expire(self) -> None:
        self.timer = None
        fifo = self.fifo
        now = self.loop.time()
        while fifo:
            when, fut = fifo[0]
            if not fut.done():
                if when > now:
                    self.timer = self.loop.call_at(when + self.TICK, self._expire)
                    return
                fut.set_result(None)
            fifo.popleft()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Mux(_Timeouts):
    """Readiness for every upstream UDP socket of one event loop, through one private epoll.

    Why: ``loop.add_reader``/``remove_reader`` per socket cost uvloop a poll handle,
    a test ``epoll_ctl`` pair, an ioctl and three more ``epoll_ctl`` calls per query
    (strace).  Here a socket is added once, when it is made; closing it removes it
    from the epoll set, and one wakeup of the loop drains every answer that is ready.

    Sockets are recycled (``recycle``): one whose query got its answer is
    disconnected -- which frees its port, so nothing more can arrive -- then
    drained of what arrived before, and kept, still in the epoll set, for a
    later query.  A socket is connected for one query at a time, and
    each ``connect`` draws a new random port, so an upstream sees what it saw
    with a new socket per query, and a reply to an earlier query cannot reach a
    later one (its port is gone, and nothing it sent is left queued).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.waiting: dict[int, UdpAttempt] = {}
        self.ep = select.epoll()
        loop.add_reader(self.ep.fileno(), self._ready)
        self.free: dict[int, list[Any]] = {}
        # Every socket in the epoll set by fd, so that one reported ready with no
        # query waiting on it can be drained (see ``_ready``).
        self.socks: dict[int, Any] = {}
        self.stray = 0   # datagrams read from sockets no query was waiting on
        # Per family: None until a disconnect was seen to free the port, then True/False.
        self.frees_port: dict[int, bool] = {}

    def open(self, family: int) -> Any:
        free = self.free.get(family)
        if free:
            return free.pop()
        sock = _new_socket(family)
        try:
            self.ep.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        self.socks[sock.fileno()] = sock
        return sock

    def watch(self, fd: int, a: UdpAttempt) -> None:
        self.waiting[fd] = a

    def forget(self, fd: int) -> None:
        # Called just before the socket is closed, which takes it out of the epoll set.
        self.waiting.pop(fd, None)
        self.socks.pop(fd, None)

    def recycle(self, sock: Any, fd: int, family: int) -> None:
        """Keep the socket of an answered query for another one, or close it.

        Disconnected first, then drained: once the port is gone nothing more can
        arrive, so the drain empties the queue for good.  (Drained first, a
        duplicate or forged datagram arriving between the drain and the disconnect
        stayed queued: the next query on the socket read it, and until then the
        level-triggered epoll reported the socket ready on every loop iteration.)
        Closed instead when anything is unusual (a pending error, a full pool, a
        kernel where disconnecting does not free the port).
        """
        self.waiting.pop(fd, None)
        free = self.free.setdefault(family, [])
        verdict = self.frees_port.get(family)
        if _disconnect is None or verdict is False or len(free) >= POOL_MAX \
                or not _disconnect(fd):
            self._close(sock, fd)
            return
        if verdict is None:
            try:
                verdict = self.frees_port[family] = sock.getsockname()[1] == 0
            except OSError:
                verdict = False
            if not verdict:
                self._close(sock, fd)
                return
        try:
            while True:
                sock.recv(MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(sock, fd)
            return
        free.append(sock)

    def _close(self, sock: Any, fd: int) -> None:
        if self.socks.get(fd) is sock:
            del self.socks[fd]
        sock.close()

    def close_idle(self) -> None:
        """Close the sockets kept for later queries (queries in flight keep theirs)."""
        for free in self.free.values():
            for sock in free:
                self._close(sock, sock.fileno())
            free.clear()

    def _ready(self) -> None:
        waiting = self.waiting
        for fd, _ in self.ep.poll(0, 512):
            a = waiting.get(fd)
            if a is not None:
                a.readable()
            else:
                self._stray(fd)

    def _stray(self, fd: int) -> None:
        """A socket reported ready that no query waits on: empty it, or stop watching it.

        Why: the epoll is level-triggered, so a datagram left queued on such a
        socket would wake the loop on every iteration (100% CPU while idle).
        A kept socket holds no port and empties in a few reads; anything that
        does not (or an fd this mux no longer knows) leaves the epoll set.
        """
        sock = self.socks.get(fd)
        if sock is not None:
            for _ in range(64):
                try:
                    sock.recv(MAX_REPLY)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:   # a pending error, now read; the socket stays usable
                    continue
                self.stray += 1
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        if sock is not None:
            # No longer watched: it must not serve a later query.
            for free in self.free.values():
                if sock in free:
                    free.remove(sock)
            self._close(sock, fd)


class _ReaderMux(_Timeouts):
    """The portable fallback (no epoll): one event-loop reader per socket, a socket per query."""

    def open(self, family: int) -> Any:
        return _new_socket(family)

    def watch(self, fd: int, a: UdpAttempt) -> None:
        self.loop.add_reader(fd, a.readable)

    def forget(self, fd: int) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(fd)

    def recycle(self, sock: Any, fd: int, family: int) -> None:
        self.forget(fd)
        sock.close()

    def close_idle(self) -> None:
        pass


_MUXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mux | _ReaderMux] = \
    weakref.WeakKeyDictionary()


def _mux_for(loop: asyncio.AbstractEventLoop) -> _Mux | _ReaderMux:
    mux = _MUXES.get(loop)
    if mux is None:
        mux = _MUXES[loop] = _Mux(loop) if hasattr(select, "epoll") else _ReaderMux(loop)
    return mux


def close_idle_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """Close the upstream sockets this loop keeps for later queries (at shutdown)."""
    mux = _MUXES.get(loop)
    if mux is not None:
        mux.close_idle()


class Attempt:
    """One exchange with one upstream over one transport: what the policy (``Upstreams``) sees.

    A transport is a subclass that sends the question when it is made and, when it
    ends, has ``done`` set, ``data`` holding the accepted reply (validated: ID,
    question, and ``check``, whose result is in ``parsed``) or ``error`` what went
    wrong, and calls ``notify()``.  ``close()`` gives up on it.  ``t0`` is when it
    began (perf_counter), ``edns`` whether the question carried an OPT.  The policy
    decides the rest (order, timeouts, back-off, health), so DNS over TLS or HTTPS
    is a new subclass, not a new loop.
    """

    __slots__ = ()
    transport = ""
    up: Upstream
    req: Request
    edns: bool
    check: Check | None
    parsed: Any
    t0: float
    done: bool
    data: bytes | None
    error: BaseException | None

    def close(self) -> None:
        raise NotImplementedError


class UdpAttempt(Attempt):
    """One datagram exchange on a socket connected for it alone (a fresh random port).

    When it ends (``done``), ``data`` holds the accepted reply or ``error`` the
    OSError, the socket is already closed or recycled (``sock`` is None), and
    ``notify()`` has been called.
    """

    __slots__ = ("mux", "up", "req", "edns", "stats", "check", "notify", "parsed", "qid",
                 "t0", "sock", "fd", "done", "data", "error")
    transport = "udp"

    def __init__(self, mux: _Mux | _ReaderMux, up: Upstream, req: Request, edns: bool,
                 stats: Stats, check: Check | None, notify: Callable[[], None]) -> None:
        self.mux = mux
        self.up = up
        self.req = req
        self.edns = edns
        self.stats = stats
        self.check = check
        self.notify = notify
        self.parsed: Any = None
        self.done = False
        self.data: bytes | None = None
        self.error: OSError | None = None
        self.qid = qid = _query_id()
        self.t0 = time.perf_counter()
        sock = mux.open(up.family)   # new, or kept from an answered query
        try:
            # Connected: the kernel picks a random source port and drops other sources.
            sock.connect(up.addr)
            self.fd = fd = sock.fileno()
            mux.watch(fd, self)
        except OSError:
            mux.forget(sock.fileno())
            sock.close()
            raise
        self.sock: Any = sock
        mux.send_soon(self, make_query(req, qid, edns))

    def readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while not self.done:
            try:
                data = sock.recv(MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # ICMP port unreachable and friends
                self.error = exc
                self._end()
                return
            if self._acceptable(data) and self._well_formed(data):
                self.data = data
                self._end()
                return
            label = self.up.label
            self.stats.upstream(label, "late" if late_replies.is_late(label, data)
                                else "spoof_rejected")

    def _end(self) -> None:
        self.done = True
        if self.data is not None:   # answered: the socket can serve another query
            sock, self.sock = self.sock, None
            self.mux.recycle(sock, self.fd, self.up.family)
        else:
            self.close()
        self.notify()

    def _acceptable(self, data: bytes) -> bool:
        if len(data) < 12 or not data[2] & 0x80 or (data[0] << 8 | data[1]) != self.qid:
            return False
        if question_matches(data, self.req):
            return True
        # Some servers answer FORMERR/NOTIMP without echoing the question.
        return data[4:6] == b"\x00\x00" and data[3] & 0xF in (FORMERR, NOTIMP)

    def _well_formed(self, data: bytes) -> bool:
        """A datagram with the right ID and question but a broken body is ignored, and
        the genuine answer still awaited (TuDoor, CVE-2023-29483), not turned into SERVFAIL."""
        if self.check is None or data[2] & 0x02 or data[4:6] == b"\x00\x00":
            return True   # TC answers are re-asked over TCP; question-less errors carry nothing
        try:
            self.parsed = self.check(data)
        except WireError:
            return False
        return True

    def close(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.mux.forget(self.fd)
            sock.close()
            if self.data is None:   # given up on: its answer may still come, late
                late_replies.abandoned(self.up.label, self.qid)


async def tcp_exchange(up: Upstream, req: Request, timeout: float, edns: bool = True) -> bytes:
    """One query over TCP (after a truncated UDP answer); validated like UDP.

    ``wait_for``, not ``asyncio.timeout``: the chain is not run inside a Task
    (server._Waiting), and ``asyncio.timeout`` needs one.
    """
    return await asyncio.wait_for(_tcp_exchange(up, req, edns), timeout)


async def _tcp_exchange(up: Upstream, req: Request, edns: bool) -> bytes:
    qid = secrets.randbits(16)
    msg = make_query(req, qid, edns)
    reader, writer = await asyncio.open_connection(up.host, up.port)
    try:
        writer.write(struct.pack("!H", len(msg)) + msg)
        while True:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(n)
            if (len(data) >= 12 and data[2] & 0x80 and (data[0] << 8 | data[1]) == qid
                    and question_matches(data, req)):
                return data
    finally:
        writer.close()


class TcpAttempt(Attempt):
    """One exchange over TCP (RFC 7766 framing): the full answer after a truncated UDP one.

    Validated like UDP (ID, question, ``check``).  Rare, so it runs as a Task of its
    own; the policy waits for it as for any attempt.
    """

    __slots__ = ("up", "req", "edns", "check", "notify", "parsed", "t0", "done", "data",
                 "error", "task")
    transport = "tcp"

    def __init__(self, up: Upstream, req: Request, edns: bool, check: Check | None,
                 notify: Callable[[], None], timeout: float) -> None:
        self.up, self.req, self.edns, self.check, self.notify = up, req, edns, check, notify
        self.parsed: Any = None
        self.t0 = time.perf_counter()
        self.done = False
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(timeout))

    async def _run(self, timeout: float) -> None:
        try:
            data = await tcp_exchange(self.up, self.req, timeout, self.edns)
            if self.check is not None:
                self.parsed = self.check(data)
            self.data = data
        except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError) as exc:
            self.error = exc
        self.done = True
        self.notify()

    def close(self) -> None:
        if not self.done:
            self.task.cancel()


class _Waker:
    """What a query waits on: any of its attempts ending, or its timer, wakes it."""

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def wake(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)


class Upstreams:
    """The policy over the attempts (``UdpAttempt``, ``TcpAttempt``): sends a question to a
    list of upstreams, the next one after ``upstream_timeout``
    without giving up on the earlier ones, until ``upstream_total_timeout``.

    Health: after DOWN_AFTER consecutive failures an upstream is down.  While
    any other upstream is up, a down one gets no queries, only a probe (a copy
    of a real question, its answer used for nothing but the verdict) at most
    once per back-off interval (1 s, doubling per failed probe up to
    MAX_PROBE_INTERVAL) and never two at a time; one answer brings it back.
    When every upstream is down they are all still asked: failing every query
    fast because of old failures would turn a blip into an outage.
    """

    def __init__(self, opts: ServerOptions, stats: Stats) -> None:
        self.opts = opts
        self.stats = stats
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mux: _Mux | _ReaderMux | None = None

    def _mux_of(self, loop: asyncio.AbstractEventLoop) -> _Mux | _ReaderMux:
        if loop is not self._loop:
            self._mux = _mux_for(loop)
            self._loop = loop
        return self._mux  # type: ignore[return-value]

    def plan(self, ups: list[Upstream]) -> tuple[list[Upstream], list[Upstream]]:
        """(upstreams to ask one after another, down upstreams due for a probe)."""
        healthy = [u for u in ups if not u.down]
        if not healthy:
            return sorted(ups, key=lambda u: u.failures), []
        now = time.monotonic()
        probes = [u for u in ups if u.down and not u.probing and u.down_until <= now]
        return healthy, probes

    def order(self, ups: list[Upstream]) -> list[Upstream]:
        """The upstreams a query is sent to, in order (down ones only when all are)."""
        return self.plan(ups)[0]

    def _send(self, mux: _Mux | _ReaderMux, up: Upstream, req: Request, edns: bool,
              check: Check | None, notify: Callable[[], None]) -> Attempt | None:
        try:
            if up.transport == "udp":
                return UdpAttempt(mux, up, req, edns, self.stats, check, notify)
            from .upstream_tls import stream_attempt  # DoT/DoH: a new Attempt, same policy

            return stream_attempt(up, req, edns, self.stats, check, notify, self.opts)
        except OSError as exc:
            if fd_exhaustion.is_fd_exhaustion(exc):   # our limit, not the upstream's fault
                info = getattr(req, "info", None)
                fd_exhaustion.count(self.stats, info.label if info is not None else "other", exc)
                return None
            self.stats.upstream(up.label, "error")
            self._failed(up, reason=failure_reason(exc))
            return None

    def probe(self, loop: asyncio.AbstractEventLoop, up: Upstream, req: Request) -> None:
        """Ask a down upstream ``req`` on the side: callbacks and a timer, no Task to track."""
        def done() -> None:
            # Any validated answer but SERVFAIL/REFUSED shows the upstream works again.
            data = a.data   # type: ignore[union-attr]
            verdict(data is not None and data[3] & 0xF not in (SERVFAIL, REFUSED))

        a = self._send(self._mux_of(loop), up, req, True, None, done)
        if a is None:
            return
        up.probing = True

        def verdict(alive: bool) -> None:
            if not up.probing:
                return
            up.probing = False
            a.close()
            timer.cancel()
            if alive:
                self.stats.upstream(up.label, "ok", time.perf_counter() - a.t0)
                self._healthy(up)
            else:
                self.stats.upstream(up.label, "timeout")
                self._failed(up, probe=True)

        timer = loop.call_later(self.opts.upstream_total_timeout, verdict, False)

    async def query(self, req: Request, ups: list[Upstream]) -> tuple[bytes, Upstream]:
        data, up, _ = await self.query_checked(req, ups)
        return data, up

    async def query_checked(self, req: Request, ups: list[Upstream],
                            check: Check | None = None) -> tuple[bytes, Upstream, Any]:
        """Like ``query``; a reply that ``check`` rejects is ignored like a spoof, and
        what ``check`` returned for the accepted reply is the third item (None for a
        question-less FORMERR/NOTIMP)."""
        loop = asyncio.get_running_loop()
        mux = self._mux_of(loop)
        opts, stats = self.opts, self.stats
        for u in ups:
            if u.failures >= DOWN_AFTER:
                order, probes = self.plan(ups)
                for up in probes:
                    self.probe(loop, up, req)
                break
        else:
            order = ups   # all healthy: the common case, no lists built
        waker = _Waker()
        wake = waker.wake
        start = loop.time()
        deadline = start + opts.upstream_total_timeout
        max_sends = max(3, len(order))
        attempts: list[Attempt] = []
        sends = 0
        next_send = start
        last_bad: tuple[bytes, Upstream, Any] | None = None
        no_edns: set[str] = set()
        refused: set[str] = set()   # upstreams that REFUSED this question: not asked again
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if now >= next_send and sends < max_sends:
                    live = [u for u in order if u.label not in refused] if refused else order
                    if not live:
                        sends = max_sends
                        continue
                    up = live[sends % len(live)]
                    sends += 1
                    next_send = now + opts.upstream_timeout
                    a = self._send(mux, up, req, up.label not in no_edns, check, wake)
                    if a is None:
                        next_send = now
                        continue
                    attempts.append(a)
                if not attempts:
                    if sends >= max_sends:
                        break
                    await asyncio.sleep(max(0.0, min(next_send, deadline) - now))
                    continue
                for a in attempts:
                    if a.done:
                        break
                else:
                    when = min(next_send if sends < max_sends else deadline, deadline)
                    waker.fut = fut = loop.create_future()
                    timer = mux.wake_at(when, fut)
                    try:
                        await fut
                    finally:
                        if timer is not None:
                            timer.cancel()
                        waker.fut = None
                for a in [a for a in attempts if a.done]:
                    attempts.remove(a)
                    if a.data is not None and a.data[2] & 0x02 and a.transport == "udp":
                        # TC: the full answer only fits over TCP (the rare path).
                        stats.upstream(a.up.label, "truncated")
                        attempts.append(TcpAttempt(a.up, req, a.edns, check, wake,
                                                   max(0.1, deadline - loop.time())))
                        continue
                    outcome = self._outcome(a)
                    if outcome == "retry-no-edns":
                        no_edns.add(a.up.label)
                        b = self._send(mux, a.up, req, False, check, wake)
                        if b is None:
                            next_send = loop.time()
                        else:
                            attempts.append(b)
                    elif isinstance(outcome, bytes):
                        rcode = outcome[3] & 0xF
                        if rcode == REFUSED:
                            refused.add(a.up.label)
                        if rcode in (SERVFAIL, REFUSED, FORMERR, NOTIMP):
                            last_bad = (outcome, a.up, a.parsed)
                            next_send = loop.time()   # ask the next upstream now
                        else:
                            self._healthy(a.up)
                            return outcome, a.up, a.parsed
                    else:
                        next_send = loop.time()
        finally:
            for a in attempts:
                a.close()
                # One asked moments ago and overtaken by another's answer did not fail.
                if time.perf_counter() - a.t0 >= opts.upstream_timeout:
                    stats.upstream(a.up.label, "timeout")
                    self._failed(a.up)
        if last_bad is not None:
            if last_bad[0][3] & 0xF == REFUSED:
                # Not the client's answer: it asked us, not them (unbound: SERVFAIL too).
                raise UpstreamFailure("every upstream refused", EDE_NO_REACHABLE_AUTHORITY)
            return last_bad
        raise UpstreamFailure("no upstream answered")

    def _outcome(self, a: Attempt) -> bytes | str | None:
        """An ended attempt -> the reply, "retry-no-edns", or None (it failed)."""
        stats = self.stats
        data = a.data
        if data is None:
            exc = a.error
            if a.transport != "udp" and isinstance(exc, OSError) and \
                    fd_exhaustion.is_fd_exhaustion(exc):
                # Our file descriptors ran out (EMFILE/ENFILE), not the upstream's fault.
                info = getattr(a.req, "info", None)
                fd_exhaustion.count(stats, info.label if info is not None else "other", exc)
                return None
            stats.upstream(a.up.label, "error")
            reason = failure_reason(exc)
            self._failed(a.up, reason=reason if a.transport == "udp" else
                         f"over {a.transport.upper()}: {reason}")
            return None
        if a.edns and data[3] & 0xF in (FORMERR, NOTIMP):
            stats.upstream(a.up.label, "error")
            return "retry-no-edns"
        stats.upstream(a.up.label, "ok", time.perf_counter() - a.t0)
        return data

    def _failed(self, up: Upstream, probe: bool = False, reason: str = "timeout") -> None:
        if not up.down:
            up.failures += 1
            if up.down:
                up.down_until = time.monotonic() + 1.0   # first probe in a second
                self.stats.upstream_state[up.label] = 0
                # Once per transition: queries failing while it is down log nothing.
                log.warning("upstream %s is down (%s, %d failures in a row); probing it, "
                            "other upstreams answer meanwhile", up.label, reason, up.failures)
        elif probe:
            # Only failed probes lengthen the back-off: a burst of queries that
            # were in flight when it went down must not push the next probe away.
            up.failures += 1
            up.down_until = time.monotonic() + min(
                MAX_PROBE_INTERVAL, 2.0 ** (up.failures - DOWN_AFTER))

    def _healthy(self, up: Upstream) -> None:
        if up.failures >= DOWN_AFTER:
            log.info("upstream %s is back up", up.label)
        up.failures = 0
        up.down_until = 0.0
        self.stats.upstream_state[up.label] = 1

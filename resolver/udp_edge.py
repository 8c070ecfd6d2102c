"""The per-datagram part of the edge: the UDP listen socket's batches, and one query handled.

Why a module of its own: it runs once per datagram (the loop over a batch, the reply
memo's miss, the sends), so it is compiled with the rest of the hot path (pyproject's
build hook's modules list), while server.py (sockets, lifecycle, reloads) stays plain Python.
``Server`` owns the edges and the tables they read; see resolver/server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from .counting import count_query
from .memo import ReplyMemo
from .pipeline import Pipeline
from .proxy_protocol import SIGNATURE, V4_UDP
from .wire import Drop, Reject, parse_query

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("hushdns")

UDP_BATCH: Final = 64            # datagrams read per readiness event before the replies go out
UDP_MAX_QUERY: Final = 4096      # larger datagrams are cut here: no real query comes near it
perf_counter: Final = time.perf_counter


class UdpEdge:
    """One UDP listen socket, read and answered in batches.

    Why not a DatagramProtocol: a callback per datagram interleaves every
    answer with two syscalls, and the Python code runs with cold CPU caches
    each time.  On each readiness event this reads up to ``UDP_BATCH``
    datagrams, answers them (reply memo, else the pipeline), then sends the
    replies; measured in bench/README.md.  An answer that waits for an
    upstream is sent on its own when it arrives.  A reply the kernel will not
    take (socket buffer full) is dropped, as any UDP reply can be lost.
    """

    def __init__(self, server: Server, sock: Any) -> None:
        self.server = server
        self.sock = sock   # a socket.socket (Any: bench/ab_scaleout.py reads from a fake one)
        self.fd: int = sock.fileno()
        self.out: list[tuple[bytes, Any]] | None = None   # replies of the batch being read
        self.later: list[tuple[bytes, Any]] = []          # replies of answers that waited
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proxies: dict[Any, ProxiedSink] = {}          # proxy address -> its sink

    def via(self, proxy: Any) -> ProxiedSink:
        """The sink that sends a proxied client's replies back to the proxy (one per proxy socket)."""
        sink = self.proxies.get(proxy)
        if sink is None:
            if len(self.proxies) >= 4096:
                self.proxies.clear()
            sink = self.proxies[proxy] = ProxiedSink(self, proxy)
        return sink

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        self.sock.close()

    def sendto(self, wire: bytes | None, addr: Any = None) -> None:
        """The pipeline's sink: queued during a batch, else sent once this loop iteration ends.

        Why not at once: forwarded answers complete in bursts (one wakeup drains
        every upstream reply that is ready), and on loopback the sender pays for
        waking a sleeping client; sent back to back, a burst wakes it once.
        """
        if wire is None:
            return
        out = self.out
        if out is not None:
            out.append((wire, addr))
            return
        later = self.later
        if not later:
            self.loop.call_soon(self._flush_later)  # type: ignore[union-attr]
        later.append((wire, addr))

    def _flush_later(self) -> None:
        later, self.later = self.later, []
        self._send_all(later)

    def _send_all(self, replies: list[tuple[bytes, Any]]) -> None:
        sendto = self.sock.sendto
        for wire, addr in replies:
            try:
                sendto(wire, addr)
            except OSError as exc:
                log.debug("udp send to %s: %s", addr, exc)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        batch: list[tuple[bytes, Any]] = []
        for _ in range(UDP_BATCH):
            try:
                batch.append(recvfrom(UDP_MAX_QUERY))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:   # e.g. a queued ICMP error: nothing to answer
                log.debug("udp receive: %s", exc)
                break
        server = self.server
        out: list[tuple[bytes, Any]] = []
        self.out = out
        try:
            memo: ReplyMemo | None = server.memo
            gate = server.proxy
            proxies = self.proxies
            trusted: dict[Any, Any] = {}
            known: dict[bytes, Any] = {}
            if gate is not None:
                trusted, known = gate.trusted_table, gate.clients
            for data, peer in batch:
                addr: Any = peer
                sink: Any = self
                if gate is not None:   # PROXY v2: the client is who the header names
                    # ProxyGate.open's common case inlined: a trusted proxy, dnsdist's IPv4
                    # UDP header without TLVs, a client seen before.
                    client = known.get(data[16:26]) if trusted.get(peer[0]) and \
                        data[12:16] == V4_UDP and data[:12] == SIGNATURE and len(data) >= 28 \
                        else None
                    if client is not None:
                        data, addr = data[28:], client
                    else:
                        opened = gate.open(data, peer)
                        if opened is None:
                            continue
                        data, addr = opened
                    if addr is not peer:
                        sink = proxies.get(peer) or self.via(peer)
                wire: bytes | bool | None = None
                if memo is not None:
                    try:
                        wire = memo.answer(data, addr, sink)
                    except Exception:   # a bug in the memo must not cost the answer
                        log.exception("reply memo failed; the pipeline answers")
                if wire is None:   # no memo (or it failed): Server.handle, inlined
                    handle_query(server, data, addr, sink, perf_counter(), None)
                elif wire:
                    out.append((wire, peer))  # type: ignore[arg-type]
        finally:
            self.out = None
            self._send_all(out)


class ProxiedSink:
    """Replies to a client that came through a PROXY v2 proxy go to the proxy, bare (no header)."""

    def __init__(self, edge: UdpEdge, to: Any) -> None:
        self.edge = edge
        self.to = to

    def sendto(self, wire: bytes | None, addr: Any = None) -> None:
        self.edge.sendto(wire, self.to)


def handle_query(server: Server, data: bytes, addr: Any, sink: Any, t0: float,
                 info: Any, proto: str = "udp") -> None:
    """``Server.handle``, and the reply memo's ``on_miss`` for what it could not answer (it
    has read the clock and looked the client up already: ``info``, or None if unknown)."""
    if info is None:
        info = server.clients.lookup(addr[0])  # type: ignore[union-attr]
    try:
        q = parse_query(data, addr[0], proto, info, addr, sink, t0)
    except Drop:
        count_query(server.stats, info.label, "none", "dropped", perf_counter() - t0)
        if proto != "udp":   # stream transports count what they await
            sink.sendto(None, addr)
        return
    except Reject as rej:
        if info.allowed:
            sink.sendto(rej.reply, addr)
            result = rej.result
        else:   # outsiders get nothing they could use for reflection
            result = "dropped"
            if proto != "udp":
                sink.sendto(None, addr)
        count_query(server.stats, info.label, "none", result, perf_counter() - t0)
        return
    pipeline: Pipeline = server.pipeline  # type: ignore[assignment]
    try:
        pipeline.run(q)
    except Exception:
        log.exception("error answering %s", q.qname)
        pipeline.finish(q, pipeline.servfail(q), 0)


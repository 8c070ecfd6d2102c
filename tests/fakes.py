"""Test doubles that speak real DNS over real sockets on 127.0.0.1.

``FakeUpstream`` is an upstream resolver the test controls (answers, delays,
truncates, sends garbage or a wrong ID first, stays silent) and records every
query it got.  ``ServerThread`` runs the real hushdns Server in its own event
loop thread so tests can query it with blocking clients (dnspython, kdig).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dnslib

from resolver.config import Config, load_config
from resolver.server import Server


@dataclass
class Seen:
    data: bytes
    addr: tuple
    proto: str
    at: float

    @property
    def record(self) -> dnslib.DNSRecord:
        return dnslib.DNSRecord.parse(self.data)


def default_answer(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    """A: 192.0.2.1, AAAA: 2001:db8::1, names starting 'nx.' NXDOMAIN with an SOA,
    'cname-<label>.<rest>' a CNAME to '<label with dashes as dots>'."""
    r = q.reply()
    name = str(q.q.qname).lower()
    first = name.split(".")[0]
    if first == "nx":
        r.header.rcode = dnslib.RCODE.NXDOMAIN
        r.add_auth(dnslib.RR("test.", dnslib.QTYPE.SOA, ttl=600,
                             rdata=dnslib.SOA("ns.test.", "host.test.", (1, 3600, 600, 86400, 120))))
        return r
    if first.startswith("cname-"):
        target = first[len("cname-"):].replace("--", ".") + "."
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.CNAME, ttl=300, rdata=dnslib.CNAME(target)))
        r.add_answer(dnslib.RR(target, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.0.2.9")))
        return r
    if q.q.qtype == dnslib.QTYPE.A:
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("192.0.2.1")))
    elif q.q.qtype == dnslib.QTYPE.AAAA:
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.AAAA, ttl=300, rdata=dnslib.AAAA("2001:db8::1")))
    elif q.q.qtype == dnslib.QTYPE.TXT:
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.TXT, ttl=300, rdata=dnslib.TXT("hello")))
    return r


@dataclass
class FakeUpstream:
    """A UDP+TCP DNS server on 127.0.0.1 whose behaviour the test sets per query.

    ``answer(q) -> DNSRecord | bytes | None`` builds the reply (None: stay silent).
    ``delay`` seconds before replying; ``before`` bytes (or callables of the query
    bytes returning bytes, or None to send nothing) sent first over UDP, e.g.
    garbage or a wrong-ID reply; ``truncate_udp`` (a bool, or a callable of the
    parsed query) sets TC on UDP replies and drops their records.  ``on_query``
    is called with each UDP ``Seen`` before the reply, e.g. to race the genuine
    answer with a spoofed one from another socket.
    """

    answer: Callable[[dnslib.DNSRecord], dnslib.DNSRecord | bytes | None] = default_answer
    delay: float = 0.0
    before: list = field(default_factory=list)
    truncate_udp: bool | Callable[[dnslib.DNSRecord], bool] = False
    silent: bool = False
    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)
    on_query: Callable[[Seen], None] | None = None

    def __post_init__(self) -> None:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(50):
            self.udp = socket.socket(fam, socket.SOCK_DGRAM)
            self.udp.bind((self.host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(fam, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((self.host, self.port))
                break
            except OSError:
                # The TCP twin of the random UDP port is in use (e.g. by a client
                # socket of another test): pick another port.
                self.udp.close()
                self.tcp.close()
                if attempt == 49:
                    raise
        self.tcp.listen(16)
        self._stop = False
        self._threads = [threading.Thread(target=self._udp_loop, daemon=True),
                         threading.Thread(target=self._tcp_loop, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def queries(self, proto: str | None = None) -> list[Seen]:
        return [s for s in self.seen if proto is None or s.proto == proto]

    def _reply(self, data: bytes, proto: str) -> list[bytes]:
        try:
            q = dnslib.DNSRecord.parse(data)
        except Exception:
            return []
        if self.silent:
            return []
        out = [b(data) if callable(b) else b for b in self.before] if proto == "udp" else []
        out = [b for b in out if b is not None]
        r = self.answer(q)
        if r is None:
            return out
        wire = r if isinstance(r, bytes) else r.pack()
        tc = self.truncate_udp(q) if callable(self.truncate_udp) else self.truncate_udp
        if proto == "udp" and tc:
            rec = dnslib.DNSRecord.parse(wire)
            rec.rr, rec.auth, rec.ar = [], [], []
            rec.header.tc = 1
            wire = rec.pack()
        return out + [wire]

    def _udp_loop(self) -> None:
        while not self._stop:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            seen = Seen(data, addr, "udp", time.monotonic())
            self.seen.append(seen)
            if self.on_query is not None:
                self.on_query(seen)
            replies = self._reply(data, "udp")
            if self.delay:
                threading.Thread(target=self._send_later, args=(replies, addr), daemon=True).start()
            else:   # inline: a thread per reply churns native memory (seen as RSS growth in soaks)
                self._send_later(replies, addr)

    def _send_later(self, replies: list[bytes], addr: tuple) -> None:
        if self.delay:
            time.sleep(self.delay)
        for r in replies:
            try:
                self.udp.sendto(r, addr)
            except OSError:
                return

    def _tcp_loop(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn, addr), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, addr: tuple) -> None:
        with conn:
            try:
                while True:
                    hdr = conn.recv(2, socket.MSG_WAITALL)
                    if len(hdr) < 2:
                        return
                    data = conn.recv(int.from_bytes(hdr, "big"), socket.MSG_WAITALL)
                    self.seen.append(Seen(data, addr, "tcp", time.monotonic()))
                    if self.delay:
                        time.sleep(self.delay)
                    for r in self._reply(data, "tcp"):
                        conn.sendall(len(r).to_bytes(2, "big") + r)
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.udp.close()
        self.tcp.close()


class ServerThread:
    """The real Server on its own asyncio loop in a thread."""

    def __init__(self, config: Config, reload_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server = Server(config, reload_config=reload_config)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def host(self) -> str:
        return self.server.udp_addresses[0][0]

    @property
    def port(self) -> int:
        return self.server.udp_addresses[0][1]

    @property
    def stats(self):
        return self.server.stats

    def reload(self) -> bool:
        return self.call(self.server.reload())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def write_config(tmp: Path, text: str, name: str = "config.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def start_server(tmp: Path, upstream: FakeUpstream, extra: str = "",
                 lists: dict[str, str] | None = None, listen: str = "127.0.0.1:0") -> ServerThread:
    """Write lists and a config into ``tmp`` and start a server using ``upstream``.

    A top-level ``upstreams:`` or ``metrics:`` key in ``extra`` replaces the default one.
    """
    lines = ""
    for name, body in (lists or {}).items():
        (tmp / f"{name}.txt").write_text(body)
        lines += f"    {name}: {name}.txt\n"
    given = {line.split(":", 1)[0] for line in extra.splitlines() if line[:1].isalpha()}
    text = f'listen: ["{listen}"]\n'
    if "upstreams" not in given:
        text += f'upstreams: ["{upstream.address}"]\n'
    if "metrics" not in given:
        text += "metrics: {listen: null}\n"
    if lines:
        text += "blocking:\n  lists:\n" + lines
    text += extra
    path = write_config(tmp, text)
    return ServerThread(load_config(path), reload_config=lambda: load_config(path))


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (retries: a random UDP port's TCP twin may be taken)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind((host, 0))
            port = u.getsockname()[1]
            try:
                t.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError("no free UDP+TCP port pair")

"""PROXY protocol v2 (the binary header dnsdist, HAProxy and others put before a query).

Why: behind a load balancer every query comes from the balancer's address, and
per-client access, groups, metrics and logs would all collapse into one client.
The balancer tells us who asked in a header before the DNS message: on UDP before
each datagram, on TCP once at the start of the connection.

Only addresses in ``server.proxy_protocol_from`` may send one, and from those a
header is required.  Anything else (a header from another address, a malformed or
truncated header, a bare query from a trusted proxy) is dropped and counted in
``hushdns_proxy_dropped_total{reason}``; it never raises out of the edge.

Parsed from the bytes, no object per packet: ``parse`` returns the header length
and the client address as the edge's ``(ip, port)`` tuple, with the ip strings
shared through a bounded table.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER = 16                    # signature, version/command, family/transport, length
MAX_TRUSTED = 4096             # remembered verdicts of "is this source a trusted proxy?"
MAX_NAMES = 65_536             # remembered client ip strings by their raw bytes
MAX_LENGTH = 4096              # longest header body accepted (addresses and TLVs)
REASONS = ("untrusted", "malformed", "truncated", "missing")

# Address block lengths by family (high nibble of byte 13): INET, INET6, UNIX.
_ADDR_LEN = {1: 12, 2: 36, 3: 216}


class ProxyDrop(Exception):
    """The datagram or connection is dropped; ``reason`` is the metric's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_TRUNCATED = ProxyDrop("truncated")
_MALFORMED = ProxyDrop("malformed")
_MISSING = ProxyDrop("missing")
_names: dict[bytes, str] = {}


def _name(raw: bytes, family: int) -> str:
    """The ip string for ``raw`` (4 or 16 bytes), one string per address seen."""
    s = _names.get(raw)
    if s is None:
        s = socket.inet_ntop(family, raw)
        if len(_names) >= MAX_NAMES:
            _names.clear()
        _names[raw] = s
    return s


def parse(data: bytes | bytearray, peer: Any) -> tuple[int, Any]:
    """``(header length, client address)`` of the header at the start of ``data``.

    The client is ``peer`` itself for a LOCAL header (the proxy's own health
    checks) and for an unspecified or unix-socket family.  Raises ``ProxyDrop``:
    "missing" when ``data`` does not start with the signature, "truncated" when
    it stops inside the header, "malformed" for anything else wrong.
    """
    n = len(data)
    if data[:12] != SIGNATURE:
        if 0 < n < 12 and data == SIGNATURE[:n]:
            raise _TRUNCATED
        raise _MISSING
    if n < HEADER:
        raise _TRUNCATED
    vc = data[12]
    if vc >> 4 != 2:
        raise _MALFORMED
    length = data[14] << 8 | data[15]
    if length > MAX_LENGTH:
        raise _MALFORMED
    end = HEADER + length
    if n < end:
        raise _TRUNCATED
    command = vc & 0x0F
    if command == 0:        # LOCAL: the proxy speaking for itself
        return end, peer
    if command != 1:
        raise _MALFORMED
    fam = data[13]
    family, transport = fam >> 4, fam & 0x0F
    if transport > 2 or family > 3:
        raise _MALFORMED
    if family == 0:
        return end, peer
    need = _ADDR_LEN[family]
    if length < need:
        raise _MALFORMED
    if family == 1:
        return end, (_name(bytes(data[16:20]), socket.AF_INET), data[24] << 8 | data[25])
    if family == 2:
        return end, (_name(bytes(data[16:32]), socket.AF_INET6), data[48] << 8 | data[49])
    return end, peer        # AF_UNIX: no address we could use; the proxy is the client


def header(client: tuple[str, int], server: tuple[str, int], transport: str = "udp",
           local: bool = False, tlvs: bytes = b"") -> bytes:
    """A v2 header, as dnsdist sends it (tests and bench/ build their traffic with this)."""
    ip = ipaddress.ip_address(client[0])
    dst = ipaddress.ip_address(server[0])
    family = 1 if ip.version == 4 else 2
    proto = 2 if transport == "udp" else 1
    addrs = ip.packed + dst.packed + client[1].to_bytes(2, "big") + server[1].to_bytes(2, "big")
    body = addrs + tlvs
    return (SIGNATURE + bytes([0x20 if local else 0x21, family << 4 | proto])
            + len(body).to_bytes(2, "big") + body)


class ProxyGate:
    """Which sources are trusted proxies, and the drop counters (``Stats.proxy_dropped``)."""

    def __init__(self, networks: tuple[Any, ...], dropped: dict[str, int]) -> None:
        self.networks = networks
        self.dropped = dropped
        self._trusted: dict[str, bool] = {}
        self._clients: dict[bytes, tuple[str, int]] = {}   # header address bytes -> client
        self.trusted_table, self.clients = self._trusted, self._clients   # read by UdpEdge

    def trusted(self, ip: str) -> bool:
        t = self._trusted.get(ip)
        if t is None:
            try:
                a = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                a = None
            if a is not None and a.version == 6 and a.ipv4_mapped is not None:
                a = a.ipv4_mapped
            t = a is not None and any(a.version == n.version and a in n for n in self.networks)
            if len(self._trusted) >= MAX_TRUSTED:
                self._trusted.clear()
            self._trusted[ip] = t
        return t

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def open(self, data: bytes, addr: Any) -> tuple[bytes, Any] | None:
        """A datagram from ``addr``: (the DNS message, the client) or None (dropped, counted).

        The common header (PROXY, IPv4 over UDP, no TLVs: what dnsdist sends) is read
        inline, and the client tuple comes from a table keyed by the header's address
        bytes; anything else goes through ``parse``.
        """
        t = self._trusted.get(addr[0])
        if t is None:
            t = self.trusted(addr[0])
        if t:
            if data[12:16] == V4_UDP and data[:12] == SIGNATURE and len(data) >= 28:
                key = data[16:26]
                client = self._clients.get(key)
                if client is None:
                    client = self._client(data)
                return data[28:], client
            try:
                end, client = parse(data, addr)
            except ProxyDrop as d:
                self.drop(d.reason)
                return None
            return data[end:], client
        if data[:12] == SIGNATURE:
            self.drop("untrusted")
            return None
        return data, addr

    def _client(self, data: bytes) -> tuple[str, int]:
        client = (_name(data[16:20], socket.AF_INET), data[24] << 8 | data[25])
        if len(self._clients) >= MAX_NAMES:
            self._clients.clear()
        self._clients[data[16:26]] = client
        return client


# PROXY command, AF_INET over DGRAM, 12 bytes of addresses: dnsdist's UDP header without TLVs.
V4_UDP = b"\x21\x12\x00\x0c"

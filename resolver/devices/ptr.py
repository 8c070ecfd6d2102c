"""Reverse DNS (PTR) to the router: the name the router gave an address it leased.

Why the router and not the upstreams: only the LAN's own DHCP/DNS server knows
'kids-tablet.lan'. One small UDP exchange per unnamed address, from the refresh
thread (never the event loop); answers are accepted only from the asked address,
with the same ID and question.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from .names import norm_hostname

Endpoint = tuple[str, int]


def _reverse_name(address: str) -> bytes:
    labels = ipaddress.ip_address(address).reverse_pointer.split(".")
    return b"".join(bytes([len(lb)]) + lb.encode() for lb in labels) + b"\0"


def _read_name(msg: bytes, i: int, depth: int = 0) -> tuple[str, int]:
    """A (possibly compressed) name at ``i`` -> (dotted text, offset after it)."""
    labels: list[str] = []
    end = -1
    while True:
        if i >= len(msg) or depth > 20:
            raise ValueError("bad name")
        ln = msg[i]
        if ln & 0xC0 == 0xC0:
            if i + 1 >= len(msg):
                raise ValueError("bad pointer")
            if end < 0:
                end = i + 2
            i = (ln & 0x3F) << 8 | msg[i + 1]
            depth += 1
            continue
        if ln == 0:
            return ".".join(labels), (end if end >= 0 else i + 1)
        labels.append(msg[i + 1:i + 1 + ln].decode("ascii", "replace"))
        i += ln + 1


def lookup_ptr(server: Endpoint, address: str, timeout: float = 1.0) -> str | None:
    """The device name from ``address``'s PTR record at ``server``; None for no answer or no name."""
    qname = _reverse_name(address)
    qid = struct.unpack("!H", os.urandom(2))[0]
    question = qname + b"\x00\x0c\x00\x01"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(server)      # connected: the kernel drops datagrams from anyone else
            s.send(query)
            msg = s.recv(4096)
        except OSError:
            return None
    if len(msg) < 12 or msg[:2] != query[:2] or not msg[2] & 0x80 or msg[3] & 0x0F:
        return None
    if msg[12:12 + len(question)].lower() != question.lower():
        return None
    ancount = struct.unpack("!H", msg[6:8])[0]
    i = 12 + len(question)
    try:
        for _ in range(ancount):
            _, i = _read_name(msg, i)
            rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
            i += 10
            if rtype == 12:
                name, _ = _read_name(msg, i)
                return norm_hostname(name)
            i += rdlen
    except (ValueError, struct.error):
        return None
    return None

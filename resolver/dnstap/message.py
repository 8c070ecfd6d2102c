"""The dnstap protobuf (dnstap.proto), encoded by hand.

Why by hand: a Dnstap message is a dozen scalar and bytes fields; building it
with concatenation costs less than a protobuf library's objects, and needs no
generated code or extra dependency.  Field numbers are dnstap.proto's.
"""

from __future__ import annotations

import socket
import struct

# Dnstap.Type / Message.Type / SocketFamily / SocketProtocol values.
DNSTAP_MESSAGE = 1
CLIENT_QUERY = 5
CLIENT_RESPONSE = 6
INET, INET6 = 1, 2
PROTOCOLS = {"udp": 1, "tcp": 2, "dot": 3, "doh": 4}

_FIXED32 = struct.Struct("<I").pack


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes(field: int, value: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(value)) + value


def _uint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def _fixed32(field: int, value: int) -> bytes:
    return varint(field << 3 | 5) + _FIXED32(value)


def address(ip: str) -> tuple[int, bytes]:
    """(socket family value, packed address) of an ip string."""
    if ":" in ip:
        return INET6, socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    return INET, socket.inet_pton(socket.AF_INET, ip)


def encode(identity: bytes, version: bytes, kind: int, family: int, protocol: int,
           query_address: bytes, query_port: int, query_time_ns: int, query: bytes | None,
           response_time_ns: int = 0, response: bytes | None = None, extra: bytes = b"") -> bytes:
    """One serialized ``Dnstap{type=MESSAGE, message=Message{...}}``."""
    qs, qn = divmod(query_time_ns, 1_000_000_000)
    m = (_uint(1, kind) + _uint(2, family) + _uint(3, protocol) + _bytes(4, query_address)
         + _uint(6, query_port) + _uint(8, qs) + _fixed32(9, qn))
    if query is not None:
        m += _bytes(10, query)
    if response is not None:
        rs, rn = divmod(response_time_ns, 1_000_000_000)
        m += _uint(12, rs) + _fixed32(13, rn) + _bytes(14, response)
    out = b""
    if identity:
        out += _bytes(1, identity)
    if version:
        out += _bytes(2, version)
    if extra:
        out += _bytes(3, extra)
    return out + _bytes(14, m) + _uint(15, DNSTAP_MESSAGE)

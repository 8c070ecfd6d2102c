"""The dnstap protobuf (dnstap.proto), encoded by hand.

Why by hand: a Dnstap message is a dozen scalar and bytes fields; building it
with concatenation costs less than a protobuf library's objects, and needs no
generated code or extra dependency.  Field numbers are dnstap.proto's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

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


_SMALL = [bytes([i]) for i in range(128)]


def _len(n: int) -> bytes:
    """varint, with the one- and two-byte cases (every DNS message length) up front."""
    if n < 128:
        return _SMALL[n]
    if n < 16384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    return varint(n)


class Encoder:
    """``encode`` for a stream of messages: the parts that repeat are built once.

    Per client and transport the leading fields (type, family, protocol, address),
    per verdict the ``extra`` field, per second the seconds fields; what is left per
    message is a few joins.  The output is byte for byte ``encode``'s.
    """

    def __init__(self, identity: bytes, version: bytes) -> None:
        self.top = (_bytes(1, identity) if identity else b"") + (_bytes(2, version) if version else b"")
        self.heads: dict[tuple[int, int, int, bytes], bytes] = {}
        self.extras: dict[bytes, bytes] = {}
        self.secs: dict[int, bytes] = {}
        self.pairs: dict[tuple[int, int, bytes], tuple[bytes, bytes]] = {}
        self._last_s, self._last_v = -1, b""
        self.ports: dict[int, bytes] = {}

    def _head(self, kind: int, family: int, protocol: int, addr: bytes) -> bytes:
        key = (kind, family, protocol, addr)
        h = self.heads.get(key)
        if h is None:
            if len(self.heads) >= 65_536:
                self.heads.clear()
            h = self.heads[key] = _uint(1, kind) + _uint(2, family) + _uint(3, protocol) + _bytes(4, addr)
        return h

    def _sec(self, s: int) -> bytes:
        v = self.secs.get(s)
        if v is None:
            if len(self.secs) > 64:
                self.secs.clear()
            v = self.secs[s] = varint(s)
        return v

    def message(self, kind: int, family: int, protocol: int, addr: bytes, port: int,
                qtime_ns: int, query: bytes | None, rtime_ns: int = 0,
                response: bytes | None = None, extra: bytes = b"") -> bytes:
        qs, qn = divmod(qtime_ns, 1_000_000_000)
        parts = [self._head(kind, family, protocol, addr), b"\x30", _len(port) if port < 16384
                 else varint(port), b"\x40", self._sec(qs), b"\x4d", _FIXED32(qn)]
        if query is not None:
            parts += (b"\x52", _len(len(query)), query)
        if response is not None:
            rs, rn = divmod(rtime_ns, 1_000_000_000)
            parts += (b"\x60", self._sec(rs), b"\x6d", _FIXED32(rn), b"\x72", _len(len(response)),
                      response)
        m = b"".join(parts)
        x = _bytes(3, extra) if extra else b""
        return b"".join((self.top, x, b"\x72", _len(len(m)), m, b"\x78\x01"))

    def pair(self, family: int, protocol: int, addr: bytes, port: int, qtime_ns: int,
             query: bytes | None, rtime_ns: int, response: bytes | None, extra: bytes) -> bytes:
        """The Frame Streams data frames of a CLIENT_QUERY (if ``query``) and a CLIENT_RESPONSE
        (if ``response``) sharing their address, port and query time: ``message`` twice, fused.

        Written for a tight budget (it used to share the GIL with the answers): table
        lookups instead of varint loops, the second's varint kept from the last message.
        """
        heads = self.pairs.get((family, protocol, addr))
        if heads is None:
            if len(self.pairs) >= 65_536:
                self.pairs.clear()
            heads = self.pairs[(family, protocol, addr)] = (
                _uint(1, CLIENT_QUERY) + _uint(2, family) + _uint(3, protocol) + _bytes(4, addr),
                _uint(1, CLIENT_RESPONSE) + _uint(2, family) + _uint(3, protocol) + _bytes(4, addr))
        x = self.extras.get(extra)
        if x is None:
            x = b"".join((self.top, _bytes(3, extra) if extra else b"", b"\x72"))
            if len(self.extras) >= 4096:
                self.extras.clear()
            self.extras[extra] = x
        V = _V
        qs, qn = divmod(qtime_ns, 1_000_000_000)
        if qs != self._last_s:
            self._last_s, self._last_v = qs, varint(qs)
        sv = self._last_v
        pv = self.ports.get(port)
        if pv is None:
            pv = self.ports[port] = b"\x30" + varint(port)   # at most 65,536 of them
        common = b"".join((pv, b"\x40", sv,
                           b"\x4d", _FIXED32(qn)))
        nx = len(x) + 2
        out = b""
        if query is not None:
            n = len(query)
            m = b"".join((heads[0], common, b"\x52", V[n] if n < _VN else varint(n), query))
            n = len(m)
            lm = V[n] if n < _VN else varint(n)
            out = b"".join((_U32BE(nx + len(lm) + n), x, lm, m, b"\x78\x01"))
        if response is not None:
            rs, rn = divmod(rtime_ns, 1_000_000_000)
            if rs != self._last_s:
                self._last_s, self._last_v = rs, varint(rs)
            n = len(response)
            m = b"".join((heads[1], common, b"\x60", self._last_v, b"\x6d", _FIXED32(rn),
                          b"\x72", V[n] if n < _VN else varint(n), response))
            n = len(m)
            lm = V[n] if n < _VN else varint(n)
            out += b"".join((_U32BE(nx + len(lm) + n), x, lm, m, b"\x78\x01"))
        return out


_U32BE = struct.Struct("!I").pack
_VN = 16_384
_V = [varint(i) for i in range(_VN)]   # every one- and two-byte varint, by value


def encode_batch(enc: Encoder, items: list[tuple], queries: bool, responses: bool,
                 addresses: dict[str, tuple[int, bytes]], extras: dict[tuple, bytes],
                 offset_ns: int = 0) -> bytes:
    """The frames of a batch of the writer's items, ``Encoder.pair`` inlined in one loop.

    Why: per item a method call and a dozen attribute reads cost as much as the
    encoding; here they are locals.  An item is ``(client ip, port, transport, query,
    response, result, list, rule, response time, query time)``, times in seconds on
    a clock that is ``offset_ns`` behind the wall clock (the server's ``perf_counter``).
    """
    pairs, xs, ports, top = enc.pairs, enc.extras, enc.ports, enc.top
    V, VN, F32 = _V, _VN, _FIXED32
    last_s, last_v = enc._last_s, enc._last_v
    out = []
    append = out.append
    for client, port, proto, query, response, result, lst, rule, t_reply, t_query in items:
        fa = addresses.get(client)
        if fa is None:
            try:
                fa = address(client)
            except (OSError, ValueError):
                fa = (1, b"")
            if len(addresses) >= 65_536:
                addresses.clear()
            addresses[client] = fa
        family, packed = fa
        protocol = PROTOCOLS.get(proto, 1)
        heads = pairs.get((family, protocol, packed))
        if heads is None:
            enc.pair(family, protocol, packed, 0, 0, None, 0, None, b"")
            heads = pairs[(family, protocol, packed)]
        ekey = (result, lst, rule)
        x = extras.get(ekey)
        if x is None:
            extra = (f"{result} list={lst} rule={rule}" if lst else result).encode()
            x = xs.get(extra)
            if x is None:
                x = xs[extra] = b"".join((top, _bytes(3, extra) if extra else b"", b"\x72"))
            if len(extras) >= 4096:
                extras.clear()
            extras[ekey] = x
        now_ns = offset_ns + int(t_reply * 1e9)
        qtime = offset_ns + int(t_query * 1e9)
        qs, qn = divmod(qtime, 1_000_000_000)
        if qs != last_s:
            last_s, last_v = qs, varint(qs)
        pv = ports.get(port)
        if pv is None:
            pv = ports[port] = b"\x30" + varint(port)
        common = b"".join((pv, b"\x40", last_v, b"\x4d", F32(qn)))
        nx = len(x) + 2
        if queries:
            n = len(query)
            m = b"".join((heads[0], common, b"\x52", V[n] if n < VN else varint(n), query))
            _frame(append, x, nx, m)
        if responses and response is not None:
            rs, rn = divmod(now_ns, 1_000_000_000)
            if rs != last_s:
                last_s, last_v = rs, varint(rs)
            n = len(response)
            m = b"".join((heads[1], common, b"\x60", last_v, b"\x6d", F32(rn), b"\x72",
                          V[n] if n < VN else varint(n), response))
            _frame(append, x, nx, m)
    enc._last_s, enc._last_v = last_s, last_v
    return b"".join(out)


def _frame(append: Callable[[bytes], None], x: bytes, nx: int, m: bytes) -> None:
    """One Frame Streams frame: its length, the extra field, the message, the type (MESSAGE)."""
    n = len(m)
    lm = _V[n] if n < _VN else varint(n)
    append(_U32BE(nx + len(lm) + n))
    append(x)
    append(lm)
    append(m)
    append(b"\x78\x01")

"""DNS wire format: the only module that reads or writes DNS messages byte by byte.

Why by hand: the hot paths (a blocked answer, a cache hit) must not build dnslib
objects, which cost more than the whole rest of the answer.  Queries are parsed
straight from the bytes, replies are the client's own header and question plus
prebuilt or cached record bytes, and an upstream answer is walked once to learn
its TTL offsets, CNAME chain and negative-caching TTL.  dnslib is used only to
rebuild an upstream answer on the rare path where records must be removed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

# What the entry points take: client and upstream bytes, or the bytearrays that dnslib packs
# and stream buffers slice (compiled, a parameter typed ``bytes`` refuses a bytearray).
Buffer = bytes | bytearray

# --- constants -------------------------------------------------------------

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_HINFO, T_MX, T_TXT, T_AAAA = 1, 2, 5, 6, 12, 13, 15, 16, 28
T_SRV, T_DNAME, T_OPT, T_DS, T_RRSIG, T_DNSKEY, T_SVCB, T_HTTPS = 33, 39, 41, 43, 46, 48, 64, 65
T_IXFR, T_AXFR, T_MAILB, T_MAILA, T_ANY = 251, 252, 253, 254, 255
C_IN = 1

# Extended DNS Errors (RFC 8914) used by hushdns.
EDE_BLOCKED = 15
EDE_PROHIBITED = 18
EDE_NETWORK_ERROR = 23
EDE_STALE_ANSWER = 3
EDE_NOT_READY = 14

QTYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY",
    257: "CAA",
}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    16: "BADVERS",
}

_H = struct.Struct("!HHHHHH")
_HH = struct.Struct("!HH")
_HHHH = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_I = struct.Struct("!I")
# Answer.render_for: reply headers after the ID by flags and counts (bounded: counts are the
# upstream's).
_HEADS: Final[dict[int, bytes]] = {}
MAX_HEADS: Final = 4096


_KEY_FLAGS = (b"\x00", b"\x01", b"\x02", b"\x03")


def qtype_label(qtype: int) -> str:
    """The query-type label of ``hushdns_queries_total``: bounded, so a client sending
    random types cannot create series (unknown types are "other")."""
    return QTYPE_NAMES.get(qtype, "other")


def qtype_name(qtype: int) -> str:
    """Mnemonic for metrics labels and logs; unknown types become TYPE<n> (bounded by 65536)."""
    return QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


class Drop(Exception):
    """The datagram is not worth an answer (too short, or itself a response)."""


class Reject(Exception):
    """The query gets an error reply built from whatever of it could be read."""

    def __init__(self, rcode: int, reply: bytes, result: str) -> None:
        super().__init__(RCODE_NAMES.get(rcode, str(rcode)))
        self.rcode = rcode
        self.reply = reply
        self.result = result


class WireError(ValueError):
    """A message (usually an upstream answer) is malformed."""


# --- queries -----------------------------------------------------------------


class Request:
    """One client query: the raw bytes plus what was read from them.

    ``qname`` is lower-cased and dotted without the trailing dot ("" for the
    root).  ``key`` identifies the question for the cache and in-flight
    de-duplication (lower-cased wire name, type, class and the DO bit).
    ``remember`` is cleared by a stage that must see every query for this name (the
    bypass counters): ``Pipeline.finish`` then offers the reply to no memo.
    """

    __slots__ = (
        "data", "qid", "flags", "qend", "qname", "qtype", "qclass", "key",
        "edns", "edns_bad", "udp_size", "do", "client", "proto", "info", "addr", "sink", "t0",
        "remember",
    )

    # Declared for mypy and mypyc (a compiled Request is a native class with these fields).
    data: bytes
    qid: int
    flags: int
    qend: int
    qname: str
    qtype: int
    qclass: int
    key: bytes
    edns: bool
    edns_bad: bool
    udp_size: int
    do: bool
    client: str
    proto: str
    info: Any
    addr: Any
    sink: Any
    t0: float
    remember: bool

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.edns = False
        self.edns_bad = False
        self.udp_size = 512
        self.do = False
        self.client = ""
        self.proto = "udp"
        self.info = None
        self.addr = None   # where the reply goes: ``sink.sendto(wire, addr)``
        self.sink = None
        self.t0 = 0.0      # perf_counter() when the query arrived
        self.remember = True

    def again(self, data: bytes, addr: Any, info: Any, sink: Any, t0: float) -> Request:
        """The same question (``data`` equal after the ID) from ``addr``: what the reply memo
        hands to stages that see every query, without parsing ``data`` again."""
        q = Request(data) if COMPILED else _new_request(Request)
        q.data = data
        q.qid = data[0] << 8 | data[1]
        q.flags, q.qend, q.qname, q.qtype, q.qclass, q.key = \
            self.flags, self.qend, self.qname, self.qtype, self.qclass, self.key
        q.edns, q.edns_bad, q.udp_size, q.do = self.edns, self.edns_bad, self.udp_size, self.do
        q.client, q.proto, q.info, q.addr, q.sink, q.t0 = addr[0], "udp", info, addr, sink, t0
        q.remember = True
        return q

    def max_udp(self, cap: int) -> int:
        """Largest UDP reply the client accepts: 512 without EDNS, else its size up to ``cap``."""
        if not self.edns:
            return 512
        return min(max(self.udp_size, 512), cap)


def _read_labels(data: bytes, pos: int, n: int) -> tuple[list[bytes], int]:
    """Uncompressed name at ``pos`` (as in a query's question) -> labels and end offset."""
    labels: list[bytes] = []
    total = 1
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        ln = data[pos]
        if ln == 0:
            return labels, pos + 1
        if ln > 63:
            raise WireError("compressed or extended label in question")
        total += ln + 1
        if total > 255:
            raise WireError("name longer than 255 octets")
        labels.append(data[pos + 1 : pos + 1 + ln])
        pos += 1 + ln


def _dotted(data: bytes, pos: int) -> str:
    """The lower-case dotted name at ``pos``, which ``_name_end`` has already validated."""
    labels: list[str] = []
    while True:
        ln = data[pos]
        if ln == 0:
            return ".".join(labels)
        if ln >= 0xC0:
            pos = (ln & 0x3F) << 8 | data[pos + 1]
            continue
        labels.append(data[pos + 1 : pos + 1 + ln].decode("latin-1").lower())
        pos += 1 + ln


def check_name(data: bytes, pos: int, n: int) -> int:
    """Like ``read_name`` without building the name: validate pointers and lengths, return the end.

    Why: a record the answer walk only skipped could carry a pointer past the
    end or a loop; cached and replayed, such a message breaks every client.
    """
    return _name_end(data, pos, n, {})


# Types whose rdata holds a (possibly compressed) name, and where it starts (RFC 3597 s4).
_RDATA_NAME_AT = {T_NS: 0, T_CNAME: 0, T_PTR: 0, T_MX: 2, T_SRV: 6, T_DNAME: 0}


def _expand(data: bytes, pos: int) -> bytes:
    """The uncompressed wire form of the name at ``pos`` (validated by ``_name_end``), as sent.

    Names are compared in this form, lower-cased with ``bytes.lower`` (ASCII letters
    only, as DNS compares names: RFC 4343), never as text: a dotted spelling cannot
    tell a label holding a dot or a space from two labels, and two text spellings
    (``\\032`` escapes, latin-1 case folding) need not agree.  Iterative: the
    validator has bounded the pointer jumps.
    """
    out = bytearray()
    while True:
        ln = data[pos]
        if ln == 0:
            out.append(0)
            return bytes(out)
        if ln >= 0xC0:
            pos = (ln & 0x3F) << 8 | data[pos + 1]
            continue
        out += data[pos : pos + 1 + ln]
        pos += 1 + ln


def _wire_key(data: bytes, pos: int) -> bytes:
    """``_expand`` with ASCII-only case folding (length octets are <= 63, never letters)."""
    return _expand(data, pos).lower()


def _under(name: bytes, owner: bytes) -> int:
    """Where ``owner`` starts inside ``name`` if ``name`` is a proper subdomain of it, else 0
    (both uncompressed, lower-cased wire names)."""
    if len(name) <= len(owner) or not name.endswith(owner):
        return 0
    off = 0
    cut = len(name) - len(owner)
    while off < cut:
        off += name[off] + 1
    return off if off == cut else 0


def read_name(data: Buffer, pos: int) -> tuple[str, int]:
    """Decompress the name at ``pos`` -> (lower-case dotted name, offset after it in place).

    Validated by the one name validator (``_name_end``) before its labels are read.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = _name_end(data, pos, len(data), {})
    return _dotted(data, pos), end


def _error_reply(data: bytes, rcode: int, qend: int = 12, opt: bytes = b"") -> bytes:
    """Error reply echoing ID, RD, CD and (when readable) the question."""
    flags = 0x8080 | (data[2] << 8 | data[3]) & 0x7910 | (rcode & 0xF)
    qd = 1 if qend > 12 else 0
    return _H.pack(data[0] << 8 | data[1], flags, qd, 0, 0, 1 if opt else 0) + data[12:qend] + opt


# Parsed questions by everything after ID and flags (counts, question, OPT).
# A LAN asks the same few thousand names over and over, so most queries skip
# the label walk and EDNS parse entirely.  Bounded: cleared when full.
_QUESTIONS: dict[bytes, tuple] = {}
MAX_MEMO = 8192


def parse_query(data: Buffer, client: str = "", proto: str = "udp", info: Any = None,
                addr: Any = None, sink: Any = None, t0: float = 0.0) -> Request:
    """Validate a client query and read its question and EDNS.

    Raises ``Drop`` (no answer at all) or ``Reject`` (carrying the error reply).
    This is the single place where client input is validated.  The edge passes who
    asked and where the reply goes, so each of the Request's fields is set once.
    """
    if type(data) is bytes:
        req = _plain_query(data, client, proto, info, addr, sink, t0)
        if req is not None:
            return req
    else:
        data = bytes(data)
    return _parse_query(data, client, proto, info, addr, sink, t0)


def _parse_query(data: bytes, client: str, proto: str, info: Any, addr: Any, sink: Any,
                 t0: float) -> Request:
    """``parse_query`` for everything ``_plain_query`` leaves."""
    if len(data) < 12:
        raise Drop("shorter than a header")
    flags = data[2] << 8 | data[3]
    if flags & 0x8000:
        raise Drop("QR set: a response, not a query")
    if flags & 0x7800:
        raise Reject(NOTIMP, _error_reply(data, NOTIMP), "notimp")
    tail = data[4:]
    q = _QUESTIONS.get(tail)
    if q is None:
        q = _parse_question(data)
        if len(_QUESTIONS) >= MAX_MEMO:
            _QUESTIONS.clear()
        _QUESTIONS[tail] = q
    if q[0] is not None:            # a cached verdict: (rcode, result, qend, with_opt, do)
        rcode, result, qend, with_opt, do = q
        opt = b""
        if with_opt:
            opt = opt_record(1232, do, BADVERS if rcode == BADVERS else 0)
        raise Reject(rcode, _error_reply(data, 0 if rcode == BADVERS else rcode, qend, opt), result)
    _, qend, qtype, qclass, qname, name_key, edns, udp_size, do = q
    req = Request(data)
    req.qid = data[0] << 8 | data[1]
    req.flags = flags
    req.qend = qend
    req.qtype = qtype
    req.qclass = qclass
    req.qname = qname
    req.edns = edns
    req.udp_size = udp_size
    req.do = do
    # DO and CD change what an upstream returns, so they are part of the cache key.
    req.key = name_key + _KEY_FLAGS[do | ((flags >> 3) & 2)]
    req.client, req.proto, req.info, req.addr, req.sink, req.t0 = client, proto, info, addr, sink, t0
    return req


_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
# Wire name -> dotted name in one C call: every length octet (1..44 in the names
# _plain_query takes) becomes a dot.  Right only when no label holds an octet that
# the table also changes (below 45) or a dot; counting the dots tells.
_DOTS = bytes(46 if 0 < b < 45 else b for b in range(256))
_new_request = object.__new__
# Whether this module is the mypyc-compiled build (hatch_build.py; README,
# "Compiled build"): shown in the startup log and in hushdns_build_info{hot_path}.
try:   # compiled, a native class is made by calling it, not by object.__new__
    _new_request(Request)
    COMPILED = False
except TypeError:
    COMPILED = True


def _plain_query(data: bytes, client: str, proto: str, info: Any,
                 addr: Any, sink: Any, t0: float) -> Request | None:
    """The query every stub sends (a standard query, QR clear, with one IN question of a
    real type, uncompressed, at most one OPT and nothing else), read in one pass; None for
    anything else, which the rest of ``parse_query`` then judges.  Accepts a strict subset
    of what it accepts, with the same result (``tests/test_parse_query.py`` checks that on
    random input)."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != _ONE_QUESTION or data[10]:
        return None
    flags = data[2] << 8 | data[3]
    i = 12
    labels = 0
    while True:
        ln = data[i]
        if ln == 0:
            break
        if ln > 44:   # see _DOTS: a label this long (or a compression pointer) goes the long way
            return None
        labels += 1
        i += ln + 1
        if i >= n:
            return None
    qend = i + 5
    if not labels or i > 266 or qend > n or data[i + 3] or data[i + 4] != 1:
        return None   # the root, a name over 255 octets, a class other than IN
    qtype = data[i + 1] << 8 | data[i + 2]
    if qtype == 0 or qtype == T_OPT or 128 <= qtype <= 254:
        return None   # not questions, or refused: the slow path says which
    if data[11]:      # one additional record: an OPT at the root, version 0, filling the rest
        if data[11] != 1 or qend + 11 > n or data[qend] or data[qend + 1] \
                or data[qend + 2] != T_OPT or data[qend + 6] \
                or qend + 11 + (data[qend + 9] << 8 | data[qend + 10]) != n:
            return None
        edns = True
        udp_size = data[qend + 3] << 8 | data[qend + 4]
        do = data[qend + 7] & 0x80 != 0
    elif qend != n:
        return None
    else:
        edns = do = False
        udp_size = 512
    # Every slot set here, once (compiled, __init__ sets a few first: cheap there).
    req = Request(data) if COMPILED else _new_request(Request)
    req.data = data
    req.edns = edns
    req.edns_bad = False
    req.udp_size = udp_size
    req.do = do
    req.client = client
    req.proto = proto
    req.info = info
    req.addr = addr
    req.sink = sink
    req.t0 = t0
    req.remember = True
    req.qid = data[0] << 8 | data[1]
    req.flags = flags
    req.qend = qend
    req.qtype = qtype
    req.qclass = 1
    name = data[12:i + 1].lower()
    qname = name[1:-1].translate(_DOTS).decode("latin-1")
    if qname.count(".") != labels - 1:
        return None   # an octet below 45 (or a dot) inside a label: the long way reads it
    req.qname = qname
    req.key = name + data[i + 1:qend] + _KEY_FLAGS[do | ((flags >> 3) & 2)]
    return req


def _parse_question(data: bytes) -> tuple:
    """The slow path of ``parse_query``: everything that depends only on ``data[4:]``.

    Returns (None, qend, qtype, qclass, qname, name_key, edns, udp_size, do) or a
    verdict tuple (rcode, result, qend, with_opt, do) for an error reply.
    """
    n = len(data)
    qd, an, ns, ar = _HHHH.unpack_from(data, 4)
    if qd != 1:
        return (FORMERR, "formerr", 12, False, False)
    try:
        labels, pos = _read_labels(data, 12, n)
    except WireError:
        return (FORMERR, "formerr", 12, False, False)
    if pos + 4 > n:
        return (FORMERR, "formerr", 12, False, False)
    qtype, qclass = _HH.unpack_from(data, pos)
    qend = pos + 4
    req = Request(data)
    if ar:
        try:
            _read_edns(req, data, qend, an + ns, ar)
        except WireError:
            return (FORMERR, "formerr", qend, False, False)
    elif an or ns:
        # Records in a query's answer/authority sections are unusual but legal;
        # they must at least be well formed.
        try:
            _skip_records(data, qend, an + ns)
        except WireError:
            return (FORMERR, "formerr", qend, False, False)
    if req.edns_bad:
        return (BADVERS, "formerr", qend, True, req.do)
    if qtype == T_OPT or 128 <= qtype <= 250 or qtype == 0:
        # OPT and meta types (TKEY, TSIG, ...) are not questions (RFC 6895).
        return (FORMERR, "formerr", qend, req.edns, req.do)
    if qtype in (T_MAILA, T_MAILB):
        return (NOTIMP, "notimp", qend, req.edns, req.do)
    if qtype in (T_AXFR, T_IXFR) or qclass != C_IN:
        # No zone transfers from a forwarder; CHAOS and friends are not forwarded.
        return (REFUSED, "refused", qend, req.edns, req.do)
    qname = b".".join(labels).lower().decode("latin-1")
    name_key = data[12:pos].lower() + data[pos:qend]
    return (None, qend, qtype, qclass, qname, name_key, req.edns, req.udp_size, req.do)


def _skip_records(data: bytes, pos: int, count: int) -> int:
    n = len(data)
    for _ in range(count):
        pos = check_name(data, pos, n)
        if pos + 10 > n:
            raise WireError("truncated record")
        rdlen = data[pos + 8] << 8 | data[pos + 9]
        pos += 10 + rdlen
        if pos > n:
            raise WireError("truncated rdata")
    return pos


def _read_edns(req: Request, data: bytes, pos: int, skip: int, ar: int) -> None:
    n = len(data)
    if skip:
        pos = _skip_records(data, pos, skip)
    seen = 0
    for _ in range(ar):
        start = pos
        pos = check_name(data, pos, n)
        if pos + 10 > n:
            raise WireError("truncated record")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > n:
            raise WireError("truncated rdata")
        if rtype == T_OPT:
            seen += 1
            if seen > 1 or data[start] != 0:
                raise WireError("more than one OPT, or OPT not at the root")
            req.edns = True
            req.udp_size = rclass
            req.do = bool(ttl & 0x8000)
            req.edns_bad = bool((ttl >> 16) & 0xFF)


# --- replies -----------------------------------------------------------------


def opt_record(udp_size: int, do: bool, ext_rcode: int = 0, ede: int | None = None,
               ede_text: str = "") -> bytes:
    """An OPT pseudo-record, optionally carrying an Extended DNS Error (RFC 8914)."""
    rdata = b""
    if ede is not None:
        text = ede_text.encode()
        rdata = _HH.pack(15, 2 + len(text)) + ede.to_bytes(2, "big") + text
    ttl = ((ext_rcode >> 4) & 0xFF) << 24 | (0x8000 if do else 0)
    return b"\x00" + _RR.pack(T_OPT, udp_size, ttl, len(rdata)) + rdata


_OPTS: dict[tuple[int, bool, int | None], bytes] = {}


def _opt_cached(udp_size: int, do: bool, ede: int | None) -> bytes:
    """The few distinct OPT records a reply can carry, built once each."""
    key = (udp_size, do, ede)
    opt = _OPTS.get(key)
    if opt is None:
        opt = _OPTS[key] = opt_record(udp_size, do, ede=ede)
    return opt


def reply_flags(req: Request, rcode: int, ad: bool = False) -> int:
    """QR, RA, the client's RD and CD, optional AD, and the rcode."""
    return 0x8080 | (req.flags & 0x0110) | (0x0020 if ad else 0) | (rcode & 0xF)


def build_reply(req: Request, rcode: int, body: bytes = b"", an: int = 0, ns: int = 0,
                ar: int = 0, opt: bytes | None = None) -> bytes:
    """The client's ID and question, then ``body`` (records), then OPT if the query had EDNS."""
    if req.edns and opt is None:
        opt = _opt_cached(1232, req.do, None)
    return reply_for(req.data, req.qend, req.flags, rcode, body, an, ns,
                     opt if req.edns else None, ar)


def reply_for(data: bytes, qend: int, qflags: int, rcode: int, body: bytes = b"", an: int = 0,
              ns: int = 0, opt: bytes | None = None, ar: int = 0) -> bytes:
    """``build_reply`` from the query's bytes (the UDP fast path has no Request): ID and
    question of ``data``, then ``body``, then ``opt`` when given."""
    if opt is not None:
        body += opt
        ar += 1
    flags = 0x8080 | (qflags & 0x0110) | (rcode & 0xF)   # as reply_flags(), inlined: hot path
    return _H.pack(data[0] << 8 | data[1], flags, 1, an, ns, ar) + data[12:qend] + body


def truncate(req: Request, wire: bytes) -> bytes:
    """A TC=1 reply with no records, so the client retries over TCP (RFC 1035 4.2.1, RFC 7766)."""
    qid, flags = _HH.unpack_from(wire)
    opt = opt_record(1232, req.do) if req.edns else b""
    return _H.pack(qid, flags | 0x0200, 1, 0, 0, 1 if opt else 0) + req.data[12:req.qend] + opt


def encode_name(name: str) -> bytes:
    """Dotted name -> uncompressed wire form."""
    if not name or name == ".":
        return b"\x00"
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) < 64:
            raise WireError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    """One resource record; the owner defaults to a pointer to the question name."""
    return owner + _RR.pack(rtype, C_IN, ttl, len(rdata)) + rdata


# --- upstream answers ----------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """An upstream answer kept as bytes, ready to be replayed to any client.

    ``body`` is every record after the question (OPT removed), exactly as the
    upstream sent it, so compression pointers stay valid behind any question of
    the same length.  ``ttl_offsets`` are positions of the TTL fields within
    ``body``; ``ttl`` is the lifetime of the whole entry in seconds.
    """

    rcode: int
    ad: bool
    an: int
    ns: int
    ar: int
    body: bytes
    ttl_offsets: tuple[int, ...]
    ttl: int
    cnames: tuple[str, ...] = ()
    stored: float = 0.0
    ede: int | None = None
    negative: bool = False
    expired_at: float = 0.0   # for a stale copy: when the real data expired (RFC 8767 window)
    # The body as patched for one age in seconds: a popular name is served many
    # times a second, and the TTL patch then happens once per second, not per query.
    _aged: tuple[int, bytes] = (0, b"")

    def render(self, req: Request, now: float, udp_cap: int = 1232,
               ede: int | None = None) -> bytes:
        """The answer for ``req``: its ID, flags and question, TTLs counted down to ``now``."""
        return self.render_for(req.data, req.qend, req.flags, req.edns, req.do, now,
                               udp_cap, ede)

    def render_for(self, data: bytes, qend: int, qflags: int, edns: bool, do: bool,
                   now: float, udp_cap: int = 1232, ede: int | None = None) -> bytes:
        """``render`` from the query's bytes and header fields (the edge fast path has no Request)."""
        body = self.body
        age = int(now - self.stored)
        if age > 0 and self.ttl_offsets:
            aged = self._aged
            if aged[0] == age:
                body = aged[1]
            else:
                body = _aged_body(body, self.ttl_offsets, age)
                self._aged = (age, body)
        ar = self.ar
        opt = b""
        if edns:
            code = ede if ede is not None else self.ede
            opt = _opt_cached(udp_cap, do, code)   # joined below: body is shared, never changed
            ar += 1
        # As reply_flags(): QR, RA, the client's RD and CD, AD when asked for (DO or AD).
        flags = 0x8080 | (qflags & 0x0110) | (self.rcode & 0xF)
        if self.ad and (do or qflags & 0x20):
            flags |= 0x0020
        # The header after the ID, from a table (a few distinct ones): one join, no pack.
        hkey = flags | self.an << 16 | self.ns << 32 | ar << 48
        head = _HEADS.get(hkey)
        if head is None:
            if len(_HEADS) >= MAX_HEADS:
                _HEADS.clear()
            head = _HEADS[hkey] = _H.pack(0, flags, 1, self.an, self.ns, ar)[2:]
        return b"".join((data[:2], head, data[12:qend], body, opt))

    def with_ttl(self, ttl: int, stored: float) -> Answer:
        """A copy whose TTL fields all read ``ttl`` as of ``stored`` (serve-stale, pinning)."""
        buf = bytearray(self.body)
        for off in self.ttl_offsets:
            _I.pack_into(buf, off, ttl)
        return Answer(self.rcode, self.ad, self.an, self.ns, self.ar, bytes(buf),
                      self.ttl_offsets, ttl, self.cnames, stored, self.ede, self.negative)


def _aged_body(body: bytes, offsets: tuple[int, ...], age: int) -> bytes:
    """``body`` with each TTL at ``offsets`` counted down by ``age`` seconds (not below 0)."""
    if COMPILED:
        # Native byte reads, slices, int.to_bytes and join: the struct calls below are
        # generic calls from compiled code (~650 vs ~150 ns for three TTLs); interpreted,
        # the struct calls are the faster of the two.
        parts: list[bytes] = []
        prev = 0
        for off in offsets:
            t = (body[off] << 24 | body[off + 1] << 16 | body[off + 2] << 8 | body[off + 3]) - age
            parts.append(body[prev:off])
            parts.append(t.to_bytes(4, "big") if t > 0 else b"\0\0\0\0")
            prev = off + 4
        parts.append(body[prev:])
        return b"".join(parts)
    buf = bytearray(body)
    for off in offsets:
        t = _I.unpack_from(buf, off)[0] - age
        _I.pack_into(buf, off, t if t > 0 else 0)
    return bytes(buf)


def question_matches(data: Buffer, req: Request) -> bool:
    """Does the answer's single question equal the request's (name case-insensitively)?"""
    qend = req.qend
    if len(data) < qend or data[4:6] != b"\x00\x01":
        return False
    return (data[12 : qend - 4].lower() == req.key[: qend - 16]
            and data[qend - 4 : qend] == req.data[qend - 4 : qend])


def _name_end(data: bytes, pos: int, n: int, known: dict[int, int]) -> int:
    """Validate the (possibly compressed) name at ``pos``; return its end (``check_name``).

    ``known`` remembers, for this one message, where valid names start: position ->
    (wire length << 7 | pointer jumps).  Answers point at the same few names over and
    over (the question, a zone name, an NS target), so each is walked once; a pointer to
    a known name adds its length and jumps to this name's and stops there, which gives
    the same verdict as walking it again (255 octets, 64 jumps, backward pointers only).
    """
    start = pos
    total = 0            # label octets so far, without the final root byte
    jumps = 0
    end = -1
    # After a pointer, the name it points at must lie wholly before that pointer: a
    # target whose labels read forward past it (into later records) would spell a
    # different name once the message is cut or rebuilt, as a cached answer is.
    limit = n
    seen: list[tuple[int, int, int]] | None = None   # (pointer target, total, jumps) on the way
    while True:
        if pos >= limit:
            raise WireError("name runs past the end" if limit == n else
                            "pointer target runs past the pointer")
        ln = data[pos]
        if ln == 0:
            total += 1
            if end < 0:
                end = pos + 1
            break
        if ln & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise WireError("truncated pointer")
            target = ((ln & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > 64 or target >= pos:
                raise WireError("compression loop or forward pointer")
            v = known.get(target)
            if v is not None:
                total += v >> 7
                jumps += v & 127
                if total > 255 or jumps > 64:
                    raise WireError("bad label")
                break
            if seen is None:
                seen = []
            seen.append((target, total, jumps))
            limit = pos
            pos = target
            continue
        if ln > 63:
            raise WireError("extended label type")
        total += ln + 1
        if total > 254 or pos + 1 + ln > limit:
            raise WireError("bad label" if limit == n else "pointer target runs past the pointer")
        pos += 1 + ln
    known[start] = total << 7 | jumps
    if seen is not None:
        for target, t, j in seen:
            known[target] = (total - t) << 7 | (jumps - j)
    return end


def _rdata_names(data: bytes, rtype: int, rdata: int, end: int, known: dict[int, int]) -> None:
    """The names inside NS/CNAME/PTR/MX/SRV/SOA rdata are valid and fill it exactly."""
    if rtype == T_SOA:
        p = _name_end(data, _name_end(data, rdata, end, known), end, known) + 20
    else:
        p = _name_end(data, rdata + _RDATA_NAME_AT[rtype], end, known)
    if p != end:
        raise WireError("rdata length does not match its contents")


_NAME_RDATA = frozenset(_RDATA_NAME_AT) | {T_SOA}


def parse_answer(data: Buffer, req: Request, min_ttl: int, max_ttl: int,
                 negative_ttl: int, minimal: bool = False,
                 in_chain: tuple[set[bytes], frozenset[bytes]] | None = None) -> Answer:
    """Walk an upstream answer once: TTL offsets, CNAME chain, negative TTL; clamp TTLs.

    The caller has checked ID and question.  Every name is validated (pointers,
    lengths), so that what is cached replays safely to any client.  Records in the
    answer section that are neither the question name nor on its CNAME chain are
    removed (they would be cache poison), which is the one path that rebuilds the
    message.  A DNAME (RFC 6672) is on the chain when it maps a chain name to
    another chain name (the synthesized CNAME's target), or, with YXDOMAIN, when
    the substitution would be too long; its RRSIGs go with it.  Names are compared
    as wire names with ASCII-only case folding.  An OPT record and anything after
    it are left out of the body.

    ``in_chain`` (chain names, DNAME owners) is the chain as the rebuild worked it
    out over the whole answer section; given, the walk never rebuilds (no recursion).

    ``minimal``: a NOERROR answer whose answer section holds a record of the
    asked type ends there -- authority and additional are neither kept nor read
    (unbound's ``minimal-responses``).  Negative answers keep their SOA, and a
    CNAME chain that ends without the asked type keeps everything.
    """
    if type(data) is not bytes:
        # The body is kept as a slice of it and must be immutable: dnslib packs
        # bytearrays (the rebuild path), and render() appends to a copy of the body.
        data = bytes(data)
    n = len(data)
    if n < 12:
        raise WireError("shorter than a header")
    flags = data[2] << 8 | data[3]
    an = data[6] << 8 | data[7]
    ns_end = an + (data[8] << 8 | data[9])
    count = ns_end + (data[10] << 8 | data[11])
    rcode = flags & 0xF
    qtype = req.qtype
    base = pos = req.qend
    # The question (the client's, as every reply carries it) is a valid name.
    known = {12: (base - 16) << 7}
    # The chain: lower-cased wire names (``_wire_key``), the question's first.
    qwire = req.key[: base - 16]
    chain = set(in_chain[0]) if in_chain else {qwire}
    dnames = in_chain[1] if in_chain else frozenset()
    cnames: list[str] = []
    cname_at: dict[int, bytes] = {}  # where a CNAME target starts -> its wire name
    soa_ttl = None
    out_of_chain = False
    opt = False                      # an OPT was seen: it and what follows stay out
    has_answer = False
    offsets: list[int] = []          # TTL offsets (in the body) of the records kept
    ttls: list[int] = []
    counts = [0, 0, 0]
    end = base                       # end of the last record kept
    # Minimal responses: a positive answer ends with its answer section.
    stop = an if minimal and rcode == NOERROR else -1
    has_final = False
    for i in range(count):
        if i == stop and has_final:
            break
        section = 0 if i < an else (1 if i < ns_end else 2)
        # The owner name; the usual ones without a full walk.
        if pos + 1 >= n:
            raise WireError("truncated record")
        b = data[pos]
        owner = None
        if b == 0xC0 and data[pos + 1] == 12:
            owner = qwire
            pos += 2
        elif b == 0:
            owner = b"\x00"
            pos += 1
        elif section == 0:
            if b & 0xC0 == 0xC0:
                owner = cname_at.get((b & 0x3F) << 8 | data[pos + 1])
            name_end = _name_end(data, pos, n, known)
            if owner is None:
                owner = _wire_key(data, pos)
            pos = name_end
        else:
            pos = _name_end(data, pos, n, known)
        if pos + 10 > n:
            raise WireError("truncated record")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
        ttl_off = pos + 4
        rdata = pos + 10
        pos = rdata + rdlen
        if pos > n:
            raise WireError("truncated rdata")
        if rtype in _NAME_RDATA:
            _rdata_names(data, rtype, rdata, pos, known)
        if rtype == T_OPT:
            opt = True
            continue
        if section == 0:
            if owner not in chain and not (
                    owner in dnames and (rtype == T_DNAME or (
                        rtype == T_RRSIG and data[rdata : rdata + 2] == b"\x00\x27"))):
                out_of_chain = True
                continue
            if rtype == T_CNAME and rclass == C_IN:
                target = _wire_key(data, rdata)   # validated by _rdata_names
                chain.add(target)
                cnames.append(_dotted(data, rdata))
                cname_at[rdata] = target
            if not opt and (rtype in (qtype, T_CNAME) or qtype == T_ANY):
                has_answer = True
                if rtype == qtype or qtype == T_ANY:
                    has_final = True
        elif section == 1 and rtype == T_SOA and rdlen >= 22:
            minimum = _I.unpack_from(data, pos - 4)[0]
            soa_ttl = min(ttl if ttl <= 0x7FFFFFFF else 0, minimum)
        if not opt:
            counts[section] += 1
            offsets.append(ttl_off - base)
            ttls.append(ttl)
            end = pos
    if out_of_chain:
        if in_chain is not None:
            raise WireError("records off the answer chain after the rebuild")
        return _rebuild_in_chain(data, req, min_ttl, max_ttl, negative_ttl, minimal)
    body = data[base:end]
    negative = rcode == NXDOMAIN or (rcode == NOERROR and not has_answer)
    n_ans = counts[0] + counts[1]    # answer and authority: what the entry's TTL comes from
    if ttls and (min(ttls) < min_ttl or max(ttls) > max_ttl or max(ttls) > 0x7FFFFFFF
                 or (negative and soa_ttl is not None and counts[1])):
        buf = bytearray(body)
        lo, hi = counts[0], n_ans
        cap = min(soa_ttl, negative_ttl) if negative and soa_ttl is not None else None
        for j, t in enumerate(ttls):
            if t > 0x7FFFFFFF:   # the top bit set: treated as zero (RFC 2181 s8)
                t = 0
            if cap is not None and lo <= j < hi and t > cap:
                t = cap
            if t > max_ttl:
                t = max_ttl
            if t < min_ttl:
                t = min_ttl
            ttls[j] = t
            _I.pack_into(buf, offsets[j], t)
        body = bytes(buf)
    if negative:
        # No SOA, no negative TTL: not cached at all (RFC 2308 s5), whatever min_ttl says.
        ttl = 0 if soa_ttl is None else max(min(soa_ttl, negative_ttl, max_ttl), min_ttl)
    elif n_ans:
        ttl = min(ttls[:n_ans])
    else:
        ttl = min_ttl
    if counts[2] and ttl:
        # The additional section ages with the rest: the entry ends when its first
        # record would run out, so none is served with a TTL stuck at 0 (as unbound,
        # whose message TTL is the least of all its RRsets).
        ttl = min(ttl, min(ttls[n_ans:]))
    return Answer(rcode, bool(flags & 0x20), counts[0], counts[1], counts[2], body,
                  tuple(offsets), ttl, tuple(cnames), negative=negative)


# Where the names sit in rdata that may be compressed (RFC 1035, RFC 3597 s4): (octets
# before the first name, names); what follows the names is copied as it is.
_RDATA_NAMES = {T_NS: (0, 1), 3: (0, 1), 4: (0, 1), T_CNAME: (0, 1), T_SOA: (0, 2),
                7: (0, 1), 8: (0, 1), 9: (0, 1), T_PTR: (0, 1), 14: (0, 2), T_MX: (2, 1),
                17: (0, 2), 18: (2, 1), 21: (2, 1), T_SRV: (6, 1), 36: (2, 1), T_DNAME: (0, 1)}


def _records(data: bytes, pos: int, count: int) -> list[tuple[int, int, int, int]]:
    """(owner offset, type, rdata offset, rdata end) of ``count`` records (already validated)."""
    out = []
    n = len(data)
    for _ in range(count):
        start = pos
        pos = check_name(data, pos, n)
        rtype = data[pos] << 8 | data[pos + 1]
        rdata = pos + 10
        pos = rdata + (data[pos + 8] << 8 | data[pos + 9])
        out.append((start, rtype, rdata, pos))
    return out


def _chain_of(data: bytes, req: Request, recs: list[tuple[int, int, int, int]], rcode: int
              ) -> tuple[set[bytes], frozenset[bytes]]:
    """The chain over the whole answer section, whatever the order of its records:
    the question, CNAME targets from chain names, and the owners of DNAMEs that map a
    chain name to a chain name (or, with YXDOMAIN, to one too long to exist)."""
    chain = {req.key[: req.qend - 16]}
    cnames = [(_wire_key(data, o), _wire_key(data, r)) for o, t, r, _ in recs if t == T_CNAME]
    for _ in range(len(cnames)):      # each pass adds at least one link, or it is done
        before = len(chain)
        chain.update(target for owner, target in cnames if owner in chain)
        if len(chain) == before:
            break
    dnames = set()
    for o, t, r, _ in recs:
        if t != T_DNAME:
            continue
        owner, target = _wire_key(data, o), _wire_key(data, r)
        for name in chain:
            cut = _under(name, owner)
            if cut:
                synth = name[:cut] + target
                if synth in chain or (rcode == 6 and len(synth) > 255):   # 6: YXDOMAIN
                    dnames.add(owner)
                    break
    return chain, frozenset(dnames)


def _copy_record(data: bytes, start: int, rtype: int, rdata: int, end: int,
                 qwire: bytes) -> bytes:
    """One record with its owner and rdata names written out in full, so that it stands
    alone (pointers into records that were left out would dangle); an owner that is the
    question's name points at the question, which stays in place."""
    owner = _expand(data, start)
    if owner.lower() == qwire:
        owner = b"\xc0\x0c"
    fixed = data[check_name(data, start, len(data)) : rdata - 2]   # type, class, TTL
    layout = _RDATA_NAMES.get(rtype)
    if layout is None:
        body = data[rdata:end]
    else:
        skip, names = layout
        parts = [data[rdata : rdata + skip]]
        p = rdata + skip
        for _ in range(names):
            q = _name_end(data, p, end, {})
            parts.append(_expand(data, p))
            p = q
        parts.append(data[p:end])
        body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise WireError("rdata too long")
    return owner + fixed + struct.pack("!H", len(body)) + body


def _rebuild_in_chain(data: bytes, req: Request, min_ttl: int, max_ttl: int,
                      negative_ttl: int, minimal: bool = False) -> Answer:
    """Rare path: the chain worked out over the whole answer section, the message rebuilt
    without the records off it, then walked once more with that chain (never recursing).

    Records are copied with their names uncompressed, the client's question put in
    place; an OPT and what follows it are left out (as the walk does).
    """
    an = data[6] << 8 | data[7]
    ns_ar = (data[8] << 8 | data[9]) + (data[10] << 8 | data[11])
    recs = _records(data, req.qend, an + ns_ar)
    rcode = data[3] & 0xF
    chain, dnames = _chain_of(data, req, recs[:an], rcode)
    qwire = req.key[: req.qend - 16]
    kept: list[list[bytes]] = [[], [], []]
    dropped = False
    for i, (start, rtype, rdata, end) in enumerate(recs):
        if rtype == T_OPT:
            break
        if i < an:
            owner = _wire_key(data, start)
            if owner not in chain and not (owner in dnames and (
                    rtype == T_DNAME or (rtype == T_RRSIG and data[rdata : rdata + 2]
                                         == b"\x00\x27"))):
                dropped = True
                continue
        section = 0 if i < an else (1 if i < an + (data[8] << 8 | data[9]) else 2)
        kept[section].append(_copy_record(data, start, rtype, rdata, end, qwire))
    if dropped:
        data = (data[:4] + _HHHH.pack(1, *(len(k) for k in kept)) + req.data[12:req.qend]
                + b"".join(b"".join(k) for k in kept))
    return parse_answer(data, req, min_ttl, max_ttl, negative_ttl, minimal, (chain, dnames))


def parse_answer_nocheck(data: Buffer, req: Request) -> bytes:
    """Put the request's exact question back in a repacked message (dnslib may re-case it)."""
    data = bytes(data)
    qd_end_new = check_name(data, 12, len(data)) + 4
    return data[:12] + req.data[12:req.qend] + data[qd_end_new:]


def make_query(req: Request, qid: int, edns: bool = True, udp_size: int = 1232) -> bytes:
    """The upstream query for ``req``: fresh ID, RD (and CD as the client asked), lower-cased name."""
    flags = 0x0100 | (req.flags & 0x0010)
    ar = 1 if edns else 0
    q = _H.pack(qid, flags, 1, 0, 0, ar) + req.key[: req.qend - 12]
    if edns:
        q += opt_record(udp_size, req.do)
    return q

"""DNS rebinding protection: private, loopback and link-local addresses are removed
from forwarded answers for public names.

Why: a web page on attacker.example can make its name resolve to 192.168.1.1
(or 127.0.0.1, or 0.0.0.0) and then script the router or a local service
from the victim's browser.  Like unbound's ``private-address`` and CoreDNS's
``rebind``, the offending A/AAAA records are removed (the rest of the answer
stays; with none left it is NODATA).  Names in the LAN's own zones
(``allow_zones``, every forward zone, ``localhost``) keep their answers.

It has only an ``on_answer`` and sits between the cache and forward, so the
check runs once per upstream answer and the cache stores the cleaned answer;
cache hits cost nothing.
"""

from __future__ import annotations

import logging
import struct

from ..config import Config
from ..names import Zones
from ..reply import Reply
from ..stats import Stats
from ..wire import (
    EDE_BLOCKED,
    NOERROR,
    SERVFAIL,
    T_A,
    T_AAAA,
    Answer,
    Request,
    WireError,
    build_reply,
    parse_answer,
    parse_answer_nocheck,
)

log = logging.getLogger("hushdns")

_H = struct.Struct("!HHHHHH")


def private_v4(a: bytes) -> bool:
    """0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16."""
    o0, o1 = a[0], a[1]
    return (o0 in (0, 10, 127) or (o0 == 100 and 64 <= o1 < 128)
            or (o0 == 169 and o1 == 254) or (o0 == 172 and 16 <= o1 < 32)
            or (o0 == 192 and o1 == 168))


def private_v6(a: bytes) -> bool:
    """::, ::1, fc00::/7 (ULA), fe80::/10 (link-local), ::ffff:0:0/96 (IPv4-mapped)."""
    if a[:10] == b"\x00" * 10:
        tail = a[10:]
        return tail[:2] == b"\xff\xff" or tail in (b"\x00" * 6, b"\x00" * 5 + b"\x01")
    return (a[0] & 0xFE) == 0xFC or (a[0] == 0xFE and (a[1] & 0xC0) == 0x80)


def _private_records(answer: Answer) -> list[int]:
    """TTL offsets (record ids) of A/AAAA records with a private address, read straight from the body."""
    body = answer.body
    out = []
    for off in answer.ttl_offsets:
        rtype = body[off - 4] << 8 | body[off - 3]
        if rtype == T_A:
            rdata = body[off + 6:off + 10]
            if len(rdata) == 4 and private_v4(rdata):
                out.append(off)
        elif rtype == T_AAAA:
            rdata = body[off + 6:off + 22]
            if len(rdata) == 16 and private_v6(rdata):
                out.append(off)
    return out


class Rebind:
    def __init__(self, config: Config, stats: Stats) -> None:
        self.stats = stats
        self.cache_cfg = config.cache
        self.allow = Zones(frozenset(config.rebind_protection.allow_zones) | frozenset(
            config.forward_zones) | {"localhost"})

    def allowed(self, qname: str) -> bool:
        """Is the name in (or under) one of the LAN's own zones?"""
        return self.allow.find(qname) is not None

    def on_answer(self, req: Request, resp: Reply) -> Reply:
        answer = resp.answer
        if answer is None or answer.rcode != NOERROR or not answer.ttl_offsets:
            return resp
        bad = _private_records(answer)
        if not bad or self.allowed(req.qname):
            return resp
        try:
            resp.answer = self._strip(req, answer)
        except WireError:
            # Cannot take the private addresses out: do not pass them on either.
            return Reply("servfail", wire=build_reply(req, SERVFAIL))
        self.stats.rebind_removed += len(bad)
        log.info("rebind protection: removed %d private address(es) from the answer for %s",
                 len(bad), req.qname)
        return resp

    def _strip(self, req: Request, answer: Answer) -> Answer:
        """Rare path: rebuild the message without the private A/AAAA records."""
        import dnslib

        # AD cleared: the upstream vouched for the answer it sent, not for this one.
        flags = 0x8180 | answer.rcode
        wire = (_H.pack(0, flags, 1, answer.an, answer.ns, answer.ar)
                + req.data[12:req.qend] + answer.body)
        try:
            msg = dnslib.DNSRecord.parse(wire)
        except Exception as exc:  # dnslib raises several types on bad input
            raise WireError(f"unparseable answer: {exc}") from None

        def keep(r: dnslib.RR) -> bool:
            if r.rtype == T_A:
                return not private_v4(bytes(r.rdata.data))
            if r.rtype == T_AAAA:
                return not private_v6(bytes(r.rdata.data))
            return True

        msg.rr = [r for r in msg.rr if keep(r)]
        msg.ar = [r for r in msg.ar if keep(r)]
        msg.questions = msg.questions[:1]
        clean = parse_answer_nocheck(msg.pack(), req)
        c = self.cache_cfg
        out = parse_answer(clean, req, c.min_ttl, c.max_ttl, c.negative_ttl)
        out.ede = EDE_BLOCKED
        return out

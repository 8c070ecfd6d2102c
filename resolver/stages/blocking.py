"""Blocking: names on a block list (and forwarded answers that CNAME into one) get a block answer.

Why answers come from templates: a blocked query is the commonest answer a
telemetry blocker gives, so its reply is the client's header and question plus
record bytes built once per query type.  Allow lists win over block lists;
the client's group decides which lists apply (masks from ClientInfo).
"""

from __future__ import annotations

import ipaddress

from ..config import Blocking as BlockingConfig
from ..lists.index import Match
from ..lists.loader import Blocklists
from ..response import Response
from ..stats import Stats
from ..wire import (
    EDE_BLOCKED,
    NOERROR,
    NXDOMAIN,
    REFUSED,
    T_A,
    T_AAAA,
    T_SOA,
    Request,
    build_reply,
    encode_name,
    opt_record,
    rr,
)
from . import Stage

_SOA_MNAME = encode_name("ns.hushdns.invalid")
_SOA_RNAME = encode_name("blocked.hushdns.invalid")


class Blocking:
    def __init__(self, next: Stage, lists: Blocklists, cfg: BlockingConfig, stats: Stats,
                 udp_size: int = 1232) -> None:
        self.next = next
        self.index = lists.index
        self.by_bit = lists.by_bit
        self.tracked = lists.tracked
        self.stats = stats
        self.mode = cfg.mode
        self.ttl = cfg.ttl
        self.v4 = [ipaddress.ip_address(a).packed for a in cfg.sinkhole if ":" not in a]
        self.v6 = [ipaddress.ip_address(a).packed for a in cfg.sinkhole if ":" in a]
        self.templates: dict[int, tuple[int, bytes, int, int]] = {}
        self.opt = {do: opt_record(udp_size, do, ede=EDE_BLOCKED) for do in (False, True)}

    async def resolve(self, req: Request) -> Response:
        info = req.info
        if info.block and not req.unlisted:
            hit = self.index.match(req.qname, info.block, info.allow)
            if hit is not None:
                return self.blocked(req, hit)
        resp = await self.next.resolve(req)
        answer = resp.answer
        if answer is not None and answer.cnames and info.block:
            # CNAME cloaking: a tracker hidden behind a first-party name.
            for target in answer.cnames:
                hit = self.index.match(target, info.block, info.allow)
                if hit is not None:
                    return self.blocked(req, hit)
        return resp

    def blocked(self, req: Request, hit: Match) -> Response:
        list_name = self.by_bit[hit.bit]
        self.stats.block(req.info.label, list_name,
                         hit.rule if hit.bit & self.tracked and not hit.regex else None)
        rcode, body, an, ns = self.template(req.qtype, req.data[12])
        wire = build_reply(req, rcode, body, an, ns, opt=self.opt[req.do])
        return Response("blocked", wire=wire, list=list_name, rule=hit.rule)

    def template(self, qtype: int, first: int = 0) -> tuple[int, bytes, int, int]:
        """(rcode, record bytes, answer count, authority count) of the block answer, built
        once per type and length of the question's first label (``data[12]``), which is
        where the SOA's owner, the blocked name's parent, starts."""
        key = qtype | first << 16
        t = self.templates.get(key)
        if t is None:
            t = self.templates[key] = self._template(qtype, first)
        return t

    def _template(self, qtype: int, first: int) -> tuple[int, bytes, int, int]:
        if self.mode == "refused":
            return REFUSED, b"", 0, 0
        if self.mode == "nxdomain":
            return NXDOMAIN, self._soa(first), 0, 1
        addrs: list[bytes] = []
        if self.mode == "null":
            addrs = [b"\x00" * 4] if qtype == T_A else [b"\x00" * 16] if qtype == T_AAAA else []
        elif self.mode == "custom":
            addrs = self.v4 if qtype == T_A else self.v6 if qtype == T_AAAA else []
        if addrs:
            body = b"".join(rr(qtype, self.ttl, a) for a in addrs)
            return NOERROR, body, len(addrs), 0
        return NOERROR, self._soa(first), 0, 1   # NODATA, negative-cacheable (RFC 2308)

    def _soa(self, first: int) -> bytes:
        """An SOA for negative caching: the block TTL is both its TTL and its MINIMUM.

        Owned by a synthetic zone apex, the blocked name's parent (a pointer past the
        question's first label; the root for a one-label name): an NXDOMAIN whose SOA sits
        at the very name it says does not exist contradicts itself (RFC 2308 s3: the SOA
        is the zone's, above the name).
        """
        t = self.ttl
        rdata = _SOA_MNAME + _SOA_RNAME + b"".join(
            v.to_bytes(4, "big") for v in (1, 3600, 600, 86400, t))
        return rr(T_SOA, t, rdata, owner=(0xC000 | (13 + first)).to_bytes(2, "big"))

"""Blocking: names on a block list (and forwarded answers that CNAME into one) get a block answer.

Why answers come from templates: a blocked query is the commonest answer a
telemetry blocker gives, so its reply is the client's header and question plus
record bytes built once per query type.  Allow lists win over block lists;
the client's group decides which lists apply (masks from ClientInfo).

``on_query`` blocks listed names; ``on_answer`` (CNAME cloaking) blocks answers
from the cache or upstream whose CNAME chain leads into a list.  Memo-safe:
the verdict depends on the question, the client's group (its policy key) and
the lists, which live as long as the pipeline; a name blocked through a
CNAME is not remembered (it depends on a cache entry too).  A household's
temporary allow (``ClientInfo.allow_names``, part of the policy key too) wins
over every list for that client and the names below it.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from ..config import Blocking as BlockingConfig
from ..lists.index import DomainIndex, Match
from ..lists.loader import Blocklists
from ..memo import Listed
from ..names import in_zones
from ..reply import Reply
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
    encode_name,
    opt_record,
    rr,
)

_H = struct.Struct("!HHHHHH")
_SOA_MNAME = encode_name("ns.hushdns.invalid")
_SOA_RNAME = encode_name("blocked.hushdns.invalid")
MAX_REPLY_PARTS: Final = 4096   # Blocking.replies: cleared when full (question types are the client's)


class Blocking:
    per_query = False

    def __init__(self, lists: Blocklists, cfg: BlockingConfig, stats: Stats,
                 udp_size: int = 1232) -> None:
        self.lists = lists
        # Typed, so that the compiled build calls DomainIndex.match natively (no bound method).
        self.index: DomainIndex = lists.index
        self.by_bit = lists.by_bit
        self.tracked = lists.tracked
        self.stats = stats
        self.mode = cfg.mode
        self.ttl = cfg.ttl
        self.v4 = [ipaddress.ip_address(a).packed for a in cfg.sinkhole if ":" not in a]
        self.v6 = [ipaddress.ip_address(a).packed for a in cfg.sinkhole if ":" in a]
        self.templates: dict[int, tuple[int, bytes, int, int]] = {}
        # What ``blocked`` puts around the client's ID and question: see there.
        self.replies: dict[int, tuple[bytes, bytes]] = {}
        # One Keep per list (by bit, with the list's name: per_bit; by domain for a tracked
        # list: keeps), shared by the memo's entries.
        self.keeps: dict[str, Listed] = {}
        self.per_bit: dict[int, tuple[str, Listed]] = {}
        self.opt = {do: opt_record(udp_size, do, ede=EDE_BLOCKED) for do in (False, True)}
        mode = cfg.mode if cfg.mode != "custom" else "sinkhole " + ", ".join(cfg.sinkhole)
        self.describe = f"answer: {mode}, ttl {cfg.ttl}"

    def on_query(self, q: Request) -> Reply | None:
        info = q.info
        if info.block:
            hit = self.index.match(q.qname, info.block, info.allow)
            if hit is not None and not (info.allow_names and in_zones(q.qname, info.allow_names)):
                return self.blocked(q, hit, True)
        return None

    def on_answer(self, q: Request, reply: Reply) -> Reply:
        answer = reply.answer
        if answer is not None and answer.cnames:
            info = q.info
            if info.block and not (info.allow_names and in_zones(q.qname, info.allow_names)):
                # CNAME cloaking: a tracker hidden behind a first-party name.
                for target in answer.cnames:
                    hit = self.index.match(target, info.block, info.allow)
                    if hit is not None:
                        return self.blocked(q, hit, False)
        return reply

    def explain(self, q: Request) -> Reply | None:
        """The allow rule that let a listed name through, if any."""
        info = q.info
        m = self.lists.index.explain(q.qname, info.block, info.allow)
        if m is None or not m.allow:
            return None
        return Reply("allowed", list=self.by_bit[m.bit], rule=f"/{m.rule}/" if m.regex else m.rule)

    def blocked(self, q: Request, hit: Match, remember: bool) -> Reply:
        bit = hit.bit
        if bit & self.tracked and not hit.regex:   # counted per domain too
            list_name = self.by_bit[bit]
            rule = hit.rule
            keep = self.keeps.get(rule) if remember else None
            if keep is None and remember:
                keep = self.keeps[rule] = Listed(self.stats, list_name, rule)
            self.stats.block(q.info.label, list_name, rule)
        else:
            # The common case: one Keep and one name per list, built on its first block.
            per = self.per_bit.get(bit)
            if per is None:
                list_name = self.by_bit[bit]
                per = self.per_bit[bit] = (list_name, Listed(self.stats, list_name, None))
            list_name, keep = per
            if not remember:
                keep = None
            counts = self.stats.blocked   # Stats.block, inlined (no per-domain count)
            key = (q.info.label, list_name)
            counts[key] = counts.get(key, 0) + 1
        data = q.data
        # Everything but the ID and the question, per type, length of the first label
        # (where the SOA's owner, the parent, starts), the client's RD and CD bits, EDNS
        # and DO: what varies per query is then three slices joined.
        edns = q.edns
        hkey = q.qtype | data[12] << 16 | (q.flags & 0x0110) << 22 | edns << 35 | q.do << 36
        parts = self.replies.get(hkey)
        if parts is None:
            parts = self._reply_parts(q, data[12])
            if len(self.replies) >= MAX_REPLY_PARTS:   # any qtype: bounded, like an attack
                self.replies.clear()
            self.replies[hkey] = parts
        head, body = parts
        wire = data[:2] + head + data[12:q.qend] + body
        return Reply("blocked", wire, None, list_name,
                     f"/{hit.rule}/" if hit.regex else hit.rule, None, self.describe, keep)

    def _reply_parts(self, q: Request, first: int) -> tuple[bytes, bytes]:
        """As reply_for(): the header after the ID (flags from the client's RD and CD) and
        the records after the question, for ``q``'s type, first label length and EDNS."""
        rcode, body, an, ns = self.template(q.qtype, first)
        if q.edns:
            body += self.opt[q.do]
        head = _H.pack(0, 0x8080 | (q.flags & 0x0110) | rcode, 1, an, ns, 1 if q.edns else 0)
        return head[2:], body

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

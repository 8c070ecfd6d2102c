"""The UDP fast path: blocked answers and cache hits for plain queries, straight from the bytes.

Why it exists: a LAN resolver's commonest answers are "blocked" and "cached",
and each of them costs the chain a Request, a coroutine per stage and a
Response: several times the work of the answer itself.  This function does
what the chain's first stages (access, rate limit, blocking, cache) would do,
for the queries where that is simple, as flat code over the datagram's bytes.

It is an accelerator, not a second resolver: it only takes the shape of query
that almost every stub sends (one IN question, at most one OPT, nothing else)
from a client that is already known, and only answers that the chain would
give byte for byte (``tests/test_fastpath.py`` checks that on random queries).
Everything else returns None and the chain answers it: malformed input and
its validation, refusals, ANY, misses, truncation, serve-stale, SERVFAIL,
CNAME cloaking hits.  It is built from the assembled chain and lets the chain
take every query when the chain holds a stage it does not know.

A repeated question (the same bytes after the ID, from a client with the
same lists) is answered from the reply given last time, after checking that
what it depends on still holds; counters move exactly as for a first answer.
"""

from __future__ import annotations

from time import monotonic, perf_counter
from typing import Any

from .clients import ClientTable
from .querylog import device_of
from .stages.access import Access
from .stages.blocking import Blocking
from .stages.cache import Cache
from .stages.ratelimit import RateLimit
from .stats import Stats
from .wire import SERVFAIL, T_OPT, Request, qtype_label, reply_for

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"

# Cache-key suffix by (DO, CD), as wire._KEY_FLAGS.
_KEY_FLAGS = (b"\x00", b"\x01", b"\x02", b"\x03")

MAX_REPLIES = 16_384      # remembered replies; the table is cleared when full
_BLOCKED, _CACHED = "blocked", "cached"


class FastPath:
    """``answer(data, addr)`` -> the reply when it can be given here; a miss's Request; else None."""

    def __init__(self, head: Any, clients: ClientTable, stats: Stats, udp_cap: int,
                 memo: bool = True) -> None:
        self.clients = clients.cache     # address -> ClientInfo, filled by the chain's edge
        self.stats = stats
        self.udp_cap = udp_cap
        self.ratelimit: RateLimit | None = None
        self.blocking: Blocking | None = None
        self.entries: Any = None
        # Replies by the query's bytes after its ID, with what they depend on: the
        # group's list masks; for a cache hit, the entry and its age in seconds.
        # Devices repeat the same questions, so most queries end at this lookup.
        # A new FastPath (and so an empty table) comes with every new chain.
        self.replies: dict[bytes, tuple] = {}
        self.memo = memo   # server.reply_memo: false never remembers (benchmarks, A/B)
        # The query log's record(), set by the server when the log is on.
        self.record: Any = None
        self.enabled = self._adopt(head)

    def _adopt(self, stage: Any) -> bool:
        """Take the stages the fast path stands in for, in chain order, up to the cache."""
        if not isinstance(stage, Access):
            return False
        stage = stage.next
        if isinstance(stage, RateLimit):
            self.ratelimit, stage = stage, stage.next
        if isinstance(stage, Blocking):
            self.blocking, stage = stage, stage.next
        if not isinstance(stage, Cache):
            return False
        self.entries = stage.entries
        return True

    def answer(self, data: bytes, addr: Any) -> bytes | Request | None:
        """The reply to ``data`` from ``addr``, counted; None leaves the query to the chain.

        A cache miss comes back as the parsed ``Request`` for the chain to forward,
        so the question is not read twice.

        Nothing is counted or changed before the answer is certain, so a None
        costs the chain nothing twice.
        """
        t0 = perf_counter()
        info = self.clients.get(addr[0])
        if info is None or not info.allowed:
            return None
        tail = data[2:]
        seen = self.replies.get(tail)
        if seen is not None and seen[1] == info.block and seen[2] == info.allow:
            wire = self._again(seen, info, addr[0], t0)
            if wire is not None:
                return data[:2] + wire
        # A standard query (QR=0, opcode 0); one question, no answer or
        # authority records, at most one additional (the OPT).
        # RD=0 is the chain's (REFUSED, or the cache only for access.allow_snoop).
        if len(data) < 17 or data[2] & 0xF9 != 1 or data[4:10] != _ONE_QUESTION or data[10]:
            return None
        n = len(data)
        i = 12
        labels = []
        while True:            # the question name: uncompressed labels
            ln = data[i]
            if ln == 0:
                break
            if ln > 63:
                return None
            labels.append(data[i + 1:i + 1 + ln])
            i += ln + 1
            if i >= n:
                return None
        qend = i + 5
        if not labels or i > 266 or qend > n or data[i + 3] != 0 or data[i + 4] != 1:
            return None        # the root, a name over 255 octets, a class other than IN
        qtype = data[i + 1] << 8 | data[i + 2]
        if qtype == 0 or qtype == T_OPT or 128 <= qtype <= 255:
            return None        # meta types, ANY, zone transfers: the chain's decisions
        edns = do = False
        udp_size = 512
        if data[11]:           # one additional record: it must be an OPT at the root, version 0
            if data[11] != 1 or qend + 11 > n or data[qend] != 0 or data[qend + 1] != 0 \
                    or data[qend + 2] != T_OPT or data[qend + 6] != 0 \
                    or qend + 11 + (data[qend + 9] << 8 | data[qend + 10]) != n:
                return None
            edns = True
            udp_size = data[qend + 3] << 8 | data[qend + 4]
            do = data[qend + 7] & 0x80 != 0
        elif qend != n:
            return None
        qflags = data[2] << 8 | data[3]
        stats = self.stats

        qname = b".".join(labels).lower().decode("latin-1")   # as wire.parse_query
        blocking = self.blocking
        if blocking is not None and info.block:
            hit = blocking.index.match(qname, info.block, info.allow)
            if hit is not None:
                rl = self.ratelimit
                if rl is not None and not rl.take(addr[0], monotonic()):
                    return None
                rcode, body, an, ns = blocking.template(qtype, data[12])
                wire = reply_for(data, qend, qflags, rcode, body, an, ns,
                                 blocking.opt[do] if edns else None)
                list_name = blocking.by_bit[hit.bit]
                rule = hit.rule if hit.bit & blocking.tracked and not hit.regex else None
                stats.block(info.label, list_name, rule)
                self._remember(tail, (_BLOCKED, info.block, info.allow, wire[2:], qtype,
                                      list_name, rule, qname, hit.rule))
                took = perf_counter() - t0
                stats.query(info.label, qtype_label(qtype), "blocked", took)
                if self.record is not None:
                    self.record(device_of(info), addr[0], qname, qtype, "blocked", list_name,
                                hit.rule, rcode, None, took)
                return wire

        key = data[12:i + 1].lower() + data[i + 1:qend] + _KEY_FLAGS[do | ((qflags >> 3) & 2)]
        entries = self.entries
        entry = entries.get(key)
        if entry is None:
            # A miss: the chain forwards it.  Hand it the question as read here
            # (what parse_query would build), and that no list blocks it.
            req = Request(data)
            req.qid = data[0] << 8 | data[1]
            req.flags = qflags
            req.qend = qend
            req.qtype = qtype
            req.qclass = 1
            req.qname = qname
            req.key = key
            req.edns = edns
            req.udp_size = udp_size
            req.do = do
            req.unlisted = blocking is not None and info.block != 0
            return req
        if entry.rcode == SERVFAIL:
            return None
        now = monotonic()
        if entry.stored + entry.ttl <= now:
            return None        # expired: refresh or serve-stale, in the chain
        if entry.cnames and blocking is not None and info.block:
            match = blocking.index.match
            for target in entry.cnames:
                if match(target, info.block, info.allow) is not None:
                    return None   # CNAME cloaking: the chain blocks it and says why
        cap = self.udp_cap
        wire = entry.render_for(data, qend, qflags, edns, do, now, cap)
        if len(wire) > (min(max(udp_size, 512), cap) if edns else 512):
            return None        # truncation, in the chain
        rl = self.ratelimit
        if rl is not None and not rl.take(addr[0], now):
            return None
        entries.move_to_end(key)
        stats.cache_hits += 1
        self._remember(tail, (_CACHED, info.block, info.allow, wire[2:], qtype,
                              entry, key, int(now - entry.stored), qname))
        took = perf_counter() - t0
        stats.query(info.label, qtype_label(qtype), "cached", took)
        if self.record is not None:
            self.record(device_of(info), addr[0], qname, qtype, "cached", None, None,
                        entry.rcode, None, took)
        return wire

    def _again(self, seen: tuple, info: Any, client: str, t0: float) -> bytes | None:
        """The remembered reply (without its ID) to the same bytes, if it still holds; counted."""
        stats = self.stats
        label = info.label
        qtype = seen[4]
        if seen[0] is _BLOCKED:
            rl = self.ratelimit
            if rl is not None and not rl.take(client, monotonic()):
                return None
            stats.block(label, seen[5], seen[6])
            took = perf_counter() - t0
            stats.query(label, qtype_label(qtype), "blocked", took)
            if self.record is not None:
                self.record(device_of(info), client, seen[7], qtype, "blocked", seen[5], seen[8],
                            seen[3][1] & 15, None, took)
            return seen[3]
        # A cache hit: the same entry, still fresh, still in the cache, the same age in seconds.
        entry = seen[5]
        now = monotonic()
        if (entry.stored + entry.ttl <= now or int(now - entry.stored) != seen[7]
                or self.entries.get(seen[6]) is not entry):
            return None
        rl = self.ratelimit
        if rl is not None and not rl.take(client, now):
            return None
        self.entries.move_to_end(seen[6])
        stats.cache_hits += 1
        took = perf_counter() - t0
        stats.query(label, qtype_label(qtype), "cached", took)
        if self.record is not None:
            self.record(device_of(info), client, seen[8], qtype, "cached", None, None,
                        seen[3][1] & 15, None, took)
        return seen[3]

    def _remember(self, tail: bytes, reply: tuple) -> None:
        if not self.memo:
            return
        replies = self.replies
        if len(replies) >= MAX_REPLIES:
            replies.clear()
        replies[tail] = reply

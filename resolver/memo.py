"""The reply memo: rendered replies given again to the same question, at the edge, before parsing.

Why: devices repeat the same few questions all day, and for a repeat the whole
pipeline (parse, stages, render, truncation check) would only rebuild the bytes
it gave last time.  The memo keeps those bytes, keyed by everything after the
query's ID and by the client's policy key (``ClientInfo.policy``: its group and
whether it may ask at all), and gives them back with the new ID.

It knows no stage.  What a remembered reply depends on is declared by the
pipeline when the reply is made: the stage that answered puts a ``Keep`` in
``Reply.keep`` (``Listed``: the lists of this pipeline, so the life of the memo;
``Cached``: one cache entry, still there, still fresh, and the same age in whole
seconds, so the TTLs read the same: a ``CacheHit`` on the reply becomes a ``Cached``
when the memo remembers it).  Stages that must see every query
(``per_query``, e.g. the rate limit) are run again for every memo answer, with a
``Request`` rebuilt from the remembered one; if one of them answers, that answer
goes through the pipeline like any other.  Every counter the first answer moved
moves again (``Keep.replay`` and ``Stats.query``), and the query log gets its row.  A new memo, empty, comes
with every new pipeline; only UDP replies are remembered, and only from the second
time the same bytes are answered (a doorkeeper set of hashes notes the first), so
first-sight traffic does not pay for filling it; and when the replies it remembered
were rarely given again (a wide set of names asked at full rate), it remembers only a
fixed eighth of the questions (the other seven are not even noted in the doorkeeper),
until remembering pays again (checked every ``WINDOW`` questions offered).
"""

from __future__ import annotations

from collections import OrderedDict
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Final

from .counting import count_query
from .stats import Stats
from .wire import QTYPE_NAMES, Answer, Request

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .reply import Reply

MAX_REPLIES: Final = 16_384      # remembered replies; the memo is cleared when full
# Every WINDOW questions offered to ``store`` (first sights included), the memo asks
# whether remembering paid: fewer answers than admitted questions / WORTH (first-sight
# names, a wide set of names at full rate) and it admits, until the next window, only the
# questions whose hash has its low SAMPLE bits clear (one in eight); more, and it admits
# every question again.  While sampling, every answer comes from the sampled eighth, so
# answers per admitted question still tell what remembering everything would give.
WINDOW: Final = MAX_REPLIES
WORTH: Final = 2
SAMPLE: Final = 7
DOOR_SIZE: Final = 4 * MAX_REPLIES   # questions seen once (their hashes), before any is remembered
_QTYPES: Final = QTYPE_NAMES     # as wire.qtype_label, inlined


class Keep:
    """Why a reply may be given again: checked before each memo answer, counted after."""

    __slots__ = ()

    def hold(self, q: Request, reply: Reply, now: float) -> Keep:
        """The reply is remembered, as rendered at ``now`` (0.0: not rendered, sent as built):
        the Keep to check for it from now on (this one, unless it depends on when)."""
        return self

    def valid(self, now: float) -> bool:
        return True

    def replay(self, label: str) -> None:
        """Move again the counters the answering stage moved for the first answer."""


class Listed(Keep):
    """A block answer: valid for the lists of this pipeline (so as long as the memo)."""

    __slots__ = ("stats", "list", "rule")

    def __init__(self, stats: Stats, list_name: str, rule: str | None) -> None:
        self.stats, self.list, self.rule = stats, list_name, rule

    def replay(self, label: str) -> None:
        self.stats.block(label, self.list, self.rule)


class CacheHit(Keep):
    """What a cache hit's reply carries: one per cache, no allocation per hit.  Only the
    replies the memo remembers (a few, while it samples) get their own ``Cached``."""

    __slots__ = ("stats", "entries")

    def __init__(self, stats: Stats, entries: OrderedDict[bytes, Answer]) -> None:
        self.stats, self.entries = stats, entries

    def hold(self, q: Request, reply: Reply, now: float) -> Keep:
        entry = reply.answer
        return Cached(self.stats, self.entries, q.key, entry,  # type: ignore[arg-type]
                      int((now or monotonic()) - entry.stored))  # type: ignore[union-attr]


class Cached(Keep):
    """A remembered cache hit: valid while that entry is in the table, fresh, and of the same
    age in whole seconds as when its reply was rendered (so the TTLs read the same)."""

    __slots__ = ("stats", "entries", "key", "entry", "age")

    def __init__(self, stats: Stats, entries: OrderedDict[bytes, Answer], key: bytes,
                 entry: Answer, age: int) -> None:
        self.stats, self.entries, self.key, self.entry, self.age = stats, entries, key, entry, age

    def valid(self, now: float) -> bool:
        entry = self.entry
        return (entry.stored + entry.ttl > now and int(now - entry.stored) == self.age
                and self.entries.get(self.key) is entry)

    def replay(self, label: str) -> None:
        self.entries.move_to_end(self.key)
        self.stats.cache_hits += 1


class ReplyMemo:
    """``answer(data, addr, sink)`` at the UDP edge; ``store`` from ``Pipeline.finish``."""

    def __init__(self, pipeline: Pipeline, clients: dict[str, Any], stats: Stats) -> None:
        self.pipeline = pipeline
        self.clients = clients   # address -> ClientInfo, filled by the edge on a client's first query
        self.stats = stats
        self.tables: dict[str, dict[bytes, tuple]] = {}
        self.size = 0
        self.door: set[int] = set()
        self.on_miss: Any = None
        self.hits = 0          # answers given in this window
        self.seen = 0          # questions offered to store in this window
        self.offered = 0       # ... of those, the ones admitted (all, or the sampled eighth)
        self.kept = 0          # ... and those remembered
        self.admit = 0         # 0: remember every repeated question; SAMPLE: one in eight
        # Answers and stores of earlier generations, and of the memos this one replaces
        # (a reload): the metrics are counters, they do not start again.
        self.answered, self.stored = stats.memo_counts()
        stats.memo_counts = self.counts
        self.tap: Any = None   # the dnstap writer: memo answers are logged like the pipeline's
        self._missed_data = b""   # the last datagram not answered here, and its key
        self._missed_tail = b""

    def answer(self, data: bytes, addr: Any, sink: Any) -> bytes | bool | None:
        """The reply bytes to send; False when the pipeline took the query (and answered
        through ``sink``); None when nothing remembered holds and there is no ``on_miss``
        (nothing was counted).

        ``on_miss(data, addr, sink, t0, info)``, when set (the server's UDP handler), takes
        a query the memo cannot answer, so the client is looked up and the clock read once.
        """
        t0 = perf_counter()
        info = self.clients.get(addr[0])
        if info is not None:
            table = self.tables.get(info.policy)
            if table is not None:
                tail = data[2:]
                admit = self.admit
                # While sampling, a question outside the admitted eighth is not looked up
                # (its hash is the one ``store`` needs anyway): one random read fewer.
                seen = None if admit and hash(tail) & admit else table.get(tail)
                if seen is None:
                    # ``store`` reuses the key (and its computed hash) if this query is
                    # answered before the next datagram is looked at.
                    self._missed_data = data
                    self._missed_tail = tail
                else:
                    tail, qlabel, result, keep, gates, q, why = seen
                    if keep.valid(monotonic()):
                        if gates:
                            q = q.again(data, addr, info, sink, t0)
                            for hook, pos in gates:
                                r = hook(q)
                                if r is not None:
                                    self.pipeline.answered(q, r, pos)
                                    return False
                        keep.replay(info.label)
                        self.hits += 1
                        took = perf_counter() - t0
                        count_query(self.stats, info.label, qlabel, result, took)
                        record = self.pipeline.record
                        if record is not None:   # the query log: why is the row's "what"
                            record((t0, took, info.device or info.label, addr[0], why))
                        wire = data[:2] + tail
                        tap = self.tap
                        if tap is not None:   # dnstap, with the verdict of the reply it repeats
                            tap.hit(data, addr, wire, result, keep, why[3], t0)
                        return wire
        on_miss = self.on_miss
        if on_miss is None:
            return None
        on_miss(data, addr, sink, t0, info)
        return False

    def counts(self) -> tuple[int, int]:
        """(answers given, replies remembered) since this memo started: the metrics."""
        return self.answered + self.hits, self.stored + self.size

    def _judge(self) -> None:
        """End of a window: did remembering pay?  Few answers per store: sample the next one."""
        self.admit = SAMPLE if self.hits * WORTH < self.offered else 0
        self.answered += self.hits
        self.hits = self.offered = self.kept = self.seen = 0

    def store(self, q: Request, wire: bytes, reply: Reply, gates: tuple, now: float) -> None:
        """Remember ``wire`` (as sent to ``q``, rendered at ``now`` if it was rendered)."""
        data = q.data
        tail = self._missed_tail if self._missed_data is data else data[2:]
        h = hash(tail)   # computed already by the lookup: bytes keep their hash
        seen = self.seen = self.seen + 1
        if seen >= WINDOW:
            self._judge()
        if h & self.admit:
            return   # sampling: not one of the questions it remembers (nor notes)
        self.offered += 1
        door = self.door
        if h not in door:
            # First sight: only noted.  A question seen once is rarely asked again soon
            # (first-sight subdomains, a wide cache), and remembering it costs more than
            # the pipeline's answer; the second time it is remembered.
            if len(door) >= DOOR_SIZE:
                door.clear()
            door.add(h)
            return
        self.kept += 1
        keep = reply.keep.hold(q, reply, now)
        table = self.tables.get(q.info.policy)
        if table is None:
            table = self.tables[q.info.policy] = {}
        size = self.size + 1   # counts replacements too: cleared a little early, never late
        if size > MAX_REPLIES:
            for t in self.tables.values():
                t.clear()
            self.stored += self.size
            size = 1
        self.size = size
        # The Request only when a gate will need it again: fewer objects for the GC to track.
        table[tail] = (wire[2:], _QTYPES.get(q.qtype, "other"), reply.result, keep, gates,
                       q if gates else None,
                       # The query log's "what" of every row this entry answers (querylog/frames.py).
                       (q.qname, q.qtype, reply.list, reply.rule, reply.result, wire[3] & 15, None))

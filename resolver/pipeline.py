"""The one pipeline: every query goes through the same stages, in the order written out here.

``build_pipeline`` lists the stages in request order, each with the reason for
its place (read it top-down).  ``Pipeline.run`` is the one loop: each stage's
``on_query`` answers or passes (see ``resolver.stages`` for the contract); an
answer goes back out through the ``on_answer`` of the stages above the one that
gave it; a query that no stage answers goes to the forwarding terminal, whose
callback (``Pipeline.forwarded``) runs every ``on_answer`` when the upstream
answer is in.  ``finish`` is the one place where a reply becomes bytes for the
client (render, truncation), is counted and logged (metrics, the query log, the
text log), and is offered to the reply memo (``resolver.memo``), for UDP and TCP
alike.

Why flat: the cost of a stage is then one call that returns None, not a
coroutine and a Response; disabled features are left out when the pipeline is
built, not checked per query.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from .config import Config
from .counting import count_query
from .lists.loader import Blocklists
from .memo import ReplyMemo
from .reply import Reply
from .stages.access import Access
from .stages.blocking import Blocking
from .stages.bypass import Bypass
from .stages.cache import Cache
from .stages.forward import Forward
from .stages.local import Local
from .stages.ratelimit import RateLimit
from .stages.rebind import Rebind
from .stats import Stats
from .wire import QTYPE_NAMES, SERVFAIL, Answer, Request, build_reply, truncate

log = logging.getLogger("hushdns")
qlog = logging.getLogger("hushdns.query")
# Final: the compiled build keeps these in C statics, not a module-dict lookup per query.
_QTYPES: Final = QTYPE_NAMES
perf_counter: Final = time.perf_counter


def build_pipeline(config: Config, lists: Blocklists, stats: Stats,
                   cache_entries: OrderedDict[bytes, Answer] | None = None,
                   inflight: dict | None = None,
                   buckets: dict[str, list[float]] | None = None) -> Pipeline:
    """access (+ minimal ANY) -> rate limit -> local names -> bypass -> blocking -> cache -> rebind
    -> forward.

    ``cache_entries``, ``inflight`` and ``buckets`` carry tables over from the
    pipeline this one replaces (a reload).
    """
    udp = config.server.udp_size
    positions: list[tuple[Any, str]] = [
        # access: REFUSED for clients outside access.allow, and the minimal answer to
        # ANY over UDP (RFC 8482), before any list or upstream work.
        (Access(udp), "first: outsiders get nothing else"),
    ]
    if config.rate_limit.qps > 0:
        # rate limit (optional): a token bucket per client, right after access so
        # refused outsiders do not use up buckets and a flood costs no other work.
        positions.append((RateLimit(config.rate_limit, stats, buckets=buckets),
                          "right after access: a flood costs no other work"))
    if config.household.local.enabled:
        # local names (optional): the household's own names, authoritative, never forwarded,
        # before the lists so that no list can block the NAS.
        positions.append((Local(config.household.local, udp),
                          "before blocking: a household's own names are never blocked or forwarded"))
    # bypass (unless `bypass: false`): Firefox's canary, DDR, iCloud Private Relay (and, opt-in, public DoH/DoT names)
    # answered so that devices stay on this resolver; every lookup of one counted per client.
    if config.household.bypass.enabled:
        positions.append((Bypass(config.household.bypass, stats, udp),
                          "before blocking: its answers and counts do not depend on the group"))
    if lists.lists:
        # blocking: before the cache, so per-client groups see every query, and its
        # on_answer (CNAME cloaking) sees every answer, cached or forwarded.
        positions.append((Blocking(lists, config.blocking, stats, udp),
                          "before the cache: groups differ, answers are shared"))
    # cache: answers as bytes; serve-stale and SERVFAIL caching in its on_answer.
    positions.append((Cache(config.cache, stats, cache_entries),
                      "last before upstream: everything above applies to hits too"))
    if config.rebind_protection.enabled:
        # rebind protection (optional, on_answer only): strips private addresses from
        # public answers below the cache, so it runs once per upstream answer.
        positions.append((Rebind(config, stats), "below the cache: once per upstream answer"))
    # forward: ask upstreams / forward zones; shares identical in-flight questions.
    pipeline = Pipeline(positions, Forward(config, stats, inflight), config, stats)
    # What a reload may hand to the next pipeline.
    pipeline.cache_entries = next(s for s, _ in positions if isinstance(s, Cache)).entries
    return pipeline


class Pipeline:
    """The stages of one configuration and list snapshot, and the loop that runs them."""

    def __init__(self, positions: list[tuple[Any, str]], terminal: Forward, config: Config,
                 stats: Stats) -> None:
        self.positions = positions
        self.terminal = terminal
        self.stats = stats
        self.udp_cap = config.server.udp_size
        self.log_queries = config.log_queries
        self.memo: ReplyMemo | None = None
        # QueryLog.record (a list's append: one row tuple) when the query log is on, else None.
        self.record: Callable[..., None] | None = None
        self.tap: Any = None   # the dnstap writer (resolver/dnstap), None when off
        self.cache_entries: OrderedDict[bytes, Answer] | None = None
        outs: list[Callable[[Request, Reply], Reply]] = []
        # (on_query, the on_answers above it innermost first, its position) per answering stage.
        steps: list[tuple[Callable[[Request], Reply | None], tuple, int]] = []
        # The per_query stages above each position: what a memo answer runs again.
        gates: list[tuple] = []
        above_gates: list[tuple[Callable[[Request], Reply | None], int]] = []
        for pos, (stage, _) in enumerate(positions):
            gates.append(tuple(above_gates))
            on_query = getattr(stage, "on_query", None)
            if on_query is not None:
                steps.append((on_query, tuple(reversed(outs)), pos))
                if getattr(stage, "per_query", True):
                    above_gates.append((on_query, pos))
            on_answer = getattr(stage, "on_answer", None)
            if on_answer is not None:
                outs.append(on_answer)
        self.steps = steps
        # run's loop: the on_query hooks alone; where the one that answered sits, looked up after.
        self.hooks = tuple(on_query for on_query, _, _ in steps)
        self.at = {on_query: (outs, pos) for on_query, outs, pos in steps}
        self.outs_at = {pos: o for _, o, pos in steps}
        self.outs = tuple(reversed(outs))   # for the terminal's answers: every on_answer
        self.gates = gates

    @property
    def stages(self) -> list[Any]:
        return [s for s, _ in self.positions]

    def find(self, kind: type) -> Any:
        """The stage of type ``kind``, or None (tests and tools; never on the query path)."""
        return next((s for s, _ in self.positions if isinstance(s, kind)), None)

    def run(self, q: Request) -> None:
        """Answer ``q`` (now, or once the upstream answers); the reply goes to ``q.sink``."""
        for on_query in self.hooks:
            r = on_query(q)
            if r is not None:
                outs, pos = self.at[on_query]
                for on_answer in outs:
                    r = on_answer(q, r)
                self.finish(q, r, pos)
                return
        self.terminal.start(q, self.forwarded)

    def answered(self, q: Request, r: Reply, pos: int) -> None:
        """``r`` came from the stage at ``pos`` (a memo's gate): out through the stages above it."""
        for on_answer in self.outs_at[pos]:
            r = on_answer(q, r)
        self.finish(q, r, pos)

    def forwarded(self, q: Request, r: Reply | None) -> None:
        """The terminal's callback: the upstream reply, out through every on_answer."""
        try:
            if r is None:
                raise RuntimeError("forwarding failed")
            for on_answer in self.outs:
                r = on_answer(q, r)
        except Exception:
            if r is not None:
                log.exception("error answering %s", q.qname)
            r = self.servfail(q)
        self.finish(q, r, len(self.positions))

    @staticmethod
    def servfail(q: Request) -> Reply:
        return Reply("servfail", wire=build_reply(q, SERVFAIL))

    def finish(self, q: Request, r: Reply, pos: int) -> None:
        """Render, truncate, send, count, log, and remember for the memo: every reply ends here."""
        wire = r.wire
        now = 0.0
        if wire is None and r.answer is not None:
            now = time.monotonic()
            wire = r.answer.render(q, now, self.udp_cap)
        if wire is None:
            if q.proto != "udp":   # stream transports (tcp, tls, https) count what they await
                q.sink.sendto(None, q.addr)
        else:
            if q.proto == "udp":
                # As q.max_udp(), inlined: 512 without EDNS, else the client's size up to the cap.
                cap = self.udp_cap if q.edns else 512
                if q.edns and q.udp_size < cap:
                    cap = q.udp_size if q.udp_size > 512 else 512
                if len(wire) > cap:
                    wire = truncate(q, wire)
                elif r.keep is not None and q.remember:
                    memo = self.memo
                    if memo is not None:
                        memo.store(q, wire, r, self.gates[pos], now)
            q.sink.sendto(wire, q.addr)
        qtype = _QTYPES.get(q.qtype, "other")   # as qtype_label(), inlined
        took = perf_counter() - q.t0
        info = q.info
        count_query(self.stats, info.label, qtype, r.result, took)
        record = self.record
        if record is not None:   # the query log (resolver/querylog/frames.py: the row's shape)
            record((q.t0, took, info.device or info.label, q.client,
                    (q.qname, q.qtype, r.list, r.rule, r.result, wire[3] & 15 if wire else None,
                     r.upstream)))
        tap = self.tap
        if tap is not None:
            tap.emit(q, wire, r)
        if self.log_queries:
            qlog.info("%s %s %s %s%s", q.client, q.qname, qtype,
                      r.result, f" list={r.list} rule={r.rule}" if r.list else "")

    def explain(self, q: Request) -> tuple[Reply | None, list[Reply], str]:
        """``hushdns query``: the same on_query loop with an explaining terminal.

        Returns (the reply that answered or None, what the stages that passed had to
        say, and what the terminal would do).
        """
        notes: list[Reply] = []
        for stage, _ in self.positions:
            on_query = getattr(stage, "on_query", None)
            if on_query is None:
                continue
            r = on_query(q)
            if r is not None:
                return r, notes, ""
            explain = getattr(stage, "explain", None)
            if explain is not None:
                note = explain(q)
                if note is not None:
                    notes.append(note)
        return None, notes, self.terminal.explain(q)

    def close(self) -> None:
        self.terminal.close()


def new_memo(pipeline: Pipeline, clients: dict[str, Any], stats: Stats) -> ReplyMemo:
    """The memo for ``pipeline`` (filled by its finish)."""
    memo = ReplyMemo(pipeline, clients, stats)
    pipeline.memo = memo
    return memo

"""The pipeline's loop against the stage contract, with recording stages: request order,
on_answer of the stages above the one that answered (innermost first), the terminal's
callback through every on_answer, one finish, and the order build_pipeline writes out."""

from __future__ import annotations

from typing import Any

import dnslib

from resolver.config import load_config
from resolver.lists.loader import Blocklists
from resolver.pipeline import Pipeline, build_pipeline
from resolver.reply import Reply
from resolver.stats import Stats
from resolver.wire import parse_query


class Recorder:
    def __init__(self, name: str, log: list[str], answers: bool = False) -> None:
        self.name, self.log, self.answers = name, log, answers

    def on_query(self, q: Any) -> Reply | None:
        self.log.append(f"q:{self.name}")
        return Reply("refused", wire=b"\x00" * 12) if self.answers else None

    def on_answer(self, q: Any, r: Reply) -> Reply:
        self.log.append(f"a:{self.name}")
        return r


class Terminal:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.pending: list[Any] = []

    def start(self, q: Any, done: Any) -> None:
        self.log.append("forward")
        self.pending.append((q, done))


class Sink:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def sendto(self, wire: Any, addr: Any = None) -> None:
        self.sent.append(wire)


class Info:
    label = "x"
    policy = "default"


def _query(sink: Sink) -> Any:
    q = parse_query(dnslib.DNSRecord.question("a.example").pack())
    q.info, q.sink, q.addr, q.t0 = Info(), sink, ("127.0.0.1", 1), 0.0
    return q


CFG = load_config(None, text="upstreams: [127.0.0.1]\nblocking: {}")


def test_an_answer_goes_out_through_the_stages_above_it_only() -> None:
    log: list[str] = []
    stages = [Recorder("a", log), Recorder("b", log), Recorder("c", log, answers=True),
              Recorder("d", log)]
    p = Pipeline([(s, "test") for s in stages], Terminal(log), CFG, Stats())  # type: ignore[arg-type]
    sink = Sink()
    p.run(_query(sink))
    assert log == ["q:a", "q:b", "q:c", "a:b", "a:a"]
    assert len(sink.sent) == 1


def test_the_terminals_answer_runs_every_on_answer_then_finish() -> None:
    log: list[str] = []
    term = Terminal(log)
    stages = [Recorder("a", log), Recorder("b", log)]
    stats = Stats()
    p = Pipeline([(s, "test") for s in stages], term, CFG, stats)  # type: ignore[arg-type]
    sink = Sink()
    p.run(_query(sink))
    assert log == ["q:a", "q:b", "forward"] and not sink.sent   # waiting: nothing sent yet
    q, done = term.pending[0]
    done(q, Reply("forwarded", wire=b"\x00" * 12))
    assert log[3:] == ["a:b", "a:a"] and len(sink.sent) == 1
    assert stats.queries == {("x", "A", "forwarded"): 1}
    done(q, None)   # asking failed: SERVFAIL, from the one place that makes it
    assert dnslib.DNSRecord.parse(sink.sent[-1]).header.rcode == 2


def test_build_pipeline_writes_out_the_request_order_with_a_reason_each() -> None:
    cfg = load_config(None, text="upstreams: [127.0.0.1]\nblocking: {}\n"
                      "rate_limit: {qps: 5}\nrebind_protection: true\nbypass: false")
    p = build_pipeline(cfg, Blocklists(), Stats())
    names = [type(s).__name__ for s in p.stages]
    assert names == ["Access", "RateLimit", "Cache", "Rebind"]   # no lists: no Blocking
    assert all(reason for _, reason in p.positions)
    assert type(p.terminal).__name__ == "Forward"
    # Rebind has no on_query: it is not in the loop, only on the way out.
    assert [pos for _, _, pos in p.steps] == [0, 1, 2]

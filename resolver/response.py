"""What a stage hands back: the answer (as bytes or as a replayable Answer) and what happened."""

from __future__ import annotations

from .wire import Answer


class Response:
    """The outcome of one query.

    ``result`` is the metrics word (forwarded, cached, blocked, refused,
    servfail, formerr, notimp, dropped).  Exactly one of ``wire`` (ready bytes)
    or ``answer`` (rendered for the client at the edge) is set, or neither for
    a drop.  ``list``/``rule`` say why a query was blocked; ``upstream`` who answered.
    """

    __slots__ = ("result", "wire", "answer", "list", "rule", "upstream")

    def __init__(self, result: str, wire: bytes | None = None, answer: Answer | None = None,
                 list: str | None = None, rule: str | None = None,
                 upstream: str | None = None) -> None:
        self.result = result
        self.wire = wire
        self.answer = answer
        self.list = list
        self.rule = rule
        self.upstream = upstream

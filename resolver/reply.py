"""What a stage answers with: the reply (as bytes or as a replayable Answer) and what happened."""

from __future__ import annotations

from typing import Any

from .wire import Answer


class Reply:
    """The outcome of one query.

    ``result`` is the metrics word (forwarded, cached, blocked, refused,
    servfail, formerr, notimp, dropped).  Exactly one of ``wire`` (ready bytes)
    or ``answer`` (rendered for the client in ``finish``) is set, or neither for
    a drop.  ``list``/``rule`` say why a query was blocked; ``upstream`` who
    answered; ``note`` is for ``hushdns query`` (why a stage answered as it did).

    ``keep`` says whether the reply memo may give the same bytes again to the same
    question from a client with the same policy key, and for how long (a
    ``resolver.memo.Keep``); None (the default) means never.  Only the stage that
    answered knows what its answer depends on, so only it sets ``keep``.
    """

    __slots__ = ("result", "wire", "answer", "list", "rule", "upstream", "note", "keep")

    def __init__(self, result: str, wire: bytes | None = None, answer: Answer | None = None,
                 list: str | None = None, rule: str | None = None,
                 upstream: str | None = None, note: str | None = None,
                 keep: Any = None) -> None:
        self.result = result
        self.wire = wire
        self.answer = answer
        self.list = list
        self.rule = rule
        self.upstream = upstream
        self.note = note
        self.keep = keep

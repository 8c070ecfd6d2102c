"""The stage contract: every feature of the resolver is one stage, and every stage is synchronous.

The order of the stages is written out once, in ``resolver.pipeline.build_pipeline``.

A stage is an object with some of these (and nothing else is asked of it):

``on_query(q: Request) -> Reply | None``
    On the way in, in request order.  Answer now (a ``Reply``) or pass (``None``)
    to the next stage.  Synchronous: it must not wait for anything.  Its reply's
    ``keep`` (a ``resolver.memo.Keep``) says whether the reply memo may give the
    same bytes again; leave it None unless the answer depends only on what the
    keep checks.  A stage that passes but must see every later query for this
    name (the bypass counters) sets ``q.remember = False``: whatever answers it
    is then not remembered.

``on_answer(q: Request, reply: Reply) -> Reply``
    On the way out: called with every reply given by a stage *after* this one
    (or by the forwarding terminal), innermost first, and returns the reply to
    pass on (the same one, changed, or another).  Cache store, CNAME cloaking,
    rebind stripping and serve-stale live here.  A remembered reply is given
    again without its ``on_answer``s, so a stage whose ``on_answer`` depends on
    more than the reply, the query bytes and the policy key returns a new Reply
    (whose ``keep`` is None) rather than change the one it was given.

``per_query: bool`` (default True when absent)
    Whether the reply memo must run this stage's ``on_query`` again for every
    answer it gives from memory.  False promises that ``on_query`` passes for
    the same query bytes (after the ID), the same client policy key
    (``ClientInfo.policy``) over UDP, for the life of the pipeline; or that the
    answers it gives itself carry a ``keep``.  A stage that depends on anything
    else (a per-client rate, the clock, a toggle) leaves it True, and memo
    answers are then held to its verdict like any other query.

``explain(q: Request) -> Reply | None`` (optional)
    For ``hushdns query``: why the stage passed, when that is worth saying (an
    allow rule, say).

Forwarding is the one asynchronous terminal (``stages.forward.Forward.start``):
it calls back with the upstream's reply; only its transport code awaits.
"""

from __future__ import annotations

from typing import Protocol

from ..reply import Reply
from ..wire import Request


class Stage(Protocol):
    def on_query(self, q: Request) -> Reply | None: ...


class AnswerStage(Protocol):
    def on_answer(self, q: Request, reply: Reply) -> Reply: ...

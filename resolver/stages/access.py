"""Access policy: who is answered at all, and which questions are declined outright.

Why first: an open resolver is an amplification weapon; anything else in the
pipeline is work done for someone who should get REFUSED.  ANY over UDP, the
classic amplification query that no real client needs, gets the minimal
answer of RFC 8482 (one synthesized HINFO record); over TCP, where the source
address is proven, it is forwarded as usual.  (Both checks are one stage:
they are the same kind of decision, and every stage costs a call per query.)

Memo-safe (``per_query = False``): the verdict depends on ``ClientInfo.allowed``,
which is part of the client's policy key, and on the question bytes; neither
answer is remembered.
"""

from __future__ import annotations

from ..reply import Reply
from ..wire import (
    EDE_PROHIBITED,
    NOERROR,
    REFUSED,
    T_ANY,
    T_HINFO,
    Request,
    build_reply,
    opt_record,
    rr,
)

_HINFO = rr(T_HINFO, 3600, b"\x07RFC8482\x00")


class Access:
    per_query = False

    def __init__(self, udp_size: int = 1232) -> None:
        self._opt = {do: opt_record(udp_size, do, ede=EDE_PROHIBITED) for do in (False, True)}

    def on_query(self, q: Request) -> Reply | None:
        info = q.info
        if not info.allowed:
            return Reply("refused", wire=build_reply(q, REFUSED, opt=self._opt[q.do]),
                         note="refused (client outside access.allow)")
        if not (q.flags & 0x0100 or info.snoop):
            # RD=0 asks for our cache only: answered, it tells anyone what others
            # resolved (cache snooping), so only for access.allow_snoop (unbound's allow).
            return Reply("refused", wire=build_reply(q, REFUSED, opt=self._opt[q.do]),
                         note="refused (RD=0: cache snooping, only for access.allow_snoop)")
        if q.qtype == T_ANY and q.proto == "udp":
            # Counted as "refused": the question was declined, not answered from upstream.
            return Reply("refused", wire=build_reply(q, NOERROR, _HINFO, an=1),
                         note="minimal answer (RFC 8482: ANY over UDP)")
        return None

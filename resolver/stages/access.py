"""Access policy: who is answered at all, and which questions are declined outright.

Why first: an open resolver is an amplification weapon; anything else in the
chain is work done for someone who should get REFUSED.  ANY over UDP, the
classic amplification query that no real client needs, gets the minimal
answer of RFC 8482 (one synthesized HINFO record); over TCP, where the source
address is proven, it is forwarded as usual.  (Both checks are one stage:
they are the same kind of decision, and every stage costs a call per query.)
"""

from __future__ import annotations

from ..response import Response
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
from . import Stage

_HINFO = rr(T_HINFO, 3600, b"\x07RFC8482\x00")


class Access:
    def __init__(self, next: Stage, udp_size: int = 1232) -> None:
        self.next = next
        self._opt = {do: opt_record(udp_size, do, ede=EDE_PROHIBITED) for do in (False, True)}

    async def resolve(self, req: Request) -> Response:
        if not req.info.allowed or not (req.flags & 0x0100 or req.info.snoop):
            # RD=0 asks for our cache only: answered, it tells anyone what others
            # resolved (cache snooping), so only for access.allow_snoop (unbound's allow).
            return Response("refused", wire=build_reply(req, REFUSED, opt=self._opt[req.do]))
        if req.qtype == T_ANY and req.proto == "udp":
            # Counted as "refused": the question was declined, not answered from upstream.
            return Response("refused", wire=build_reply(req, NOERROR, _HINFO, an=1))
        return await self.next.resolve(req)

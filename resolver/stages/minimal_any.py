"""ANY over UDP gets a minimal answer (RFC 8482): one synthesized HINFO record.

Why: ANY is the classic amplification query and no real client needs it;
over TCP (where the source address is proven) it is forwarded as usual.
"""

from __future__ import annotations

from ..response import Response
from ..wire import NOERROR, T_ANY, T_HINFO, Request, build_reply, rr
from . import Stage

_HINFO = rr(T_HINFO, 3600, b"\x07RFC8482\x00")


class MinimalAny:
    def __init__(self, next: Stage) -> None:
        self.next = next

    async def resolve(self, req: Request) -> Response:
        if req.qtype == T_ANY and req.proto == "udp":
            # Counted as "refused": the question was declined, not answered from upstream.
            return Response("refused", wire=build_reply(req, NOERROR, _HINFO, an=1))
        return await self.next.resolve(req)

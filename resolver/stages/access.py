"""Access control: only the configured networks (by default loopback and private ranges) are served.

Why first: an open resolver is an amplification weapon; anything else in the
chain is work done for someone who should get REFUSED.
"""

from __future__ import annotations

from ..response import Response
from ..wire import EDE_PROHIBITED, REFUSED, Request, build_reply, opt_record
from . import Stage


class Access:
    def __init__(self, next: Stage, udp_size: int = 1232) -> None:
        self.next = next
        self._opt = {do: opt_record(udp_size, do, ede=EDE_PROHIBITED) for do in (False, True)}

    async def resolve(self, req: Request) -> Response:
        if not req.info.allowed:
            return Response("refused", wire=build_reply(req, REFUSED, opt=self._opt[req.do]))
        return await self.next.resolve(req)

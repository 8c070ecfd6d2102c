"""The chain: every feature is one stage with ``async def resolve(req) -> Response``.

The order is written out once, in ``resolver.chain.build_chain``.
"""

from __future__ import annotations

from typing import Protocol

from ..response import Response
from ..wire import Request


class Stage(Protocol):
    async def resolve(self, req: Request) -> Response: ...

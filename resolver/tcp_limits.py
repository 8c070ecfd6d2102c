"""Who may hold TCP connections: a per-client cap, and fair eviction when the table is full.

Why: with one global cap, a single client that keeps reopening idle
connections held every slot, and other TCP clients failed (2 ok / 90 failed
in the attack run).  Now a client may hold at most ``per_client``
connections, and when the table is full a newcomer takes the slot of an
*idle* connection (nothing in flight, no frame half-received) of the client
holding the most, its longest-idle one first.  Only when nobody has an idle
connection is the newcomer refused.  The same policy serves the /metrics
endpoint (``resolver.metrics``), so 64 idle connections cannot lock out a
scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)


class ConnectionTable(Generic[C]):
    """Connections grouped by client; ``idle_since(conn)`` is None for a busy one."""

    def __init__(self, limit: int, per_client: int,
                 idle_since: Callable[[C], float | None]) -> None:
        self.limit = limit
        self.per_client = per_client
        self.idle_since = idle_since
        self.by_client: dict[str, set[C]] = {}
        self.client_of: dict[C, str] = {}

    def __len__(self) -> int:
        return len(self.client_of)

    def __iter__(self):
        return iter(list(self.client_of))

    def __contains__(self, conn: object) -> bool:
        return conn in self.client_of

    def admit(self, conn: C, client: str) -> tuple[bool, C | None]:
        """(admitted, connection to close to make room) for a new connection from ``client``."""
        mine = self.by_client.get(client, ())
        victim: C | None = None
        if len(mine) >= self.per_client:
            victim = self._oldest_idle(mine)          # the client makes room from its own
            if victim is None:
                return False, None
        elif len(self.client_of) >= self.limit:
            victim = self._fair_victim(len(mine))
            if victim is None:
                return False, None
        if victim is not None:
            self.remove(victim)
        self.by_client.setdefault(client, set()).add(conn)
        self.client_of[conn] = client
        return True, victim

    def remove(self, conn: C) -> None:
        client = self.client_of.pop(conn, None)
        if client is None:
            return
        group = self.by_client.get(client)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.by_client[client]

    def _oldest_idle(self, conns) -> C | None:
        best, since = None, None
        for c in conns:
            t = self.idle_since(c)
            if t is not None and (since is None or t < since):
                best, since = c, t
        return best

    def _fair_victim(self, newcomer_holds: int) -> C | None:
        """An idle connection of a client holding more than the newcomer, the biggest
        holder first (its longest-idle connection); None when the newcomer is the hog."""
        for n, group in sorted(((len(g), g) for g in self.by_client.values()),
                               key=lambda item: -item[0]):
            if n <= newcomer_holds:
                return None
            victim = self._oldest_idle(group)
            if victim is not None:
                return victim
        return None

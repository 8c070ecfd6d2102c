"""The server's side of device names: the refresh loop and the last-query clock.

Kept out of server.py so the server only says when: ``configure`` at start and
reload, ``run`` as a background task. Everything blocking (files, ``ip``, PTR)
runs in a worker thread; the swap of the mapping happens on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..stats import Stats
from .names import norm_address
from .registry import DeviceMap, DeviceNames

log = logging.getLogger("hushdns.devices")

ACTIVITY_EVERY = 10.0    # seconds between looks at which clients asked something
MAX_KNOWN = 4096         # known-but-silent devices exported at most (a huge lease file)


class DeviceService:
    """Owns the DeviceNames of the running config and feeds the client table."""

    def __init__(self, stats: Stats, table: Callable[[], Any]) -> None:
        self.stats = stats
        self.table = table              # -> the current ClientTable (or None)
        self.names: DeviceNames | None = None
        self.map = DeviceMap()
        self.refresh_every = 60.0
        self._key: Any = None
        self._totals: dict[str, int] = {}
        self._wake = asyncio.Event()

    async def configure(self, config: Config) -> None:
        """(Re)build the sources when ``devices:`` or ``clients:`` changed; refresh once now,
        so the first queries after start or reload already carry their names."""
        d = config.devices
        key = (d, tuple((k, tuple(v)) for k, v in config.clients.items()))
        if key == self._key:
            return
        self._key = key
        self.refresh_every = d.refresh
        if not d.enabled:
            self.names, self.map = None, DeviceMap()
            self._publish()
            return
        self.names = DeviceNames(config.clients, d.leases, d.neighbours, d.reverse_dns)
        await self.refresh(reverse=False)   # files and tables now; PTR from the loop
        log.info("devices: %d named (%s)", len(self.map.devices), ", ".join(
            [f"{len(d.leases)} lease files" if d.leases else "no lease files",
             "neighbour table" if d.neighbours else "no neighbour table",
             "reverse DNS" if d.reverse_dns else "no reverse DNS"]))
        self._wake.set()

    async def refresh(self, reverse: bool = True) -> None:
        names = self.names
        if names is None:
            return
        table = self.table()
        seen = list(table.cache) if table is not None else []
        try:
            new = await asyncio.to_thread(names.refresh, seen, reverse)
        except Exception:  # noqa: BLE001 - a broken source must not stop the loop or DNS
            log.exception("devices: refresh failed; keeping the previous names")
            return
        if names is self.names:       # not replaced by a reload meanwhile
            self.map = new
            self._publish()

    def _publish(self) -> None:
        table = self.table()
        if table is not None:
            table.set_devices(self.map.names)
        last = self.stats.device_last_query
        for name in [n for n, t in last.items() if t == 0.0 and n not in self.map.devices]:
            del last[name]               # gone from the leases before it ever asked
        for name in self.map.devices:
            if len(last) >= MAX_KNOWN:
                break
            last.setdefault(name, 0.0)   # known, never asked: "silent" from the start

    def note_activity(self, now: float | None = None) -> None:
        """Every client label whose query count grew since the last look asked something now.

        Why here and not per query: a clock read per query costs the hot path;
        a look every few seconds is exact enough for "silent for an hour".
        """
        now = time.time() if now is None else now
        totals: dict[str, int] = {}
        for (client, _, _), n in list(self.stats.queries.items()):
            totals[client] = totals.get(client, 0) + n
        last = self.stats.device_last_query
        for client, n in totals.items():
            # Named devices only: an unnamed address (or "other") is no device to miss.
            # Growth only: a count that fell was an idle label released (clients.LabelBound).
            if n > self._totals.get(client, 0) and client != "other" and norm_address(client) is None:
                last[client] = now
        self._totals = totals

    async def run(self) -> None:
        """Refresh every ``devices.refresh`` seconds; note activity every few seconds."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh_every
        while True:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(ACTIVITY_EVERY, self.refresh_every))
                next_refresh = loop.time() + self.refresh_every   # just refreshed by configure
            except TimeoutError:
                pass
            self.note_activity()
            if self.names is not None and loop.time() >= next_refresh:
                next_refresh = loop.time() + self.refresh_every
                await self.refresh()

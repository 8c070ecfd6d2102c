"""Keeping the lists in service current: local files watched, URL lists refreshed.

Why here and not in the server: list upkeep is about lists (files, downloads,
schedules); the server only needs to be told when there is a new snapshot to
serve.  ``ListUpkeep`` builds new snapshots (off the event loop: ``offload``) and hands
each to ``install(lists)``;
it reads the configuration and the snapshot in service through callables, so a
reload is seen at once.  A failed or refused download keeps the current version
serving (see ``remote``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Config, ListSpec
from ..stats import Stats
from . import loader, offload, remote
from .loader import Blocklists

log = logging.getLogger("hushdns")

LIST_POLL_SECONDS = 2.0
URL_REFRESH_TICK = 1.0      # how often the URL refresher looks for lists that are due


class ListUpkeep:
    def __init__(self, config: Callable[[], Config], lists: Callable[[], Blocklists],
                 stats: Stats, install: Callable[[Blocklists], None],
                 lock: asyncio.Lock) -> None:
        self.config = config
        self.lists = lists
        self.stats = stats
        self.install = install
        self.lock = lock   # the server's reload lock: one new snapshot at a time

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Start the watcher and the refresher (cancel the tasks to stop them)."""
        return [asyncio.create_task(self.watch()), asyncio.create_task(self.refresh())]

    async def watch(self) -> None:
        """Local list files are polled: a ``git pull`` takes effect within seconds, no restart."""
        while True:
            await asyncio.sleep(LIST_POLL_SECONDS)
            try:
                if await asyncio.to_thread(loader.changed, self.lists()):
                    async with self.lock:
                        old = self.lists()
                        lists = await offload.build(self.config(), old, self.stats)
                        self.install(lists)
                    for name, info in lists.lists.items():
                        was = old.lists.get(name)
                        if was is not None and was.fingerprint != info.fingerprint and not info.error:
                            log.info("list %s changed on disk: %d entries now (was %d)",
                                     name, info.entries, was.entries)
            except Exception:
                log.exception("list watcher")

    async def refresh(self) -> None:
        """URL lists are downloaded in the background: right after start-up when their disk
        copy is missing or older than ``refresh``, then every ``refresh`` (sooner after a
        failure)."""
        schedule = remote.RefreshSchedule()
        while True:
            config = self.config()
            for spec in schedule.due(config.all_lists(), config.state_dir):
                ok = False
                try:
                    ok = await self.refresh_one(spec)
                except Exception:
                    log.exception("refreshing list %s", spec.name)
                schedule.done(spec, ok)
            await asyncio.sleep(URL_REFRESH_TICK)

    async def refresh_one(self, spec: ListSpec) -> bool:
        config = self.config()
        try:
            got = await asyncio.to_thread(remote.fetch, spec, config.state_dir)
            error = got.error
        except loader.LoadError as exc:
            got, error = None, str(exc)
            log.error("list %s: %s", spec.name, error)
        current = self.lists()
        info = current.lists.get(spec.name)
        if got is None or error is not None:
            failures = self.stats.list_load_failures
            failures[spec.name] = failures.get(spec.name, 0) + 1
            if info is not None:
                info.error = error
            return False
        if got.changed or info is None or not info.loaded_at or info.spec != spec:
            async with self.lock:
                lists = await offload.build(self.config(), self.lists(), self.stats,
                                            {spec.name: got.text})
                self.install(lists)
        else:   # 304 or the same bytes: the list in service is current
            info.loaded_at, info.error = time.time(), None
            loader.publish(current, self.stats)
        return True

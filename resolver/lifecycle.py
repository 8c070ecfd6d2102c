"""Process set-up for serving: signals (SIGTERM/SIGINT stop, SIGHUP reloads) and the GC.

Shared by the single-process server, the workers and the workers' supervisor,
which react to the same signals the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

_early_hup = False


def defer_sighup() -> None:
    """Catch SIGHUP from the very start, before the slow start-up (lists, binding).

    Why: SIGHUP's default action ends the process, so ``systemctl reload`` (or
    a list-sync hook) a moment after start used to kill hushdns.  Until
    ``handle_signals`` takes over, a SIGHUP is only remembered; it becomes one
    reload as soon as serving begins.
    """
    def remember(_signum: int, _frame: Any) -> None:
        global _early_hup
        _early_hup = True

    signal.signal(signal.SIGHUP, remember)


class Coalesced:
    """At most one reload running and one queued: a SIGHUP storm costs two reloads, not 1000.

    Why: every reload re-reads every list; queued one per signal, 200 SIGHUPs
    kept the process reloading (and answers slow) for minutes.  A request while
    one runs queues the next (it must see files changed meanwhile); requests
    while one is queued join that one.
    """

    def __init__(self, run: Callable[[], Awaitable[Any]]) -> None:
        self._run = run
        self._current: asyncio.Future[Any] | None = None
        self._queued: asyncio.Future[Any] | None = None

    def request(self) -> asyncio.Future[Any]:
        if self._queued is not None:
            return self._queued
        if self._current is None or self._current.done():
            self._current = asyncio.ensure_future(self._run())
            return self._current
        self._queued = asyncio.ensure_future(self._after(self._current))
        return self._queued

    async def _after(self, previous: asyncio.Future[Any]) -> Any:
        with contextlib.suppress(BaseException):
            await asyncio.shield(previous)
        self._current, self._queued = self._queued, None
        return await self._run()

    async def __call__(self) -> Any:
        return await asyncio.shield(self.request())


def handle_signals(reload: Callable[[], Awaitable[Any]]) -> asyncio.Event:
    """Install the handlers on the running loop; the returned event is set on SIGTERM/SIGINT.

    Reloads are coalesced (``Coalesced``), and a SIGHUP that arrived during
    start-up (``defer_sighup``) is carried out now.
    """
    global _early_hup
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    coalesced = Coalesced(reload)

    def on_hup() -> None:
        fut = coalesced.request()
        fut.add_done_callback(_retrieve)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if _early_hup:
        _early_hup = False
        on_hup()
    return stop


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        logging.getLogger("hushdns").error("reload failed: %r", fut.exception())


# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Fewer, larger young collections, and the start-up heap out of full ones.

    Why: a forwarded query keeps a dozen objects alive while it waits (its
    coroutines, Task, futures), so with the default threshold every young
    collection finds hundreds of queries in flight and promotes their objects,
    which soon forces full collections over the whole cache: measured under a
    cache-miss flood filling a 100k-entry cache, 745 ms of GC per ~60k misses
    (about 12 µs each) with pauses up to 80 ms; with this set-up 136 ms and no
    full collection (bench/README.md).  ``gc.freeze`` moves the ~26k objects of
    start-up (modules, config) out of every later collection.  Memory is still
    freed by reference counting as before; cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)

"""Process set-up for serving: signals (SIGTERM/SIGINT stop, SIGHUP reloads) and the GC.

Shared by the single-process server, the workers and the workers' supervisor,
which react to the same signals the same way.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable
from typing import Any


def handle_signals(reload: Callable[[], Awaitable[Any]]) -> asyncio.Event:
    """Install the handlers on the running loop; the returned event is set on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[Any]] = set()   # held: the loop keeps only weak references

    def on_hup() -> None:
        task = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    return stop


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

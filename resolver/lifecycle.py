"""Signals for a serving process: SIGTERM/SIGINT stop it, SIGHUP reloads it.

Shared by the single-process server and the workers' supervisor, which react
to the same signals the same way.
"""

from __future__ import annotations

import asyncio
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

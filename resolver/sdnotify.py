"""The sd_notify protocol, spoken directly: a few datagrams on ``$NOTIFY_SOCKET``.

Why not libsystemd or a PyPI wrapper: the protocol is "send ``KEY=VALUE`` lines
in one datagram to an AF_UNIX socket", and hushdns must also run where systemd
is absent (containers, tests, other init systems).  With ``NOTIFY_SOCKET``
unset every call is a cheap no-op, so callers never need to check.

Sending never raises: a lost notification must not take DNS down.  Failures
are logged at debug level and reported by the return value.

See sd_notify(3) for the message meanings; ``Type=notify`` uses READY/STOPPING/
WATCHDOG, and ``Type=notify-reload`` (systemd >= 253) additionally wants
``RELOADING=1`` with ``MONOTONIC_USEC`` at the start of every reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger("hushdns.sdnotify")

# A READY=1 that is silently dropped leaves the unit stuck in "activating"
# until TimeoutStartSec; so wait a little for a full receive queue rather than
# dropping at once, but never long enough to stall the event loop noticeably.
_SEND_TIMEOUT = 0.5


def parse_address(value: str | None) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into an AF_UNIX address, or None when unusable.

    ``/path`` is a filesystem socket; ``@name`` is Linux's abstract namespace
    (a leading NUL byte).  Other forms (``vsock:...``, newer systemd) are not
    supported and disable notifications with a debug message.
    """
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    log.debug("NOTIFY_SOCKET=%r is not a path or abstract socket; not notifying", value)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when off.

    This is the full timeout (as sd_watchdog_enabled(3) returns it); ping at
    half of it.  ``$WATCHDOG_PID``, when set, names the process the watchdog
    is meant for: anyone else (a child that inherited the environment) must
    not ping, so it gets None.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("WATCHDOG_USEC=%r is not an integer; watchdog off", raw)
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.debug("WATCHDOG_PID=%r is not an integer; watchdog off", pid)
            return None
    return usec / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends service state to systemd; every method is a no-op without NOTIFY_SOCKET.

    The environment is read once, at construction, so tests can pass their own
    mapping and a later change of ``os.environ`` does not re-target messages.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = parse_address(env.get("NOTIFY_SOCKET"))
        self._watchdog = watchdog_interval(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; True when it was sent."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(_SEND_TIMEOUT)
            self._sock.sendto(data, self._address)
        except OSError as exc:
            log.debug("sd_notify %r to %r failed: %s", data, self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup or reload finished: the sockets are bound and answering."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_field(status))

    def reloading(self) -> bool:
        """A reload began; ``ready()`` must follow when it is done (or failed)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> bool:
        """Shutdown began, so systemd does not mistake the exit for a crash in progress."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line human status shown by ``systemctl status``."""
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        """Keep-alive ping; systemd restarts the service when these stop coming."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start/reload/stop (e.g. slow list downloads)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds for this process, or None (see module function)."""
        return self._watchdog

    async def watchdog_loop(self) -> None:
        """Ping at half the watchdog timeout until cancelled; returns at once when off.

        It runs on the event loop on purpose: a stuck loop (the failure the
        watchdog exists to catch) also stops the pings.
        """
        interval = self._watchdog
        if interval is None or self._address is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval / 2)

    def close(self) -> None:
        """Release the socket (a later message opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Lifecycle(Protocol):
    """The part of ``resolver.server.Server`` that reports its lifecycle."""

    on_ready: Callable[[], None]
    on_reload_start: Callable[[], None]
    on_reload_done: Callable[[], None]
    on_stopping: Callable[[], None]


def attach(server: _Lifecycle, notifier: Notifier | None = None,
           describe: Callable[[], str] | None = None) -> Notifier:
    """Report ``server``'s lifecycle to systemd through its hooks; returns the notifier.

    READY=1 after the sockets are bound, RELOADING=1 ... READY=1 around every
    reload (also a failed one: the old config is still serving, and systemd
    must not wait forever), STOPPING=1 when shutdown begins.  ``describe``
    supplies the STATUS= text that ``systemctl status`` shows.  The caller
    runs ``notifier.watchdog_loop()`` as a task.
    """
    n = notifier if notifier is not None else Notifier()

    def ready() -> None:
        n.ready(status=describe() if describe else None)

    server.on_ready = ready
    server.on_reload_start = lambda: _ignore(n.reloading())
    server.on_reload_done = ready
    server.on_stopping = lambda: _ignore(n.stopping())
    return n


def _ignore(_: Any) -> None:
    return None


def _status_field(text: str) -> str:
    # A newline would start a new KEY=VALUE field in the datagram.
    return "STATUS=" + " ".join(text.splitlines())

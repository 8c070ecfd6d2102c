"""The control API: JSON lines over a unix socket (and optionally TCP with a token).

Why JSON lines and not HTTP: the only clients are ``hushdns pause|resume|allow|status``
and scripts (``socat``, ``nc -U``); one request object per line and one reply object
per line is all they need, and it is easy to read in a terminal.

Request:  ``{"verb": "pause", "duration": "1h", "group": "kids", "token": "..."}``
Reply:    ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "unknown group 'x' ..."}``

The unix socket (mode 0660: the service's user and group) needs no token; the file
mode is the guard, as for Docker's or unbound-control's local sockets.  The TCP
listener refuses every request without the right token: refused, logged, counted in
``hushdns_control_refused_total{listener="tcp",reason="bad_token"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

from ..config import Endpoint, format_endpoint
from .state import ControlError, HouseholdState

log = logging.getLogger("hushdns.control")

MAX_LINE = 16_384
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0
REFUSE_DELAY = 0.5    # seconds before a wrong token is answered (and the connection closed)
VERBS = ("pause", "resume", "allow", "status")


class ControlApi:
    """The listeners and the verbs; ``status`` asks the server for what only it knows."""

    def __init__(self, state: HouseholdState, status: Callable[[], dict[str, Any]],
                 stats: Any) -> None:
        self.state = state
        self.server_status = status
        self.stats = stats
        self.servers: list[asyncio.AbstractServer] = []
        self.socket_path: str | None = None
        self.tcp_address: Endpoint | None = None
        self.token: str | None = None
        self.connections = 0

    async def start(self, socket_path: str | None, listen: Endpoint | None, token: str | None) -> None:
        self.token = token
        if socket_path:
            try:
                await self._start_unix(socket_path)
            except OSError as exc:
                log.error("control socket %s: %s; hushdns pause/status will not work", socket_path, exc)
        if listen is not None:
            try:
                srv = await asyncio.start_server(lambda r, w: self._serve(r, w, "tcp"),
                                                 listen[0], listen[1], limit=MAX_LINE)
            except OSError as exc:
                log.error("control listener %s: %s", format_endpoint(listen), exc)
            else:
                self.servers.append(srv)
                host, port = srv.sockets[0].getsockname()[:2]
                self.tcp_address = (host, port)
                log.info("control API on %s (token required)", format_endpoint(self.tcp_address))

    async def _start_unix(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)   # left by a hushdns that did not stop cleanly
        old = os.umask(0o117)     # never world-accessible, not even for a moment
        try:
            srv = await asyncio.start_unix_server(lambda r, w: self._serve(r, w, "unix"),
                                                  path, limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        self.servers.append(srv)
        self.socket_path = path
        log.info("control API on %s", path)

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self.servers.clear()
        if self.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     listener: str) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (TimeoutError, ValueError, ConnectionError):
                    break   # idle, a line over MAX_LINE, or gone
                if not line:
                    break
                reply = self.handle(line, listener, writer.get_extra_info("peername"))
                if reply.get("refused"):
                    await asyncio.sleep(REFUSE_DELAY)   # a guesser gets two tries a second
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
                if not reply.get("ok") and reply.get("refused"):
                    break
        except ConnectionError:
            pass
        finally:
            self.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def _refuse(self, listener: str, reason: str, peer: Any) -> None:
        key = (listener, reason)
        self.stats.control_refused[key] = self.stats.control_refused.get(key, 0) + 1
        log.warning("control request from %s refused: %s", peer or listener, reason.replace("_", " "))

    def handle(self, line: bytes, listener: str, peer: Any = None) -> dict[str, Any]:
        """One request line -> one reply object (also used by tests without a socket)."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):   # RecursionError: "[[[[..." nested too deep
            self._refuse(listener, "bad_request", peer)
            return {"ok": False, "error": "not a JSON object on one line"}
        if listener == "tcp":
            given = req.get("token")
            if not isinstance(given, str) or self.token is None or \
                    not hmac.compare_digest(given.encode(), self.token.encode()):
                self._refuse(listener, "bad_token", peer)
                return {"ok": False, "refused": True, "error": "refused: wrong or missing token"}
        verb = req.get("verb")
        try:
            return {"ok": True, "result": self._verb(verb, req)}
        except ControlError as exc:
            log.info("control %s refused: %s", verb, exc)
            return {"ok": False, "error": str(exc)}
        except Exception:   # a bug here must cost one reply, not the listener
            log.exception("control %s failed", verb)
            return {"ok": False, "error": "internal error (see the hushdns log)"}

    def _verb(self, verb: Any, req: dict[str, Any]) -> Any:
        s = self.state
        group, device = _opt(req, "group"), _opt(req, "device")
        if verb == "pause":
            p = s.pause(req.get("duration"), group, device)
            return {"paused": p.describe(), "until": p.until}
        if verb == "resume":
            gone = s.resume(group, device)
            return {"resumed": [p.describe() for p in gone]}
        if verb == "allow":
            a = s.allow(_opt(req, "name") or "", device, req.get("for"))
            return {"allowed": a.describe(), "until": a.until}
        if verb == "status":
            return {**self.server_status(), **s.status()}
        raise ControlError(f"unknown verb {verb!r} (one of {', '.join(VERBS)})")


def _opt(req: dict[str, Any], key: str) -> str | None:
    v = req.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ControlError(f"{key} must be a string")
    return v

"""``workers: N``: N processes answering on the same addresses, one metrics endpoint.

Why processes: one Python process answers from one core.  On a 4-core
Raspberry Pi, N workers each bind every listen address with SO_REUSEPORT and
the kernel spreads clients across them.  The supervisor (the process systemd
starts) binds no DNS socket: it starts the workers as fresh interpreters (no
fork of a running event loop), serves /metrics by asking every worker for a
snapshot of its counters at scrape time and adding them up (so counts stay
exact), forwards reloads, restarts a worker that dies, and speaks sd_notify.

Channel: a socketpair per worker; the supervisor sends one byte (``S`` for a
stats snapshot, ``R`` for reload), the worker answers one length-prefixed
pickle.  Pickle is safe here: both ends are this program, over a private pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from . import sdnotify
from .config import Config, ConfigError
from .lifecycle import handle_signals, tune_gc
from .metrics import snapshot, start_metrics_server
from .stats import Histogram, Stats

log = logging.getLogger("hushdns.workers")

READY_TIMEOUT = 60.0
ASK_TIMEOUT = 10.0
RESTART_DELAY = 1.0


# --- the channel ----------------------------------------------------------------


async def _send_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(struct.pack("!I", len(data)) + data)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    n = struct.unpack("!I", await reader.readexactly(4))[0]
    return pickle.loads(await reader.readexactly(n))  # noqa: S301 - our own worker, private pair


def plain_stats(stats: Stats) -> dict[str, Any]:
    """A picklable copy of a worker's counters (callables replaced by their values)."""
    snap = snapshot(stats)
    out = {k: v for k, v in vars(snap).items() if not callable(v)}
    out["cache_entries"] = snap.cache_entries()
    return out


def _const(v: int) -> Any:
    return lambda: v


def merge(parts: list[dict[str, Any]]) -> Stats:
    """Add the workers' counters up; per-process gauges take the cautious value."""
    total = Stats()
    for part in parts:
        for name, value in part.items():
            mine = getattr(total, name, None)
            if name == "cache_entries":
                total.cache_entries = _const(total.cache_entries() + value)
            elif name in ("list_entries", "list_last_success", "list_load_failures",
                          "device_last_query"):
                # Every worker loads the same lists: a per-list fact, not a sum; a
                # device's last query is the latest any worker saw.
                for k, v in value.items():
                    mine[k] = max(mine.get(k, v), v)
            elif name == "upstream_state":
                for k, v in value.items():
                    mine[k] = min(mine.get(k, v), v)
            elif name == "config_reload_success":
                total.config_reload_success = min(total.config_reload_success, value)
            elif name == "started":
                total.started = min(total.started, value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, Histogram):
                        h = mine.get(k)
                        if h is None:
                            h = mine[k] = Histogram(bounds=v.bounds)
                        h.counts = [a + b for a, b in zip(h.counts, v.counts, strict=True)]
                        h.total += v.total
                        h.n += v.n
                    else:
                        mine[k] = mine.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                setattr(total, name, (mine or 0) + value)
    return total


# --- the worker side --------------------------------------------------------------


async def run_worker(config: Config, reload_config: Any, fd: int) -> int:
    """One worker: serve DNS on shared ports, answer the supervisor on ``fd``."""
    from .server import Server

    cfg = dataclasses.replace(config, metrics=dataclasses.replace(config.metrics, listen=None))

    def reload_cfg() -> Config:
        new = reload_config()
        return dataclasses.replace(new, metrics=dataclasses.replace(new.metrics, listen=None))

    server = Server(cfg, reload_config=reload_cfg, reuse_port=True)
    await server.start()
    tune_gc()
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor sends R

    async def channel() -> None:
        await _send_frame(writer, "ready")
        while True:
            cmd = await reader.read(1)
            if not cmd:            # the supervisor is gone: so are we
                return
            if cmd == b"S":
                await _send_frame(writer, plain_stats(server.stats))
            elif cmd == b"R":
                await _send_frame(writer, await server.reload())

    task = asyncio.create_task(channel())
    done, _ = await asyncio.wait([task, asyncio.create_task(stop.wait())],
                                 return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    await server.stop()
    return 0


# --- the supervisor side -------------------------------------------------------------


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def start(self, argv: list[str]) -> None:
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resolver", *argv, "--worker-fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),))
        theirs.close()
        self.reader, self.writer = await asyncio.open_connection(sock=mine)
        async with asyncio.timeout(READY_TIMEOUT):
            assert await _read_frame(self.reader) == "ready"

    async def ask(self, cmd: bytes) -> Any:
        async with self.lock, asyncio.timeout(ASK_TIMEOUT):
            assert self.writer is not None and self.reader is not None
            self.writer.write(cmd)
            return await _read_frame(self.reader)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts ``config.workers`` workers and stands in for them towards systemd and Prometheus."""

    def __init__(self, config: Config, reload_config: Any, argv: list[str]) -> None:
        self.config = config
        self.reload_config = reload_config
        self.argv = argv
        self.workers = [_Worker(i) for i in range(config.workers)]
        self.notifier = sdnotify.Notifier()
        self.metrics: Any = None
        self.stopping = False

    async def merged(self) -> Stats:
        parts = await asyncio.gather(*(w.ask(b"S") for w in self.workers if w.alive()),
                                     return_exceptions=True)
        return merge([p for p in parts if isinstance(p, dict)])

    async def run(self) -> int:
        try:
            await asyncio.gather(*(w.start(self.argv) for w in self.workers))
        except (TimeoutError, AssertionError, asyncio.IncompleteReadError, OSError) as exc:
            log.error("a worker did not start: %r", exc)
            await self._stop_all()
            return 1
        ep = self.config.metrics.listen
        if ep is not None:
            self.metrics = await start_metrics_server(Stats(), ep[0], ep[1], source=self.merged)
        log.info("%d workers serving", len(self.workers))
        self.notifier.ready()
        self.notifier.status(f"{len(self.workers)} workers serving")
        stop = handle_signals(self.reload)
        watchdog = asyncio.create_task(self.notifier.watchdog_loop())
        keeper = asyncio.create_task(self._keep_alive())
        await stop.wait()
        self.notifier.stopping()
        keeper.cancel()
        watchdog.cancel()
        if self.metrics is not None:
            await self.metrics.close()
        await self._stop_all()
        return 0

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            self.reload_config()   # validate first: a broken config is not sent to anyone
            results = await asyncio.gather(*(w.ask(b"R") for w in self.workers),
                                           return_exceptions=True)
            ok = all(r is True for r in results)
        except ConfigError as exc:
            log.error("reload failed, workers keep the running configuration:\n%s", exc)
            ok = False
        self.notifier.status(f"{len(self.workers)} workers serving"
                             + ("" if ok else "; last reload FAILED"))
        self.notifier.ready()

    async def _keep_alive(self) -> None:
        """A worker that dies is started again; the others keep answering meanwhile."""
        while True:
            await asyncio.sleep(RESTART_DELAY)
            for w in self.workers:
                if not w.alive():
                    code = w.proc.returncode if w.proc else None
                    log.error("worker %d exited (%s); starting it again", w.index, code)
                    with contextlib.suppress(Exception):
                        await w.start(self.argv)

    async def _stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        for w in self.workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                w.proc.kill()


def worker_argv(argv: list[str]) -> list[str]:
    """The supervisor's own command line, for its workers (minus options they must not take)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--worker-fd":
            skip = True
            continue
        out.append(a)
    return out

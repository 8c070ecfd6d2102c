"""``workers: N``: N processes answering on the same addresses, one metrics endpoint.

Why processes: one Python process answers from one core.  On a 4-core
Raspberry Pi, N workers each bind every listen address with SO_REUSEPORT and
the kernel spreads clients across them.  The supervisor (the process systemd
starts) binds no DNS socket: it starts the workers as fresh interpreters (no
fork of a running event loop), serves /metrics by asking every worker for a
snapshot of its counters at scrape time and adding them up (so counts stay
exact), forwards reloads, restarts a worker that dies, and speaks sd_notify.

Channel: a socketpair per worker.  The supervisor first sends the validated
config (a length-prefixed pickle) and waits for ``ready``; then it sends one
byte (``S`` for a stats snapshot, ``R`` followed by the new config for a
reload), and the worker answers one length-prefixed pickle.  Pickle is safe
here: both ends are this program, over a private pair.

Why the supervisor hands out the config: a worker that read the file itself
would, after a crash, restart into whatever is on disk now -- a broken file
made a restarted worker exit in a loop.  Only the supervisor reads the file,
and only a config it validated reaches a worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
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
RESTART_DELAY = 1.0        # first back-off after a worker dies; doubles per quick death
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 30.0        # a worker up this long resets its back-off
# Counters (they only grow) that a dead worker's last snapshot keeps contributing.
# Gauges (cache size, list facts, upstream health, reload success) die with it.
COUNTERS = ("queries", "blocked", "blocked_domains", "request_duration", "upstream_requests",
            "upstream_duration", "cache_hits", "cache_misses", "cache_evictions", "limited",
            "rebind_removed", "list_load_failures")


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
            elif name == "upstream_transport":   # a fact of the config: the same in every worker
                mine.update(value)
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
                    else:
                        mine[k] = mine.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                setattr(total, name, (mine or 0) + value)
    return total


# --- the worker side --------------------------------------------------------------


def _no_metrics(config: Config) -> Config:
    return dataclasses.replace(config, metrics=dataclasses.replace(config.metrics, listen=None))


async def run_worker(fd: int, log_level: str | None = None) -> int:
    """One worker: take the config from the supervisor on ``fd``, serve DNS on shared ports."""
    from .server import Server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor sends R
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    config: Config = await _read_frame(reader)
    logging.basicConfig(level=getattr(logging, (log_level or config.log_level).upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    current = _no_metrics(config)
    server = Server(current, reload_config=lambda: current, reuse_port=True)
    await server.start()
    tune_gc()

    async def channel() -> str:
        nonlocal current
        await _send_frame(writer, "ready")
        while True:
            cmd = await reader.read(1)
            if not cmd:            # the supervisor is gone: so are we
                return "the supervisor closed the channel"
            if cmd == b"S":
                await _send_frame(writer, plain_stats(server.stats))
            elif cmd == b"R":
                current = _no_metrics(await _read_frame(reader))
                await _send_frame(writer, await server.reload())

    task = asyncio.create_task(channel())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        why = task.result() if task.exception() is None else f"channel failed: {task.exception()!r}"
    else:
        why = "asked to stop (SIGTERM/SIGINT)"
    log.info("worker %d stopping: %s", os.getpid(), why)
    task.cancel()
    stopper.cancel()
    await server.stop()
    return 0


def worker_main(fd: int, log_level: str | None, runner: Any) -> int:
    """Entry point of a worker process (``serve --worker-fd``): it reads no config file."""
    return int(runner(run_worker(fd, log_level)))


# --- the supervisor side -------------------------------------------------------------


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None   # its latest counters, kept when it dies
        self.started_at = 0.0
        self.quick_deaths = 0
        self.next_start = 0.0

    async def start(self, argv: list[str], config: Config) -> None:
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resolver", *argv, "--worker-fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),))
        theirs.close()
        self.started_at = time.monotonic()
        self.last = None
        self.reader, self.writer = await asyncio.open_connection(sock=mine)
        await _send_frame(self.writer, config)
        async with asyncio.timeout(READY_TIMEOUT):
            assert await _read_frame(self.reader) == "ready"

    async def ask(self, cmd: bytes, payload: Any = None) -> Any:
        async with self.lock, asyncio.timeout(ASK_TIMEOUT):
            assert self.writer is not None and self.reader is not None
            self.writer.write(cmd)
            if payload is not None:
                await _send_frame(self.writer, payload)
            return await _read_frame(self.reader)

    async def stats(self) -> dict[str, Any] | None:
        """Its counters now, else the last ones it gave (a slow worker must not lower totals)."""
        try:
            part = await self.ask(b"S")
        except Exception:  # noqa: BLE001 - timed out, died mid-answer: use what we had
            return self.last
        if isinstance(part, dict):
            self.last = part
        return self.last

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close_channel(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def counters_only(part: dict[str, Any]) -> dict[str, Any]:
    """The counters of a snapshot: what a dead worker keeps adding to the totals."""
    return {k: v for k, v in part.items() if k in COUNTERS}


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "with an unknown status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"with code {code}"


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
        self.retired: dict[str, Any] = {}   # counters of workers that died, added up
        self.reload_ok = 1                  # 0 after a reload the supervisor refused

    async def merged(self) -> Stats:
        """Every live worker's counters plus those of dead ones: totals never go down."""
        parts = await asyncio.gather(*(w.stats() for w in self.workers if w.alive()),
                                     return_exceptions=True)
        live = [p for p in parts if isinstance(p, dict)]
        total = merge([*live, self.retired] if self.retired else live)
        # A config the supervisor refused never reached a worker: the failure is ours to show.
        total.config_reload_success = min(total.config_reload_success, self.reload_ok)
        return total

    def _retire(self, w: _Worker) -> None:
        if w.last is not None:
            both = merge([self.retired, counters_only(w.last)] if self.retired
                         else [counters_only(w.last)])
            self.retired = counters_only(plain_stats(both))
            w.last = None

    async def run(self) -> int:
        try:
            await asyncio.gather(*(w.start(self.argv, self.config) for w in self.workers))
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
        ok = False
        try:
            # Validate first (in a thread, off the loop): a broken config is sent to no one,
            # and a worker started later gets the config that is being served.
            new = await asyncio.to_thread(self.reload_config)
            self.config = new
            results = await asyncio.gather(*(w.ask(b"R", new) for w in self.workers if w.alive()),
                                           return_exceptions=True)
            ok = all(r is True for r in results)
        except ConfigError as exc:
            log.error("reload failed, workers keep the running configuration:\n%s", exc)
        except Exception:
            log.exception("reload failed, workers keep the running configuration")
        finally:
            self.reload_ok = 1 if ok else 0
            self.notifier.status(f"{len(self.workers)} workers serving"
                                 + ("" if ok else "; last reload FAILED"))
            self.notifier.ready()

    async def _keep_alive(self) -> None:
        """A worker that dies (whatever its exit code) is logged and started again, with a
        back-off that doubles per quick death; the others keep answering meanwhile."""
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for w in self.workers:
                if w.alive():
                    continue
                if w.proc is not None:   # just found dead: log it once, keep its counts
                    code = w.proc.returncode
                    pid = w.proc.pid
                    w.proc = None
                    w.close_channel()
                    self._retire(w)
                    quick = now - w.started_at < STABLE_AFTER
                    w.quick_deaths = w.quick_deaths + 1 if quick else 0
                    delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, w.quick_deaths - 1))
                    w.next_start = now + delay
                    log.error("worker %d (pid %d) exited %s; starting it again in %.0f s",
                              w.index, pid, _describe_exit(code), delay)
                if now >= w.next_start:
                    try:
                        await w.start(self.argv, self.config)
                        log.info("worker %d started again (pid %d)", w.index, w.proc.pid)  # type: ignore[union-attr]
                    except Exception as exc:  # noqa: BLE001 - keep supervising the others
                        log.error("worker %d did not start: %r", w.index, exc)
                        if w.proc is not None and w.proc.poll() is None:
                            w.proc.kill()

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

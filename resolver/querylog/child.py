"""The query log's writer process: reads batches of rows from the server over a pipe, writes them.

Why a process and not a thread: a writer thread shares the GIL with the event
loop.  Every SQLite call releases and retakes it, and on a busy loop each
retake makes the loop stop and wait for the scheduler; measured with
bench/querylog_ab.py, that halved the blocked-answer throughput under load
although the writer used little CPU.  The server only appends row tuples to a
list and, from a loop callback, writes them marshalled to a non-blocking pipe
(frames.py); this process decodes and writes them, at the lowest priority
(SCHED_IDLE and nice 19: it runs when a CPU would idle), so under a flood the
answers win and the server's bound drops rows (counted) instead.  What has arrived by the time one transaction is written
goes into the next one, so a busy server gets fewer, larger transactions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from . import frames
from .writer import INVENTORY_SECONDS, MAX_BATCH, Writer

READ_BYTES = 1 << 20
REPORT_SECONDS = 1.0   # counter changes go to the server at most this often (and with each flush)


class Reporter:
    """Counter changes since the last report, so the server can add them to its own Stats."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.written = 0
        self.dropped: dict[str, int] = {}
        self.new_names: dict[str, int] = {}

    def deltas(self) -> dict[str, Any]:
        s = self.stats
        out = {"written": s.querylog_written - self.written,
               "dropped": _diff(s.querylog_dropped, self.dropped),
               "new_names": _diff(s.device_new_names, self.new_names)}
        self.written = s.querylog_written
        self.dropped = dict(s.querylog_dropped)
        self.new_names = dict(s.device_new_names)
        return out


def _diff(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


def serve(inp: int, out: Any, writer: Writer) -> None:
    """Write what arrives on fd ``inp`` until the server closes the pipe; report on ``out``."""
    report = Reporter(writer.stats)
    reader = frames.FrameReader()
    poll = select.poll()
    poll.register(inp, select.POLLIN)
    batches: list[tuple[float, list[frames.Row]]] = []
    queued = 0
    tokens: list[int] = []
    eof = False
    next_report = 0.0
    while not eof:
        if not poll.poll(INVENTORY_SECONDS * 1000):
            writer.maintain()
            next_report = _report(out, report, None, 0.0, force=False)
            continue
        # Read what is there (more, while it keeps coming, up to one transaction's worth).
        while True:
            data = os.read(inp, READ_BYTES)
            if not data:
                eof = True
                break
            for kind, body in reader.feed(data):
                if kind == frames.ROWS:
                    batches.append(body)
                    queued += len(body[1])
                else:
                    tokens.append(body)
            if tokens or queued >= MAX_BATCH or not poll.poll(0):
                break
        if batches:
            writer.write_batches(batches)
            batches, queued = [], 0
        if tokens or eof:
            writer.sync()
        if tokens or eof or time.monotonic() >= next_report:
            next_report = _report(out, report, max(tokens) if tokens else None, next_report,
                                  force=bool(tokens) or eof)
            tokens = []
    writer.close()


def _report(out: Any, report: Reporter, token: int | None, next_at: float, force: bool) -> float:
    """Send the counter changes (always with a flush token, else only if any); when the next
    report may go.  At most one a second under traffic: each is a wakeup of the server's loop."""
    d = report.deltas()
    if force or d["written"] or d["dropped"] or d["new_names"]:
        d["token"] = token
        out.write(json.dumps(d).encode() + b"\n")
        out.flush()
        return time.monotonic() + REPORT_SECONDS
    return next_at


def main() -> int:
    opts = json.loads(sys.argv[1])
    logging.basicConfig(level=opts.get("level", logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C and systemd's stop signal go to the whole group: this process ends when the
    # server closes the pipe (or dies), after writing what it was sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(19)
    # SCHED_IDLE: any runnable task, the server's loop first, preempts this one at once;
    # with nice 19 alone it may finish its slice on the server's CPU when the server wakes
    # (measured: hit p99 at 5,000/s 0.83-1.57 ms with nice alone, 0.28-0.71 ms with both).
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # The pipes are fds 0 and 1; nothing else may write to stdout.
    inp = os.dup(0)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    writer = Writer(Settings(**opts["settings"]), Stats(), opts.get("page_limit"),
                    shared=opts.get("shared", False))
    try:
        serve(inp, out, writer)
    except (BrokenPipeError, ConnectionResetError):   # the server went away
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

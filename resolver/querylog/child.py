"""The query log's writer process: reads batches of rows from the server over a pipe, writes them.

Why a process and not a thread: a writer thread shares the GIL with the event
loop.  Every SQLite call releases and retakes it, and on a busy loop each
retake makes the loop stop and wait for the scheduler; measured with
bench/querylog_ab.py, that halved the blocked-answer throughput under load
although the writer used little CPU.  Here the server only appends to a deque
and ships pickled batches from a small thread; this process runs at a lower
priority (nice 19), so under a flood the answers win and the queue bound drops
rows (counted) instead.

Protocol (``multiprocessing.connection`` framing over stdin/stdout):
in ``("rows", [row, ...])`` or ``("flush", token)``; out ``("stats", token, deltas)``
after a flush and whenever the input is drained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from ..config import QueryLog as Settings
from ..stats import Stats
from .writer import PRUNE_SECONDS, Writer


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


def serve(inp: Connection, out: Connection, writer: Writer) -> None:
    """Write what arrives until the server closes the pipe."""
    report = Reporter(writer.stats)
    while True:
        if not inp.poll(PRUNE_SECONDS):
            writer.maintain()
            continue
        try:
            msg = inp.recv()
        except EOFError:
            break
        token = None
        if msg[0] == "rows":
            writer.write_all(msg[1])
        elif msg[0] == "flush":
            token = msg[1]
        if token is not None or not inp.poll():
            out.send(("stats", token, report.deltas()))
    writer.close()


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
    # The pipes are fds 0 and 1; nothing else may write to stdout.
    inp = Connection(os.dup(0), writable=False)
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    writer = Writer(Settings(**opts["settings"]), Stats(), opts.get("page_limit"))
    try:
        serve(inp, out, writer)
    except (BrokenPipeError, ConnectionResetError):   # the server went away
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

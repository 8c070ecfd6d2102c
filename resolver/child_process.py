"""Starting a helper process of the server, and reaping it without waiting on the event loop.

Why helper processes: a thread of the server shares the GIL with the event loop, and
work done there (encoding, SQLite) is paid by the answers.  The dnstap sender
(resolver/dnstap/child.py) is started with ``start``; the query log's writer
(resolver/querylog/child.py) does the same by hand and could use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def start(module: str, opts: dict[str, Any], **popen: Any) -> subprocess.Popen[bytes]:
    """``python -m module '<opts as JSON>'`` with this package importable (raises OSError)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT + (os.pathsep + path if path else "")}
    return subprocess.Popen([sys.executable, "-m", module, json.dumps(opts)], env=env, **popen)


def reap(proc: subprocess.Popen[bytes], timeout: float = 0.0) -> bool:
    """Wait at most ``timeout`` for ``proc`` to end; if it has not, a daemon thread (which
    holds no GIL while it waits) reaps it later.  ``True`` when it ended in time."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        return False


def as_child(nice: int) -> None:
    """In the helper: Ctrl-C and systemd's stop signal go to the whole group, but the helper
    ends when the server closes its end (after finishing its work), so ignore them; and give
    the answers the CPU first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(nice)

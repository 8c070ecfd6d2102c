"""Running out of file descriptors is a local limit, not an upstream failure.

Why: when ``socket()`` fails with EMFILE/ENFILE, the upstream did nothing
wrong.  Counting it as an upstream ``error`` (and marking the upstream down)
sent operators after the wrong thing.  It is counted in
``hushdns_limited_total{reason="fds"}`` and logged once per process with the
fix (raise ``LimitNOFILE=``), since a log line per query would flood the journal.
"""

from __future__ import annotations

import errno
import logging

from .stats import Stats

log = logging.getLogger("hushdns")
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
_logged = False


def is_fd_exhaustion(exc: OSError) -> bool:
    return exc.errno in FD_ERRNOS


def count(stats: Stats, client: str, exc: OSError) -> None:
    """Count one query turned away for lack of descriptors; log the first one."""
    global _logged
    key = (client, "fds")
    stats.limited[key] = stats.limited.get(key, 0) + 1
    if not _logged:
        _logged = True
        log.error("out of file descriptors (%s): queries that need a new upstream socket get "
                  "SERVFAIL; raise LimitNOFILE= (systemd) or ulimit -n. Counted in "
                  "hushdns_limited_total{reason=\"fds\"}; logged once.", exc.strerror or exc)

"""Bind failures said the way a person can act on them.

Why: the kernel's "Address already in use" names neither the address, the port nor the
protocol, and on a desktop the usual culprit (an mDNS responder, a local stub, a second
hushdns) is found by knowing exactly which of the three is taken.
"""

from __future__ import annotations

import errno

from .config import Endpoint, format_endpoint


class ListenError(OSError):
    """A socket hushdns needs could not be bound; ``str()`` is the whole message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "cannot listen"


def _cause(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address in use — another program holds it"
    if exc.errno == errno.EACCES:
        if 0 < port < 1024:
            return ("permission denied — ports below 1024 need root or CAP_NET_BIND_SERVICE "
                    "(the systemd unit grants it)")
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available — no interface of this machine has it"
    return exc.strerror or str(exc)


def listen_error(ep: Endpoint, proto: str, exc: OSError, option: str = "--listen") -> ListenError:
    """``cannot listen on 127.0.0.1:5533/udp: address in use — ...; use --listen``."""
    where = format_endpoint(ep)
    err = ListenError(f"cannot listen on {where}/{proto}: {_cause(exc, ep[1])}; use {option}")
    err.errno = exc.errno
    return err

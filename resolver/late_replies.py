"""Which upstream query IDs were given up on recently, so a late answer is not called a forgery.

Why: an upstream that answers after hushdns stopped waiting sends its reply to
a port that was closed and may since have been drawn again by a new query's
socket to the same upstream (with thousands in flight, a few percent of late
replies land that way).  That datagram fails the ID check like a forgery and
was counted as ``spoof_rejected``, so a merely slow upstream looked like an
attack.  It is still refused; it is counted as ``late`` when its ID is one
hushdns recently abandoned on that upstream.  A forger would have to know such
an ID, which is exactly what they lack.
"""

from __future__ import annotations

import collections

KEEP = 4096   # abandoned IDs remembered per upstream (a few seconds at high load)

_recent: dict[str, tuple[collections.deque[int], collections.Counter[int]]] = {}


def abandoned(label: str, qid: int) -> None:
    """Remember that the query ``qid`` to ``label`` was given up without an answer."""
    entry = _recent.get(label)
    if entry is None:
        if len(_recent) >= 1024:   # labels are upstream addresses; bound them anyway
            _recent.clear()
        entry = _recent[label] = (collections.deque(), collections.Counter())
    order, counts = entry
    order.append(qid)
    counts[qid] += 1
    if len(order) > KEEP:
        old = order.popleft()
        counts[old] -= 1
        if not counts[old]:
            del counts[old]


def is_late(label: str, data: bytes) -> bool:
    """Is ``data`` a reply (QR set) carrying an ID recently abandoned on ``label``?"""
    if len(data) < 12 or not data[2] & 0x80:
        return False
    entry = _recent.get(label)
    return entry is not None and (data[0] << 8 | data[1]) in entry[1]

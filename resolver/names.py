"""Domain names as the resolver compares them: lower-case, dotted, no trailing dot.

Why one helper: forward zones, rebind allow zones, allow-rule explanations and
``hushdns query`` all ask "which of these zones is this name in?", a walk over
the name's parent suffixes (one hash lookup per label, never a scan).  The
blocklist matcher (``DomainIndex.match``) does the same walk inline, as the
hottest loop of the resolver, and says so.
"""

from __future__ import annotations

from collections.abc import Container, Iterator


def suffixes(name: str) -> Iterator[str]:
    """``name`` and each of its parents: "a.b.c", "b.c", "c" (just "" for the root)."""
    s = name
    while True:
        yield s
        i = s.find(".")
        if i < 0:
            return
        s = s[i + 1:]


def in_zones(name: str, zones: Container[str]) -> str | None:
    """The longest of ``zones`` that ``name`` is in or under, or None."""
    s = name
    while True:
        if s in zones:
            return s
        i = s.find(".")
        if i < 0:
            return None
        s = s[i + 1:]

"""Domain names as the resolver compares them: lower-case, dotted, no trailing dot.

Why one helper: forward zones, rebind allow zones, allow-rule explanations and
``hushdns query`` all ask "which of these zones is this name in?", a walk over
the name's parent suffixes (one hash lookup per label, never a scan).  The
blocklist matcher (``DomainIndex.match``) does the same walk inline, as the
hottest loop of the resolver, and says so.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator


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


class Zones:
    """A set of zones that rejects most names with one set lookup, before any suffix walk.

    Why: a stage that asks "is this name under one of my few zones?" for every
    query (the bypass stage's DoH resolver names, forward zones) would otherwise
    walk every parent of every name, and almost no name is under one.  A name
    can only be in a zone whose last two labels it ends with (or whose single
    label it ends with), so those tails are checked first.
    """

    __slots__ = ("zones", "tails", "tops")

    def __init__(self, zones: Iterable[str]) -> None:
        self.zones = frozenset(zones)
        self.tails = frozenset(z[_tail_start(z):] for z in self.zones if "." in z)
        self.tops = frozenset(z for z in self.zones if "." not in z)

    def __contains__(self, name: object) -> bool:
        return name in self.zones

    def __len__(self) -> int:
        return len(self.zones)

    def __iter__(self) -> Iterator[str]:
        return iter(self.zones)

    def find(self, name: str) -> str | None:
        """As ``in_zones(name, zones)``: the longest zone ``name`` is in or under, or None."""
        if not self.may_hold(name):
            return None
        return in_zones(name, self.zones)

    def may_hold(self, name: str) -> bool:
        """False when ``name`` is in none of the zones (one or two set lookups); True: maybe."""
        i = name.rfind(".")
        if i < 0:
            return name in self.tops
        return name[name.rfind(".", 0, i) + 1:] in self.tails or \
            (bool(self.tops) and name[i + 1:] in self.tops)


def _tail_start(name: str) -> int:
    """Where the last two labels of ``name`` (which has a dot) start."""
    return name.rfind(".", 0, name.rfind(".")) + 1

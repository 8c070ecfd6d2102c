"""The domain matcher: one dict from domain to a bit mask of the lists that contain it.

Why a mask: groups choose different lists, and one shared dict (instead of one
per group) keeps a million-domain list in memory once.  A lookup walks the
name's parent suffixes, one dict probe per label, and never scans rules.
Regex rules are the exception: one compiled alternation per list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .parse import Parsed


@dataclass(slots=True)
class Match:
    """Why a name matched: the list's bit, the rule (domain or regex) and whether it allows."""

    bit: int
    rule: str
    allow: bool
    regex: bool = False


class DomainIndex:
    """All loaded lists, each owning one bit."""

    def __init__(self) -> None:
        self.domains: dict[str, int] = {}
        self.regexes: list[tuple[int, re.Pattern[str]]] = []
        self.regex_mask = 0
        self.allow_bits = 0
        self._masks: dict[int, int] = {}

    def add(self, bit: int, parsed: Parsed, allow: bool = False) -> None:
        """Add one list's rules under ``bit`` (a power of two)."""
        d = self.domains
        intern = self._masks.setdefault
        for name in parsed.domains:
            new = d.get(name, 0) | bit
            d[name] = intern(new, new)
        sources = parsed.regexes
        if sources:
            self.regexes.append((bit, re.compile("|".join(f"(?:{s})" for s in sources))))
            self.regex_mask |= bit
        if allow:
            self.allow_bits |= bit

    def match(self, name: str, block: int, allow: int) -> Match | None:
        """The block that applies to ``name`` for a group, or None when allowed or unlisted.

        An allow rule anywhere on the name's suffix path wins over any block rule;
        among block rules the most specific (longest) one is reported.  With no
        allow list for the group, the walk ends at that first (longest) block rule:
        the parents cannot change the verdict (a million-entry index makes each
        probe a CPU cache miss).
        """
        d = self.domains
        found = 0
        rule = ""
        s = name
        while True:
            v = d.get(s)
            if v is not None:
                if v & allow:
                    return None
                if not found and v & block:
                    found = v & block
                    rule = s
                    if not allow:
                        break
            i = s.find(".")
            if i < 0:
                break
            s = s[i + 1:]
        if self.regex_mask & (block | allow):
            for bit, rx in self.regexes:
                if bit & allow and rx.search(name):
                    return None
            if not found:
                for bit, rx in self.regexes:
                    if bit & block and rx.search(name):
                        return Match(bit, rx.pattern, False, True)
        if found:
            return Match(found & -found, rule, False)
        return None

    def explain(self, name: str, block: int, allow: int) -> Match | None:
        """Like ``match`` but also reports the allow rule that let a listed name through."""
        d = self.domains
        s = name
        while True:
            v = d.get(s)
            if v is not None and v & allow:
                return Match((v & allow) & -(v & allow), s, True)
            i = s.find(".")
            if i < 0:
                break
            s = s[i + 1:]
        for bit, rx in self.regexes:
            if bit & allow and rx.search(name):
                return Match(bit, rx.pattern, True, True)
        return self.match(name, block, allow)

    def __len__(self) -> int:
        return len(self.domains)

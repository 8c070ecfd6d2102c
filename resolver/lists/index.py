"""The domain matcher: a set of every listed domain, and which lists each one is on.

Why a set, and masks only for the exceptions: a million-entry table cannot
stay in the CPU caches, so every probe of the suffix walk costs memory
reads, and under load those are most of what a bigger list adds per query.
A set probe reads one entry (its hash is stored beside the key) where a dict
keyed by str reads an index slot, an entry and the key object.  Which lists
a name is on is a bit mask: the mask most names share is ``common`` and
only the others are stored (with one list, none), so the set alone answers
the walk and one shared table still keeps a million-domain list in memory
once for every group.  A lookup is one probe per label of the name and never
scans rules.  Regex rules are the exception: one compiled alternation per list.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..names import suffixes
from .parse import Parsed
from .regex_index import RegexSet
from .safe_regex import MAX_NAME


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
        self.names: set[str] = set()        # every listed domain
        self.masks: dict[str, int] = {}     # lists of the names not on exactly ``common``
        self.common = 0
        self.regexes: list[tuple[int, re.Pattern[str]]] = []
        self.regex_sources: dict[int, list[str]] = {}   # for ``explain``: which regex of a list
        self.regex_set = RegexSet()                      # what ``match`` runs: see regex_index.py
        self.regex_mask = 0
        self.allow_bits = 0
        self._interned: dict[int, int] = {}

    def add(self, bit: int, parsed: Parsed, allow: bool = False) -> None:
        """Add one list's rules under ``bit`` (a power of two)."""
        self._add_domains(bit, parsed.domains)
        self.add_regexes(bit, parsed.regexes)
        if allow:
            self.allow_bits |= bit

    def add_regexes(self, bit: int, sources: list[str]) -> None:
        """One list's regex rules under ``bit``: what ``match`` runs and ``explain`` names.
        The one way in, so an index assembled elsewhere (``offload``) matches the same."""
        if sources:
            self.regexes.append((bit, re.compile("|".join(f"(?:{s})" for s in sources))))
            self.regex_sources[bit] = list(sources)
            self.regex_set.add(bit, sources)
            self.regex_mask |= bit

    def _add_domains(self, bit: int, domains: Iterable[str]) -> None:
        """Merge one list's names; set operations keep a big list's cost in C, not per name.

        After the merge the implicit mask is whichever of three covers most names:
        the old common one, the old common one plus this list, or this list alone.
        """
        names = self.names
        if not names:
            names.update(domains)
            self.common = bit
            return
        masks, common = self.masks, self.common
        intern = self._interned.setdefault
        new = set(domains)
        both = new & names
        new -= both
        joined = both.difference(masks) if masks else both   # on exactly ``common`` so far
        if len(joined) < len(both):
            for name in both.intersection(masks):            # names with a stored mask
                m = masks[name] | bit
                masks[name] = intern(m, m)
        m = common | bit
        stay = len(names) - len(masks) - len(joined)         # stay on exactly ``common``
        if stay >= len(joined) and stay >= len(new):
            masks.update(dict.fromkeys(joined, intern(m, m)))
            masks.update(dict.fromkeys(new, bit))
        else:
            if stay:
                masks.update(dict.fromkeys(names.difference(masks).difference(joined), common))
            if len(joined) >= len(new):
                masks.update(dict.fromkeys(new, bit))
                self.common = intern(m, m)
            else:
                masks.update(dict.fromkeys(joined, intern(m, m)))
                self.common = bit
        names |= new
        if len(masks) > len(names) // 2:
            self._rebalance()

    def _rebalance(self) -> None:
        """Make the commonest mask the implicit one, so that ``masks`` holds the minority."""
        masks, common = self.masks, self.common
        counts = Counter(masks.values())
        counts[common] += len(self.names) - len(masks)
        best = counts.most_common(1)[0][0]
        if best == common:
            return
        implicit = self.names.difference(masks)
        self.masks = {name: m for name, m in masks.items() if m != best}
        self.masks.update(dict.fromkeys(implicit, common))
        self.common = best

    def mask_of(self, name: str) -> int:
        """The bits of the lists ``name`` itself is on (0 when on none)."""
        if name not in self.names:
            return 0
        return self.masks.get(name, self.common)

    def domains_of(self, bit: int) -> list[str]:
        """Every domain on the list with ``bit``."""
        if self.common & bit:
            masks = self.masks
            common = self.common
            return [n for n in self.names if masks.get(n, common) & bit]
        return [n for n, m in self.masks.items() if m & bit]

    def match(self, name: str, block: int, allow: int) -> Match | None:
        """The block that applies to ``name`` for a group, or None when allowed or unlisted.

        An allow rule anywhere on the name's suffix path wins over any block rule;
        among block rules the most specific (longest) one is reported.  With no
        allow list for the group, the walk ends at that first (longest) block rule:
        the parents cannot change the verdict.

        The walk is ``names.suffixes`` written out: this is the hottest loop of
        the resolver, and a generator costs a frame switch per label.
        """
        names = self.names
        masks = self.masks
        common = self.common
        found = 0
        rule = ""
        s = name
        while True:
            if s in names:
                v = masks.get(s, common) if masks else common
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
        # Names are at most 253 characters on the wire; the bound is what keeps a safe
        # (linear or low-polynomial, see safe_regex) pattern's match time small.
        # A regex can change the verdict only if it may allow, or block what no domain did.
        regex_mask = self.regex_mask
        if (regex_mask & allow or (not found and regex_mask & block)) and len(name) <= MAX_NAME:
            allowed, bit, pattern = self.regex_set.check(name, block, allow, not found)
            if allowed:
                return None
            if bit:
                return Match(bit, pattern, False, True)
        if found:
            return Match(found & -found, rule, False)
        return None

    def explain(self, name: str, block: int, allow: int) -> Match | None:
        """Like ``match`` but also reports the allow rule that let a listed name through."""
        for s in suffixes(name):
            v = self.mask_of(s) & allow
            if v:
                return Match(v & -v, s, True)
        for bit, rx in self.regexes:
            if bit & allow and rx.search(name):
                return Match(bit, self.which_regex(bit, name, rx.pattern), True, True)
        m = self.match(name, block, allow)
        if m is not None and m.regex:
            m.rule = self.which_regex(m.bit, name, m.rule)
        return m

    def which_regex(self, bit: int, name: str, joined: str) -> str:
        """The one regex of a list's alternation that matched (what ``hushdns query`` shows)."""
        for src in self.regex_sources.get(bit, ()):
            if re.search(src, name):
                return src
        return joined

    def __len__(self) -> int:
        return len(self.names)

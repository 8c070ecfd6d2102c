"""Regex rules found by the literal suffix they end with, so a query runs only the ones that can match.

Why: the curated lists cover host families with anchored regexes
(``/^[a-z]{2}-stsdk\\.vivoglobal\\.com$/``).  Run as one alternation per list,
every name no domain rule lists (every forwarded or cached query) would run
every list's alternation: with a few regexes in each of twenty lists that is
several microseconds a query, more than the whole domain walk.  A regex that
ends in a literal ``\\.<labels>$`` can only match names below those labels, so
it is filed under them and tried only when the name's suffix walk meets them;
regexes without such an ending (``/ads?[0-9]*\\./``) are tried for every name,
as before.  Verdicts are exactly those of trying every list's regexes in list
order: an allow regex wins, else the first list (in order) whose regex matches.
"""

from __future__ import annotations

import re

from ..names import Zones

_MAX_ENDINGS = 64


def _expand(items: list, depth: int = 0) -> set[str] | None:
    """Every string a regex fragment matches, when they are few and literal (else None)."""
    from re import _parser as sre  # the stdlib's own regex parser: no second grammar here

    out = {""}
    for op, av in items:
        if op is sre.LITERAL:
            alts = {chr(av)}
        elif op is sre.IN and all(o is sre.LITERAL for o, _ in av):
            alts = {chr(v) for _, v in av}
        elif op is sre.BRANCH:
            alts = set()
            for sub in av[1]:
                e = _expand(sub, depth + 1)
                if e is None:
                    return None
                alts |= e
        elif op is sre.SUBPATTERN and not av[1] & re.IGNORECASE:
            alts = _expand(av[3], depth + 1)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and av[0] in (0, 1) and av[1] == 1:
            alts = _expand(av[2], depth + 1)
            if alts is not None and av[0] == 0:
                alts = alts | {""}
        else:
            return None
        if alts is None or depth > 20:
            return None
        out = {a + b for a in out for b in alts}
        if len(out) > _MAX_ENDINGS:
            return None
    return out


def literal_suffixes(src: str) -> frozenset[str] | None:
    """Domains one of which every match of ``src`` ends below, or None when there is no such set.

    ``^obus-[a-z0-9-]+\\.heytapmobi(?:le)?\\.com$`` -> {heytapmobi.com, heytapmobile.com}:
    read with the stdlib's regex parser, the items before the final ``$`` are
    expanded right to left while they are literal (characters, small classes
    of characters, groups and alternations of those, ``?``), at most 64
    endings; each ending must hold a dot, and the key is what follows its
    first dot.  A top-level ``|``, case-insensitive matching or a pattern the
    parser rejects gives None (such a regex is tried for every name).
    """
    from re import _parser as sre

    try:
        parsed = sre.parse(src)
    except Exception:   # noqa: BLE001 - anything the parser refuses is simply not filed
        return None
    items = list(parsed)
    if parsed.state.flags & re.IGNORECASE or not items or items[-1] != (sre.AT, sre.AT_END):
        return None
    endings = {""}
    for item in reversed(items[:-1]):
        alts = _expand([item])
        if alts is None:
            break
        grown = {a + e for a in alts for e in endings}
        if len(grown) > _MAX_ENDINGS:
            break
        endings = grown
    keys = set()
    for e in endings:
        dot = e.find(".")
        key = e[dot + 1:] if dot >= 0 else ""
        if not key or key.startswith(".") or ".." in key or key.endswith("."):
            return None
        keys.add(key)
    return frozenset(keys)


def required_literal(src: str) -> str:
    """The longest run of literal characters every match of ``src`` contains ("" if none).

    Why: a regex with no literal suffix is tried for every name; a substring test
    (``"amazon." in name``) first costs tens of nanoseconds and rules out nearly all.
    Only the pattern's top level is read (no alternation there, no case-insensitive
    flag); anything else gives "" and the regex is simply always tried.
    """
    from re import _parser as sre

    try:
        parsed = sre.parse(src)
    except Exception:   # noqa: BLE001 - refused patterns get no filter
        return ""
    if parsed.state.flags & re.IGNORECASE:
        return ""
    best = run = ""
    for op, av in parsed:
        if op is sre.LITERAL:
            run += chr(av)
            if len(run) > len(best):
                best = run
        else:
            run = ""
    return best


_NOTHING = (False, 0, "")


class RegexSet:
    """Every list's regexes, grouped per list under the literal suffix they need."""

    def __init__(self) -> None:
        # suffix -> [(list order, bit, compiled alternation)]; None: regexes tried for every name
        self.by_suffix: dict[str, list[tuple[int, int, re.Pattern[str]]]] = {}
        # (a literal every match contains, or "", and the regex): tried for every name
        self.always: list[tuple[str, tuple[int, int, re.Pattern[str]]]] = []
        self._lists = 0
        # The suffixes' last two labels: most names end in none, and skip the walk.
        self._filter = Zones(())

    def add(self, bit: int, sources: list[str]) -> None:
        order = self._lists
        self._lists += 1
        groups: dict[str | None, list[str]] = {}
        for s in sources:
            for key in literal_suffixes(s) or (None,):
                groups.setdefault(key, []).append(s)
        for key, srcs in groups.items():
            if key is None:   # one alternation per literal the regexes need
                by_literal: dict[str, list[str]] = {}
                for src in srcs:
                    by_literal.setdefault(required_literal(src), []).append(src)
                for lit, group in by_literal.items():
                    self.always.append((lit, (order, bit, re.compile(
                        "|".join(f"(?:{s})" for s in group)))))
                continue
            entry = (order, bit, re.compile("|".join(f"(?:{s})" for s in srcs)))
            self.by_suffix.setdefault(key, []).append(entry)
        self._filter = Zones(self.by_suffix)

    def candidates(self, name: str) -> list[tuple[int, int, re.Pattern[str]]]:
        """The groups that can match ``name``, in list order."""
        by_suffix = self.by_suffix
        found = []
        for lit, e in self.always:
            if lit in name:
                found.append(e)
        if by_suffix and self._filter.may_hold(name):
            s = name
            while True:
                group = by_suffix.get(s)
                if group is not None:
                    found += group
                i = s.find(".")
                if i < 0:
                    break
                s = s[i + 1:]
        if len(found) > 1:
            found.sort(key=lambda e: e[0])
        return found

    def check(self, name: str, block: int, allow: int,
              want_block: bool) -> tuple[bool, int, str]:
        """(allowed, block bit or 0, pattern): an allow regex wins; else the first list's block regex."""
        # Most names (every ordinary query) are below no regex's suffix and contain no
        # always-regex's literal: answered here, as Zones.may_hold and candidates inlined.
        f = self._filter
        i = name.rfind(".")
        if (name[name.rfind(".", 0, i) + 1:] not in f.tails if i >= 0 else name not in f.tops) \
                and not f.tops:
            for lit, _ in self.always:
                if lit in name:
                    break
            else:
                return _NOTHING
        cands = self.candidates(name)
        if not cands:
            return False, 0, ""
        if allow:
            for _, bit, rx in cands:
                if bit & allow and rx.search(name):
                    return True, bit, rx.pattern
        if want_block:
            for _, bit, rx in cands:
                if bit & block and rx.search(name):
                    return False, bit, rx.pattern
        return False, 0, ""

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


class RegexSet:
    """Every list's regexes, grouped per list under the literal suffix they need."""

    def __init__(self) -> None:
        # suffix -> [(list order, bit, compiled alternation)]; None: regexes tried for every name
        self.by_suffix: dict[str, list[tuple[int, int, re.Pattern[str]]]] = {}
        self.always: list[tuple[int, int, re.Pattern[str]]] = []
        self._lists = 0

    def add(self, bit: int, sources: list[str]) -> None:
        order = self._lists
        self._lists += 1
        groups: dict[str | None, list[str]] = {}
        for s in sources:
            for key in literal_suffixes(s) or (None,):
                groups.setdefault(key, []).append(s)
        for key, srcs in groups.items():
            entry = (order, bit, re.compile("|".join(f"(?:{s})" for s in srcs)))
            if key is None:
                self.always.append(entry)
            else:
                self.by_suffix.setdefault(key, []).append(entry)

    def candidates(self, name: str) -> list[tuple[int, int, re.Pattern[str]]]:
        """The groups that can match ``name``, in list order."""
        by_suffix = self.by_suffix
        found = list(self.always)
        if by_suffix:
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

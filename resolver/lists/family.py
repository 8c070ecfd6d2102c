"""Family rules: anchored regexes that name a family of vendor hosts in one line.

Why their own checks: a regex is compiled into one alternation per list that
every query runs, so it must be linear (no nested quantifiers) and must name
whole host names (anchored), never "anything containing".  Curated lists and
triage files use the same rules (blocklists/README.md, blocklists/triage/README.md).
"""

from __future__ import annotations

import re

MAX_REGEXES_PER_FILE = 12


def regex_problem(src: str) -> str | None:
    """Why ``src`` is not an acceptable family regex (None when it is).

    Anchored at both ends (it names whole host names, never "anything
    containing"), compiles, and has no quantified group that itself holds a
    quantifier (``(a+)+`` backtracks exponentially; rules are compiled into one
    alternation that every query runs).
    """
    if not src.startswith("^") or not src.endswith("$"):
        return "anchor the regex at both ends: /^...$/"
    try:
        re.compile(src)
    except re.error as exc:
        return f"bad regex: {exc}"
    if _nested_quantifier(src):
        return "nested quantifier (a quantified group that holds a quantifier): keep regexes linear"
    return None


def _nested_quantifier(src: str) -> bool:
    """True when a group that contains ``*``, ``+`` or ``{n,}`` is itself repeated."""
    stack: list[bool] = []      # per open group: does it contain an unbounded quantifier?
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            j = src.find("]", i + 2)
            i = n if j < 0 else j + 1
            continue
        if c == "(":
            stack.append(False)
        elif c == ")" and stack:
            inner = stack.pop()
            nxt = src[i + 1:i + 2]
            if inner and nxt in ("*", "+", "{"):
                return True
            if inner and stack:
                stack[-1] = True
        elif stack and (c in "*+" or (c == "{" and re.match(r"\{\d*,\d*\}", src[i:]))):
            stack[-1] = True
        i += 1
    return False

"""A conservative static check that a regex rule cannot backtrack catastrophically.

Why: Python's ``re`` backtracks, so ``/(a+)+$/`` against ``a``x24 + ``b.example``
took 1.15 s per query (doubling per character) and froze every answer, since
matching runs on the event loop.  Regex rules are meant to be few and simple
(DESIGN.md), so a rule whose *shape* permits exponential or high-polynomial
work is refused when the list loads, with a reason, rather than timed at
match time.  Why not a linear-time engine (google-re2): see README
"Dependencies and why".

The check reads the pattern as ``re`` parses it (``re._parser``, the stdlib's
own parser) and refuses:

- backreferences, conditionals (``(?(1)...)``) and lookarounds: not needed for
  host names, and outside what can be reasoned about cheaply;
- a repetition whose body can split one text into rounds in more than one way
  (each round must end, or start, with a mandatory character the rest of the body
  cannot match: ``([a-z0-9-]+\\.)*`` is fine; ``(a+)+``, ``([a-z]a?)*``, ``(\\w+\\.?)+``
  are not), a repetition of something that can be empty (``(a*)?``), and
  overlapping choices inside a repetition (``(\\w*a?\\.)*``);
- an alternation under a repetition whose branches can start alike
  (``(a|ab|b)*``);
- two unbounded repetitions over overlapping characters with nothing disjoint
  between them, unless the second one ends the pattern (``.*a.*b`` is refused,
  ``^.*track.*$`` is not), or, for a pattern anchored with ``^`` (tried at one
  position only), a second such pair.

The rules were checked by fuzzing: of 74k random accepted patterns none took
over 0.2 s on hostile names (``tests/test_safe_regex.py`` keeps a small run).

Sets of characters are computed over ASCII, the only characters a query name
(lower-case, IDN as punycode) can contain.  Input is bounded too: names are at
most 253 characters (``MAX_NAME``), checked where rules are matched.
"""

from __future__ import annotations

import re

try:
    from re import _constants as C
    from re import _parser as P
except ImportError:   # Python < 3.11
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

MAX_NAME = 253
ALL = frozenset(range(128))
_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT}
if hasattr(C, "POSSESSIVE_REPEAT"):
    _REPEATS.add(C.POSSESSIVE_REPEAT)
_FORBIDDEN = {C.GROUPREF: "a backreference", C.GROUPREF_EXISTS: "a conditional group",
              C.ASSERT: "a lookahead/lookbehind", C.ASSERT_NOT: "a negative lookahead/lookbehind"}
_CATEGORY: dict[object, frozenset[int]] = {}
for _name, _rx in (("DIGIT", r"\d"), ("NOT_DIGIT", r"\D"), ("SPACE", r"\s"), ("NOT_SPACE", r"\S"),
                   ("WORD", r"\w"), ("NOT_WORD", r"\W")):
    _CATEGORY[getattr(C, f"CATEGORY_{_name}")] = frozenset(
        i for i in ALL if re.fullmatch(_rx, chr(i)))
    for _uni in (f"CATEGORY_UNI_{_name}", f"CATEGORY_LOC_{_name}"):
        if hasattr(C, _uni):
            _CATEGORY[getattr(C, _uni)] = _CATEGORY[getattr(C, f"CATEGORY_{_name}")]


class UnsafeRegex(ValueError):
    """The reason a pattern was refused."""


def check(source: str) -> None:
    """Raise UnsafeRegex when ``source`` could backtrack catastrophically."""
    try:
        parsed = P.parse(source)
    except re.error:
        return   # re.compile reports syntax errors with its own message
    items = list(parsed)
    _walk(items, 0)
    # Anchored at the start, the pattern is tried at one position, not at each of the
    # name's: one overlapping pair costs n^2 steps (~64k for 253 characters), not n^3.
    anchored = bool(items) and items[0] == (C.AT, C.AT_BEGINNING)
    _chains(items, pairs_allowed=1 if anchored else 0)


def _unbounded(hi: int) -> bool:
    return hi == C.MAXREPEAT or hi > 16


def _walk(items: list, outer_repeats: int) -> None:
    """Forbidden constructs, nested repetition and ambiguous alternation, everywhere."""
    for op, av in items:
        if op in _FORBIDDEN:
            raise UnsafeRegex(f"{_FORBIDDEN[op]} is not allowed in a rule")
        if op in _REPEATS:
            lo, hi, body = av
            body = list(body)
            if hi > lo and _seq_min_width(body) == 0 and any(_variable(o, a) for o, a in body):
                raise UnsafeRegex("a repetition of something that can itself be empty "
                                  "(e.g. (a*)?, (a?)+) matches the same text in many ways")
            if hi > 1:
                _nested(body)
                _ambiguous_branches(body)
                _strict_chain(body)
            _walk(body, outer_repeats + (hi > 1))
            _chains(body)
        elif op == C.SUBPATTERN:
            _walk(list(av[-1]), outer_repeats)
            _chains(list(av[-1]))
        elif op == getattr(C, "ATOMIC_GROUP", None):
            _walk(list(av), outer_repeats)
        elif op == C.BRANCH:
            for alt in av[1]:
                _walk(list(alt), outer_repeats)
                _chains(list(alt))


_ONE_CHAR = {C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN}


def _nested(body: list) -> None:
    r"""An outer repetition's body must split its text into rounds in exactly one way.

    Accepted bodies: one character class (``[a-z]+``); a body without any choice
    (``(ab)+``); an alternation of fixed strings that start differently
    (``(com|net)+``); or a body that ends (or starts) with a mandatory character
    nothing else in the body can match, so each round's end (start) is forced
    (``([a-z0-9-]+\.)*``, ``(a|ab)*``).  Anything else (``(a+)+``, ``([a-z]a?)*``,
    ``(\w+\.?)+``) can match one text in exponentially many ways.
    """
    flat = _flatten(body)
    if len(flat) == 1 and flat[0][0] in _ONE_CHAR:
        return
    if not any(_variable(op, av) for op, av in flat):
        return
    if len(flat) == 1 and flat[0][0] == C.BRANCH and _fixed_branch(flat[0][1]):
        return
    for k in (len(flat) - 1, 0):
        op, av = flat[k]
        rest = flat[:k] + flat[k + 1:]
        if op in _ONE_CHAR and not _chars(op, av) & _seq_chars(rest):
            return
    raise UnsafeRegex("nested or ambiguous repetition (e.g. (a+)+, ([a-z]a?)*) can backtrack "
                      "exponentially; end each round with a character the rest cannot match, "
                      "as in ([a-z0-9-]+\\.)*")


def _variable(op: object, av: object) -> bool:
    """Can this element match texts of different lengths or in different ways?"""
    if op in _REPEATS:
        lo, hi, body = av  # type: ignore[misc]
        return lo != hi or any(_variable(o, a) for o, a in body)
    if op == C.SUBPATTERN:
        return any(_variable(o, a) for o, a in av[-1])  # type: ignore[index]
    if op == C.BRANCH:
        return True
    if op == getattr(C, "ATOMIC_GROUP", None):
        return any(_variable(o, a) for o, a in av)  # type: ignore[union-attr]
    return False


def _fixed_branch(av: object) -> bool:
    seen: frozenset[int] = frozenset()
    for alt in av[1]:  # type: ignore[index]
        alt = _flatten(list(alt))
        if not alt or any(_variable(o, a) or o not in _ONE_CHAR for o, a in alt):
            return False
        first = _chars(*alt[0])
        if first & seen:
            return False
        seen |= first
    return True


def _inner_repeat_chars(items: list) -> frozenset[int]:
    out: frozenset[int] = frozenset()
    for op, av in items:
        if op in _REPEATS:
            lo, hi, body = av
            if hi > 1:
                out |= _seq_chars(list(body))
            out |= _inner_repeat_chars(list(body))
        elif op == C.SUBPATTERN:
            out |= _inner_repeat_chars(list(av[-1]))
        elif op == getattr(C, "ATOMIC_GROUP", None):
            out |= _inner_repeat_chars(list(av))
        elif op == C.BRANCH:
            for alt in av[1]:
                out |= _inner_repeat_chars(list(alt))
    return out


def _flatten(items: list) -> list:
    """A sequence with its plain groups opened: ``(ab)c`` reads as ``abc``."""
    out = []
    for op, av in items:
        if op == C.SUBPATTERN:
            out.extend(_flatten(list(av[-1])))
        else:
            out.append((op, av))
    return out


def _ambiguous_branches(body: list) -> None:
    """Alternations in a repetition's body (not inside a nested repetition, checked on its own)."""
    for op, av in _flatten(body):
        if op != C.BRANCH:
            continue
        seen: frozenset[int] = frozenset()
        nullable = 0
        for alt in av[1]:
            alt = list(alt)
            if _seq_min_width(alt) == 0:
                nullable += 1
            first = _first(alt)
            if first & seen or nullable > 1:
                raise UnsafeRegex("alternatives under a repetition that can match alike "
                                  "(e.g. (a|a)*, (ab|a.)*) can backtrack exponentially")
            seen |= first
            _ambiguous_branches(alt)


def _seq_min_width(items: list) -> int:
    return sum(_min_width(op, av) for op, av in items)


def _chains(items: list, pairs_allowed: int = 0) -> None:
    """Two unbounded repetitions that can split the same text between them."""
    open_set: frozenset[int] = frozenset()
    items = _flatten(items)
    for i, (op, av) in enumerate(items):
        if op in _REPEATS and _has_unbounded(op, av) or op == C.BRANCH and \
                _has_unbounded(op, av):
            chars = _chars(op, av)
            if chars & open_set and not _only_optional(items[i + 1:]):
                if pairs_allowed > 0:
                    pairs_allowed -= 1
                    open_set |= chars
                    continue
                raise UnsafeRegex("two unbounded repetitions over the same characters "
                                  "(e.g. .*a.*b) multiply backtracking by the name's length")
            open_set |= chars
        elif _min_width(op, av) > 0 and not _chars(op, av) <= open_set:
            open_set = frozenset()


def _strict_chain(body: list) -> None:
    """Inside a repetition even two small choices over the same characters multiply per
    round: ``(\\w*a?\\.)*`` splits every round two ways, 2^rounds in all."""
    open_set: frozenset[int] = frozenset()
    for op, av in _flatten(body):
        if _variable(op, av):
            chars = _chars(op, av)
            if chars & open_set:
                raise UnsafeRegex("choices over the same characters inside a repetition "
                                  "(e.g. (\\w*a?\\.)*) multiply with every round")
            open_set |= chars
        elif _min_width(op, av) > 0 and not _chars(op, av) <= open_set:
            open_set = frozenset()


def _only_optional(items: list) -> bool:
    return all(op == C.AT or _min_width(op, av) == 0 and not _has_unbounded(op, av)
               or op in _REPEATS and av[0] == 0 and _chars(op, av) == ALL
               for op, av in items)


def _has_unbounded(op: object, av: object) -> bool:
    if op in _REPEATS:
        return _unbounded(av[1]) or any(_has_unbounded(o, a) for o, a in av[2])  # type: ignore[index]
    if op == C.SUBPATTERN:
        return any(_has_unbounded(o, a) for o, a in av[-1])  # type: ignore[index]
    if op == C.BRANCH:
        return any(_has_unbounded(o, a) for alt in av[1] for o, a in alt)  # type: ignore[index]
    if op == getattr(C, "ATOMIC_GROUP", None):
        return any(_has_unbounded(o, a) for o, a in av)  # type: ignore[union-attr]
    return False


def _min_width(op: object, av: object) -> int:
    sp = P.SubPattern(P.State(), [(op, av)]) if hasattr(P, "State") else None
    if sp is None:
        return 1
    try:
        return int(sp.getwidth()[0])
    except Exception:  # noqa: BLE001 - width unknown: treat as mandatory
        return 1


def _first(items: list) -> frozenset[int]:
    """Characters a sequence can start with."""
    out: frozenset[int] = frozenset()
    for op, av in items:
        if op == C.AT:
            continue
        if op in _REPEATS:
            out |= _first(list(av[2]))
            if av[0] > 0:
                return out
            continue
        if op == C.SUBPATTERN:
            out |= _first(list(av[-1]))
        elif op == C.BRANCH:
            for alt in av[1]:
                out |= _first(list(alt))
        else:
            out |= _chars(op, av)
        if _min_width(op, av) > 0:
            return out
    return out


def _seq_chars(items: list) -> frozenset[int]:
    out: frozenset[int] = frozenset()
    for op, av in items:
        out |= _chars(op, av)
    return out


def _chars(op: object, av: object) -> frozenset[int]:
    """Every ASCII character an element can consume (over-approximated)."""
    if op == C.LITERAL:
        return frozenset({av}) if av < 128 else frozenset()  # type: ignore[operator]
    if op == C.NOT_LITERAL:
        return ALL - {av}
    if op == C.ANY:
        return ALL
    if op == C.IN:
        return _in_set(av)  # type: ignore[arg-type]
    if op in _REPEATS:
        return _seq_chars(list(av[2]))  # type: ignore[index]
    if op == C.SUBPATTERN:
        return _seq_chars(list(av[-1]))  # type: ignore[index]
    if op == getattr(C, "ATOMIC_GROUP", None):
        return _seq_chars(list(av))  # type: ignore[arg-type]
    if op == C.BRANCH:
        out: frozenset[int] = frozenset()
        for alt in av[1]:  # type: ignore[index]
            out |= _seq_chars(list(alt))
        return out
    if op == C.AT:
        return frozenset()
    return ALL


def _in_set(items: list) -> frozenset[int]:
    out: set[int] = set()
    negate = False
    for op, av in items:
        if op == C.NEGATE:
            negate = True
        elif op == C.LITERAL:
            out.add(av)
        elif op == C.RANGE:
            out.update(range(av[0], min(av[1], 127) + 1))
        elif op == C.CATEGORY:
            out |= _CATEGORY.get(av, ALL)
        else:
            out |= ALL
    chars = frozenset(c for c in out if c < 128)
    return ALL - chars if negate else chars

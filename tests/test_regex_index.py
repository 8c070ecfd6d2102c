"""Regex rules filed by literal suffix: the same verdicts as trying every list's regexes in order."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.lists.index import DomainIndex
from resolver.lists.parse import Parsed
from resolver.lists.regex_index import RegexSet, literal_suffixes


@pytest.mark.parametrize("src, keys", [
    (r"^[a-z]{2}-stsdk\.vivoglobal\.com$", {"vivoglobal.com"}),
    (r"^obus-[a-z0-9-]+\.heytapmobi(?:le)?\.com$", {"heytapmobi.com", "heytapmobile.com"}),
    (r"^x\.(?:eu|us)\.example\.net$", {"eu.example.net", "us.example.net"}),
    (r"^a[0-9]*\.(us\.)?(tiktokv|tiktok)\.com$",
     {"tiktok.com", "tiktokv.com", "us.tiktok.com", "us.tiktokv.com"}),
    (r"^x\d\.com$", {"com"}),                 # \d is a class: the ending starts after it
    (r"^x[ab]\.c\.com$", {"c.com"}),
    (r"^api\..*\.hismarttv\.com$", {"hismarttv.com"}),
    (r"^a\.x\.com$|^b\.y\.org$", None),      # top-level alternation
    (r"^a.com$", None),                       # an unescaped dot is any character: no label edge
    (r"^abc\\.com$", None),                   # an escaped backslash, then any character
    (r"ads?[0-9]*\.", None),                   # not anchored at the end
    (r"(^|\.)lgsmartad\.com", None),
    (r"^x\.com\$", None),                      # a literal dollar
    (r"(?i)^x\.COM$", None),                   # case-insensitive: literal keys would not hold
    (r"^[a-z]+\.(com|net)$", {"com", "net"}),
    (r"^unagi\.amazon\.(?:(?:com|co)\.)?[a-z]{2,3}$", None),
    (r"^(bad", None),                          # the parser refuses it
])
def test_literal_suffixes(src: str, keys: set[str] | None) -> None:
    got = literal_suffixes(src)
    assert (set(got) if got is not None else None) == keys


def _naive(lists: list[tuple[int, list[str], bool]], name: str, block: int, allow: int,
           found: bool) -> tuple[bool, int]:
    """The old semantics: every list's alternation, in list order."""
    rxs = [(bit, re.compile("|".join(f"(?:{s})" for s in srcs))) for bit, srcs, _ in lists]
    for bit, rx in rxs:
        if bit & allow and rx.search(name):
            return True, 0
    if not found:
        for bit, rx in rxs:
            if bit & block and rx.search(name):
                return False, bit
    return False, 0


LABELS = st.sampled_from(["a", "ab", "x1", "eu", "us", "stsdk", "example", "vivoglobal", "com",
                          "net", "cdn"])
NAMES = st.lists(LABELS, min_size=1, max_size=5).map(".".join)
REGEXES = st.sampled_from([
    r"^[a-z]{2}-stsdk\.vivoglobal\.com$", r"^[a-z]{2}\.vivoglobal\.com$", r"^eu\.example\.com$",
    r"^[a-z0-9]+\.cdn\.example\.net$", r"^(?:eu|us)\.example\.(?:com|net)$", r"^a.*com$",
    r"ab\.", r"^x1\.", r"\.net$", r"^[a-z]+\.com$", r"^a\.ab\.com$|^eu\.net$", r"^example\.com$",
    r"^(?:a|ab)?\.?example\.com$", r"^eu\.(us\.)?(example|vivoglobal)\.(com|net)$", r"^a[a-z]\.com$",
])


@settings(max_examples=300, deadline=None)
@given(lists=st.lists(st.tuples(st.lists(REGEXES, min_size=1, max_size=4), st.booleans()),
                      min_size=1, max_size=4),
       names=st.lists(NAMES, min_size=1, max_size=10), block=st.integers(0, 15),
       allow=st.integers(0, 15), found=st.booleans())
def test_same_verdicts_as_every_list_in_order(lists, names, block, allow, found) -> None:
    spec = [(1 << i, srcs, is_allow) for i, (srcs, is_allow) in enumerate(lists)]
    rs = RegexSet()
    for bit, srcs, _ in spec:
        rs.add(bit, srcs)
    for name in names:
        allowed, bit, _ = rs.check(name, block, allow, not found)
        assert (allowed, 0 if allowed else bit) == _naive(spec, name, block, allow, found), name


def test_domain_index_match_uses_it(tmp_path) -> None:
    idx = DomainIndex()
    p = Parsed()
    p.regexes = [r"^[a-z]{2}-stsdk\.vivoglobal\.com$", r"ads?[0-9]*\.x\."]
    idx.add(1, p)
    a = Parsed()
    a.regexes = [r"^in-stsdk\.vivoglobal\.com$"]
    idx.add(2, a, allow=True)
    assert idx.match("id-stsdk.vivoglobal.com", 1, 0).bit == 1
    assert idx.match("in-stsdk.vivoglobal.com", 1, 2) is None          # the allow regex wins
    assert idx.match("ads7.x.example", 1, 0).regex
    assert idx.match("www.vivoglobal.com", 1, 0) is None
    assert set(idx.regex_set.by_suffix) == {"vivoglobal.com"} and len(idx.regex_set.always) == 1
    # A name below no regex's literal ending runs only the regexes that have none, and of
    # those only the ones whose required literal (".x." here) it contains.
    assert [e[1] for e in idx.regex_set.candidates("www.ad.x.example.org")] == [1]
    assert idx.regex_set.candidates("www.example.org") == []
    assert len(idx.regex_set.candidates("id-stsdk.vivoglobal.com")) == 2   # the ".x." regex is not a candidate: no ".x." in the name


def test_required_literal() -> None:
    from resolver.lists.regex_index import required_literal
    assert required_literal(r"^unagi(?:-(?:na|eu))?\.amazon\.(?:com|co\.)?[a-z]{2,3}$") == ".amazon."
    assert required_literal(r"ads?[0-9]*\.x\.") == ".x."
    assert required_literal(r"^a\.ab\.com$|^eu\.net$") == ""     # top-level alternation
    assert required_literal(r"(?i)^ADS\.") == ""                  # case-insensitive: no filter

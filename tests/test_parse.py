"""List formats and their edge cases, and the suffix-walk matcher."""

from __future__ import annotations

from resolver.lists.index import DomainIndex
from resolver.lists.parse import normalize_domain, parse_text


def domains(text: str) -> list[str]:
    return parse_text(text).domains


def test_hosts_format_with_several_names_and_localhost_skipped() -> None:
    text = ("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            "0.0.0.0 a.example b.example\n127.0.0.1 c.example\n0.0.0.0 0.0.0.0\n")
    p = parse_text(text)
    assert p.domains == ["a.example", "b.example", "c.example"]
    assert p.rejected == []


def test_plain_adblock_wildcard_and_regex() -> None:
    text = "plain.example\n||ads.example^\n||opt.example^$important\n*.wild.example\n/^ad[0-9]+\\./\n"
    p = parse_text(text)
    assert p.domains == ["plain.example", "ads.example", "opt.example", "wild.example"]
    assert p.regexes == ["^ad[0-9]+\\."]


def test_comments_inline_comments_crlf_bom_case_and_trailing_dot() -> None:
    text = "\ufeff# header\r\n! adblock comment\r\n[Adblock Plus 2.0]\r\nTRACK.Example.COM.  # why\r\n\r\n"
    assert domains(text) == ["track.example.com"]


def test_idn_becomes_punycode() -> None:
    assert domains("bücher.example\n") == ["xn--bcher-kva.example"]
    assert normalize_domain("ÄÖ.example") == "xn--4ca0b.example"


def test_bad_lines_are_reported_with_line_numbers() -> None:
    text = "good.example\nnot a domain line\n-bad-.example\n||x.example^/path\n@@||ok.example^\n/[unclosed/\n"
    p = parse_text(text)
    assert p.domains == ["good.example"]
    assert [line for line, _, _ in p.rejected] == [2, 3, 4, 5, 6]
    reasons = " ".join(r for _, _, r in p.rejected)
    assert "hosts format" in reasons and "allow list" in reasons and "regex" in reasons


def test_hostname_limits() -> None:
    assert normalize_domain("a" * 63 + ".example") is not None
    assert normalize_domain("a" * 64 + ".example") is None
    assert normalize_domain(".".join(["abcdefghi"] * 26)) is None  # 259 chars
    assert normalize_domain("under_score.example") == "under_score.example"


def test_rules_keep_lines_when_asked() -> None:
    p = parse_text("# c\none.example\n\n0.0.0.0 two.example three.example\n", keep_rules=True)
    assert [(r.value, r.line) for r in p.rules] == [
        ("one.example", 2), ("two.example", 4), ("three.example", 4)]


def _index(block: str, allow: str = "") -> DomainIndex:
    idx = DomainIndex()
    idx.add(1, parse_text(block))
    idx.add(2, parse_text(allow), allow=True)
    return idx


def test_a_rule_blocks_the_name_and_every_subdomain_but_not_siblings() -> None:
    idx = _index("tracking.example.com\n")
    for name in ("tracking.example.com", "a.tracking.example.com", "x.y.tracking.example.com"):
        m = idx.match(name, 1, 2)
        assert m is not None and m.rule == "tracking.example.com" and m.bit == 1
    for name in ("example.com", "nottracking.example.com", "tracking.example.co"):
        assert idx.match(name, 1, 2) is None


def test_allow_list_wins_and_group_masks_select_lists() -> None:
    idx = _index("example.com\n", "keep.example.com\n")
    assert idx.match("ads.example.com", 1, 2) is not None
    assert idx.match("keep.example.com", 1, 2) is None
    assert idx.match("a.keep.example.com", 1, 2) is None
    assert idx.match("ads.example.com", 0, 2) is None      # list not in this group
    assert idx.match("keep.example.com", 1, 0) is not None  # allow list not in this group
    ex = idx.explain("a.keep.example.com", 1, 2)
    assert ex is not None and ex.allow and ex.rule == "keep.example.com"


def test_most_specific_block_rule_is_reported_and_regex_applies() -> None:
    idx = _index("example.com\nads.example.com\n/^adserv[0-9]+\\./\n")
    m = idx.match("x.ads.example.com", 1, 2)
    assert m is not None and m.rule == "ads.example.com"
    for allow in (0, 2):   # without allow lists the walk stops at the first rule found
        m = idx.match("x.ads.example.com", 1, allow)
        assert m is not None and m.rule == "ads.example.com" and not m.regex
    m = idx.match("adserv7.ads.example.com", 1, 0)   # a domain rule wins over a regex
    assert m is not None and m.rule == "ads.example.com"
    r = idx.match("adserv7.other.net", 1, 2)
    assert r is not None and r.regex
    assert idx.match("adservx.other.net", 1, 2) is None

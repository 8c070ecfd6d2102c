"""The curated-list linter: each rule with a small bad file, and the bundled lists pass it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from resolver import bundled
from resolver.cli import main
from resolver.lists.lint import lint, sort_key

REPO_LISTS = Path(__file__).resolve().parent.parent / "blocklists"

HEADER = """\
# title: Example telemetry (default tier)
# description: Analytics of the example vendor.
# tier: {tier}
# license: CC0-1.0
# last-reviewed: 2026-11-27
#
"""


def write(tmp: Path, name: str, rules: str, tier: str = "default", header: str | None = None) -> Path:
    p = tmp / name
    p.write_text((HEADER.format(tier=tier) if header is None else header) + rules)
    return p


def messages(*paths: Path) -> list[str]:
    """Findings with the curated rules (tmp files are not in the bundled directory)."""
    return [str(f) for f in lint(list(paths), curated=True)[1]]


def only(paths: list[Path], needle: str) -> str:
    """Exactly one finding, containing ``needle``; returns it."""
    found = messages(*paths)
    assert len(found) == 1, found
    assert needle in found[0], found
    return found[0]


GOOD = """\
# == Analytics ==
tracking.intl.example.com  # tracking (evidence)
data.mistat.example.com  # analytics upload (evidence)
# == Ads ==
ad.example.net  # ads (evidence)
"""


def test_a_good_file_passes(tmp_path: Path) -> None:
    assert messages(write(tmp_path, "example.txt", GOOD)) == []


def test_syntax_every_line_is_one_hostname_rule(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt", "this is not a rule  # oops\n")
    assert only([p], "not a rule").startswith(f"{p}:7: ")
    p = write(tmp_path, "example.txt", "/^ads?\\./\n")
    only([p], "anchor the regex at both ends")
    p = write(tmp_path, "example.txt", "0.0.0.0 a.example.com b.example.com  # hosts line\n")
    only([p], "found 2 host names")
    p = write(tmp_path, "example.txt", "! adblock comment\n")
    only([p], "found no host name")


@pytest.mark.parametrize("rule, needle", [
    ("||ads.example.com^", "write the bare host name: ads.example.com"),
    ("*.ads.example.com", "write the bare host name: ads.example.com"),
    ("0.0.0.0 ads.example.com", "write the bare host name: ads.example.com"),
    ("Ads.Example.com", "lower case: ads.example.com"),
    ("ads.example.com.", "no trailing dot"),
])
def test_rules_are_bare_lowercase_hostnames(tmp_path: Path, rule: str, needle: str) -> None:
    only([write(tmp_path, "example.txt", f"{rule}  # comment\n")], needle)


@pytest.mark.parametrize("rule, needle", [
    ("a" * 64 + ".example.com", "is 64 characters long (at most 63)"),
    (".".join(["a" * 60] * 4) + ".example.com", "(at most 253)"),
    ("bücher.example.com", "punycode: xn--bcher-kva.example.com"),
    ("xn--zz.example.com", "not valid punycode"),
    ("ab--cd.example.com", "reserved for punycode"),
    ("-ads.example.com", "starts or ends with a hyphen"),
    ("ads.example.123", "numeric label"),
    ("ads..example.com", "empty label"),
])
def test_invalid_hostnames(tmp_path: Path, rule: str, needle: str) -> None:
    only([write(tmp_path, "example.txt", f"{rule}  # comment\n")], needle)


def test_valid_punycode_passes(tmp_path: Path) -> None:
    assert messages(write(tmp_path, "example.txt", "xn--bcher-kva.example.com  # idn\n")) == []


def test_duplicates(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt",
              "# == A ==\nads.example.com  # one\n# == B ==\nads.example.com  # again\n")
    assert only([p], "duplicate of line 8").startswith(f"{p}:10:")


def test_redundant_by_parent_rule(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt",
              "# == A ==\nmetrics.example.com  # parent\n# == B ==\ndata.metrics.example.com  # child\n")
    found = only([p], "redundant, line 8 (metrics.example.com) already covers it")
    assert found.startswith(f"{p}:10:")


def test_sort_order_within_sections(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt", "ads.example.net  # b\nads.example.com  # a\n")
    only([p], "ads.example.com: out of order, sort it before ads.example.net (line 7)")
    # A new section restarts the order.
    p = write(tmp_path, "example.txt", "# == A ==\nads.example.net  # b\n# == B ==\nads.example.com  # a\n")
    assert messages(p) == []
    assert sort_key("z.a.com") < sort_key("a.b.com")


@pytest.mark.parametrize("field", ["title", "description", "tier", "license", "last-reviewed"])
def test_required_header_fields(tmp_path: Path, field: str) -> None:
    header = "".join(line + "\n" for line in HEADER.format(tier="default").splitlines()
                     if not line.startswith(f"# {field}:"))
    p = write(tmp_path, "example.txt", GOOD, header=header)
    assert only([p], f"'# {field}:' is missing").startswith(f"{p}:1:")


def test_header_fields_after_the_rules_do_not_count(tmp_path: Path) -> None:
    header = HEADER.format(tier="default").replace("# license: CC0-1.0\n", "")
    p = write(tmp_path, "example.txt", GOOD + "# license: CC0-1.0\n", header=header)
    only([p], "'# license:' is missing")


@pytest.mark.parametrize("tier, name, needle", [
    ("medium", "example.txt", "tier 'medium' is not one of default, strict, essential"),
    ("strict", "example.txt", "does not match the file name"),
    ("default", "example-strict.txt", "does not match the file name"),
])
def test_tier(tmp_path: Path, tier: str, name: str, needle: str) -> None:
    only([write(tmp_path, name, GOOD, tier=tier)], needle)


@pytest.mark.parametrize("date", ["27.11.2026", "2026-13-01", "2026-2-1", "soon"])
def test_last_reviewed_is_a_date(tmp_path: Path, date: str) -> None:
    header = HEADER.format(tier="default").replace("2026-11-27", date)
    only([write(tmp_path, "example.txt", GOOD, header=header)], "is not a date YYYY-MM-DD")


def test_every_rule_commented(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt", "ads.example.com\nmore.example.com  #  \n")
    found = messages(p)
    assert len(found) == 2 and all("needs a '# comment'" in f for f in found), found


ESSENTIAL = """\
connect.rom.example.com  # captive-portal probe (evidence)
"""


def test_default_tier_must_not_cover_essential_hosts(tmp_path: Path) -> None:
    write(tmp_path, "essential.txt", ESSENTIAL, tier="essential")
    equal = write(tmp_path, "example.txt", "connect.rom.example.com  # oops\n")
    found = only([equal], "is the essential host connect.rom.example.com")
    assert "essential.txt:7" in found
    parent = write(tmp_path, "example.txt", "rom.example.com  # oops\n")
    only([parent], "covers the essential host connect.rom.example.com")
    # A child of an essential host is fine.
    assert messages(write(tmp_path, "example.txt", "x.connect.rom.example.com  # ok\n")) == []


def test_strict_tier_may_cover_essential_hosts_when_its_header_says_so(tmp_path: Path) -> None:
    write(tmp_path, "essential.txt", ESSENTIAL, tier="essential")
    silent = write(tmp_path, "example-strict.txt", "rom.example.com  # strict\n", tier="strict")
    only([silent], "a strict list may, but its header must name the host")
    header = HEADER.format(tier="strict") + \
        "# STOPS WORKING: the captive-portal probe connect.rom.example.com.\n\n"
    said = write(tmp_path, "example-strict.txt", "rom.example.com  # strict\n", header=header)
    assert messages(said) == []
    # Naming it below the first rule does not count.
    late = write(tmp_path, "example-strict.txt",
                 "rom.example.com  # strict\n# connect.rom.example.com\n", tier="strict")
    only([late], "its header must name the host")


def test_essential_file_given_explicitly(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "ess").mkdir()
    ess = write(tmp_path / "ess", "essential.txt", ESSENTIAL, tier="essential")
    bad = write(tmp_path / "lists", "example.txt", "rom.example.com  # oops\n")
    assert messages(bad) == []          # no essential.txt next to it, none given
    only([bad, ess], "covers the essential host")


@pytest.mark.parametrize("rule, needle", [
    ("xiaomi.com", "bare vendor apex"),
    ("miui.com", "bare vendor apex"),
    ("samsungcloud.com", "bare vendor apex"),
    ("windows.com", "bare vendor apex"),
    ("com", "single label"),
    ("co.uk", "public suffix"),
])
def test_too_wide_rules(tmp_path: Path, rule: str, needle: str) -> None:
    only([write(tmp_path, "example.txt", f"{rule}  # too wide\n")], needle)


def test_directories_and_missing_paths(tmp_path: Path) -> None:
    write(tmp_path, "example.txt", GOOD)
    (tmp_path / "README.md").write_text("not a list\n")
    files, findings = lint([tmp_path], curated=True)
    assert [f.name for f in files] == ["example.txt"] and findings == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.txt list files" in messages(empty)[0]
    assert "no such file" in messages(tmp_path / "nope.txt")[0]


def test_cli_lint_prints_file_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write(tmp_path, "example.txt", GOOD)
    assert main(["lists", "lint", "--curated", str(good)]) == 0
    bad = write(tmp_path, "other.txt", "xiaomi.com\n")
    assert main(["lists", "lint", "--curated", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{bad}:7: xiaomi.com: every rule needs a '# comment' saying what the host does " \
           "and the public evidence" in out
    assert any(line.startswith(f"{bad}:7: xiaomi.com: a bare vendor apex") for line in out)


# --- the lists that ship -------------------------------------------------------------------


def _bundled_files() -> list[Path]:
    files = sorted(REPO_LISTS.glob("*.txt"))
    # Not a skip: the curated lists are part of the product and land with this code.
    assert files, f"no curated lists in {REPO_LISTS}"
    return files


def test_every_bundled_list_passes_the_linter() -> None:
    _bundled_files()
    files, findings = lint([REPO_LISTS])
    assert [str(f) for f in findings] == []
    assert any(f.name == "essential.txt" for f in files), "essential.txt is missing"


def test_cli_lint_defaults_to_the_bundled_lists(capsys: pytest.CaptureFixture) -> None:
    _bundled_files()
    assert bundled.lists_dir().resolve() == REPO_LISTS.resolve()
    assert main(["lists", "lint"]) == 0, capsys.readouterr().out


def test_default_config_enables_every_default_tier_list() -> None:
    tiers = {}
    for f in _bundled_files():
        for line in f.read_text().splitlines():
            if line.startswith("# tier:"):
                tiers[f.name] = line.split(":", 1)[1].strip()
    default = {n for n, t in tiers.items() if t == "default"}
    cfg = yaml.safe_load(bundled.default_config_text())
    enabled = {v["source"].removeprefix("bundled:") for v in cfg["blocking"]["lists"].values()}
    assert enabled == default
    assert all(v.get("track_domains") for v in cfg["blocking"]["lists"].values())


# --- family rules (anchored regexes), strict headers, triage files ------------------------


FAMILY = "/^[a-z]{2}-stsdk\\.example\\.com$/  # regional statistics SDK family (evidence)\n"


def test_a_family_regex_is_a_rule(tmp_path: Path) -> None:
    p = write(tmp_path, "example.txt", GOOD + FAMILY)
    assert messages(p) == []


@pytest.mark.parametrize("rule, needle", [
    ("/ads\\.example\\.com/  # x (e)", "anchor the regex at both ends"),
    ("/^(a+)+\\.example\\.com$/  # x (e)", "nested"),
    ("/^([a-z]+\\.)*example\\.com$/  # x (e)", "nested"),
    ("/^[a-z]+\\.com$/  # x (e)", "matches the vendor apex or public suffix"),
    ("/^[a-z]{2}-stsdk\\.example\\.com$/", "every rule needs a '# comment'"),
])
def test_bad_family_regexes(tmp_path: Path, rule: str, needle: str) -> None:
    only([write(tmp_path, "example.txt", rule + "\n")], needle)


def test_too_many_and_duplicate_regexes(tmp_path: Path) -> None:
    many = "".join(f"/^a{i}-x\\.example\\.com$/  # family {i} (e)\n" for i in range(13))
    only([write(tmp_path, "example.txt", many)], "more than 12 regex rules")
    only([write(tmp_path, "example.txt", FAMILY + FAMILY)], "duplicate of line 7")


def test_a_default_regex_must_not_match_an_essential_host(tmp_path: Path) -> None:
    write(tmp_path, "essential.txt", ESSENTIAL, tier="essential")
    p = write(tmp_path, "example.txt", "/^connect\\.[a-z]+\\.example\\.com$/  # probe family (e)\n")
    only([p], "matches the essential host connect.rom.example.com")


STRICT_ESSENTIAL = "find.api.cloud.example.com  # Find Device; blocking cloud.example.com breaks it (issue #7)\n"


def strict_header(paragraph: str) -> str:
    return HEADER.format(tier="strict") + paragraph + "\n"


@pytest.mark.parametrize("paragraph, ok", [
    # The host's function (its essential comment up to the first ';'), any case, any line breaks.
    ("# STOPS WORKING with this list on -- cloud sync and\n# find device (locate, ring).\n#\n", True),
    # The host name itself.
    ("# STOPS WORKING with this list on -- cloud sync, find.api.cloud.example.com.\n#\n", True),
    # Named in the header, but not in the STOPS WORKING paragraph.
    ("# Find Device keeps working? No.\n#\n# STOPS WORKING with this list on -- cloud sync.\n#\n", False),
    # No STOPS WORKING paragraph at all.
    ("# Blocks cloud sync and Find Device.\n#\n", False),
])
def test_strict_rule_over_an_essential_host_needs_its_stops_working_paragraph(
        tmp_path: Path, paragraph: str, ok: bool) -> None:
    write(tmp_path, "essential.txt", STRICT_ESSENTIAL, tier="essential")
    rules = "cloud.example.com  # all of the cloud API (e)\n"
    p = write(tmp_path, "example-strict.txt", rules, header=strict_header(paragraph))
    if ok:
        assert messages(p) == []
    else:
        found = only([p], "covers the essential host find.api.cloud.example.com")
        assert "'Find Device'" in found and "STOPS WORKING with this list on" in found


def test_strict_regex_over_an_essential_host_follows_the_same_rule(tmp_path: Path) -> None:
    write(tmp_path, "essential.txt", STRICT_ESSENTIAL, tier="essential")
    rules = "/^[a-z]+\\.api\\.cloud\\.example\\.com$/  # cloud API family (e)\n"
    silent = write(tmp_path, "example-strict.txt", rules,
                   header=strict_header("# STOPS WORKING with this list on -- cloud sync.\n#\n"))
    only([silent], "matches the essential host find.api.cloud.example.com")
    said = write(tmp_path, "example-strict.txt", rules,
                 header=strict_header("# STOPS WORKING with this list on -- Find Device.\n#\n"))
    assert messages(said) == []


TRIAGE_GOOD = """\
# triage: example -- reference names hushdns does not block, and why
#
# == CDN ==
cdn.example.net  # shared-infra: generic CDN that also serves the store (hagezi native.example)
/^[a-z]{2}-edge\\.example\\.net$/  # internal: regional staging edges, never resolved (crt.sh)
ota.example.com  # essential: OTA update check; updates stop (vendor forum thread)
"""


@pytest.mark.parametrize("line, needle", [
    ("cdn.example.net  # shared: a CDN", "category 'shared' is not one of essential, shared-infra"),
    ("cdn.example.net", "write '<rule>  # <category>: <reason>"),
    ("cdn.example.net  # dead:", "say why after 'dead:'"),
    ("ota.example.com  # essential: updates stop", "ends with its public source in parentheses"),
    ("/edge\\.example\\.net/  # internal: staging", "anchor the regex at both ends"),
    ("bad_host!.example  # dead: gone", "not a host name"),
])
def test_triage_syntax_errors_have_their_line(tmp_path: Path, line: str, needle: str) -> None:
    (tmp_path / "triage").mkdir()
    write(tmp_path, "example.txt", GOOD)
    t = tmp_path / "triage" / "example.txt"
    t.write_text(TRIAGE_GOOD + line + "\n")
    found = only([tmp_path], needle)
    assert found.startswith(f"{t}:7: "), found


def test_triage_files_are_linted_with_their_directory(tmp_path: Path) -> None:
    (tmp_path / "triage").mkdir()
    write(tmp_path, "example.txt", GOOD)
    (tmp_path / "triage" / "example.txt").write_text(TRIAGE_GOOD)
    (tmp_path / "triage" / "README.md").write_text("# not a triage file\n")
    files, findings = lint([tmp_path], curated=True)
    assert findings == [] and [f.name for f in files] == ["example.txt", "example.txt"]
    bad = tmp_path / "triage" / "example.txt"
    bad.write_text("no header here  # dead: x\n")
    assert any("starts with '# triage:" in m for m in messages(bad))


# --- household lists: rules only ------------------------------------------------------------


def test_household_list_needs_no_header_comments_or_order(tmp_path: Path) -> None:
    p = tmp_path / "household.txt"
    p.write_text("# things our TV should not reach\nzz.example\n||ads.example.net^\n"
                 "0.0.0.0 a.example b.example\n*.wild.example\n/^track[0-9]+\\./\nxiaomi.com\n")
    files, findings = lint([tmp_path])
    assert files == [p] and findings == []


def test_household_list_rules_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "household.txt"
    p.write_text("good.example\nthis is not a rule\ngood.example\ncom\nco.uk\n")
    found = [str(f) for f in lint([p])[1]]
    assert found[0].startswith(f"{p}:2: not a rule: ")
    assert found[1:] == [f"{p}:3: good.example: duplicate of line 1",
                         f"{p}:4: com: a single label covers a whole top-level domain",
                         f"{p}:5: co.uk: a public suffix, it covers every site registered under it"]


def test_the_docs_allow_list_example_passes(tmp_path: Path) -> None:
    """blocklists/README.md's "Allow one host back" example, linted as a household file."""
    readme = (REPO_LISTS / "README.md").read_text()
    block = readme.split("keep Find Device working. Write an allow list", 1)[1].split("```", 2)[1]
    (tmp_path / "anna.txt").write_text(block.lstrip("\n"))
    files, findings = lint([tmp_path])
    assert len(files) == 1 and [str(f) for f in findings] == []


def test_files_in_the_bundled_directory_are_curated() -> None:
    from resolver.lists.lint import is_curated

    assert all(is_curated(f) for f in _bundled_files())
    assert not is_curated(Path("/etc/hushdns/lists/household.txt"))

"""Coverage of the public references: the parsers and the math on small files, then the real repo.

The second half is the triage test of issue #16: every reference name is
blocked or triaged, no triage entry is stale, and the coverage targets hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resolver.cli import main
from resolver.lists import coverage
from resolver.lists.references import (
    ReferenceFileError,
    Source,
    load_vendors,
    parse_pihole_regex,
    parse_reference,
    read_source,
    section_text,
)
from resolver.lists.triage import parse_triage

ROOT = Path(__file__).resolve().parent.parent
REPO_LISTS = ROOT / "blocklists"
REPO_REFERENCES = ROOT / "references"

HEADER = """\
# title: Example {what}
# description: Example vendor.
# tier: {tier}
# license: CC0-1.0
# last-reviewed: 2026-12-01
#
"""


# --- reference formats -----------------------------------------------------------------------


def test_reference_formats_plain_hosts_adblock_wildcard_and_comments() -> None:
    text = (
        "\ufeff# Title: a list\r\n"
        "! adblock comment\n"
        "[Adblock Plus 2.0]\n"
        "plain.example.com\n"
        "Upper.Example.COM.\n"
        "0.0.0.0 h1.example.com h2.example.com  # two names on a hosts line\n"
        "127.0.0.1 localhost\n"
        "||ad.example.com^\n"
        "||imp.example.com^$important\n"
        "*.wild.example.com\n"
        "#commented.example.com # commented out upstream: not a reference name\n"
        "inline.example.com  # with a comment\n"
        "/^[a-z]{2}-stat\\.example\\.com$/\n"
        "http://not.a.rule/path\n"
    )
    got = parse_reference(text)
    assert got.names == {"plain.example.com", "upper.example.com", "h1.example.com",
                         "h2.example.com", "ad.example.com", "imp.example.com",
                         "wild.example.com", "inline.example.com"}
    assert got.regexes == ["^[a-z]{2}-stat\\.example\\.com$"]
    assert [r[0] for r in got.rejected] == [14]


def test_pihole_regex_file() -> None:
    got = parse_pihole_regex("# LG\n(^|\\.)lgsmartad\\.com\n# (^|\\.)x\\.com$ # off\n(bad\n")
    assert got.regexes == ["(^|\\.)lgsmartad\\.com"]
    assert got.rejected and got.rejected[0][0] == 4
    assert parse_reference("(^|\\.)a\\.com$\n", "pihole-regex").regexes == ["(^|\\.)a\\.com$"]


SMARTTV = """\
# Title: TV list

# Sony
sony.example.com

# LG
lg1.example.com
#lg-off.example.com # breaks the store
# a comment inside the section
lg2.example.com

# Roku
roku.example.com
"""


def test_a_section_is_the_lines_under_its_heading(tmp_path: Path) -> None:
    assert parse_reference(section_text(SMARTTV, "LG")).names == {"lg1.example.com", "lg2.example.com"}
    # Line numbers stay those of the file.
    assert section_text(SMARTTV, "LG").split("\n")[6] == "lg1.example.com"
    with pytest.raises(ReferenceFileError, match="no section '# Panasonic'"):
        section_text(SMARTTV, "Panasonic")
    f = tmp_path / "SmartTV.txt"
    f.write_text(SMARTTV)
    assert read_source(Source(f, "Roku")).names == {"roku.example.com"}


def test_vendors_yaml(tmp_path: Path) -> None:
    y = tmp_path / "vendors.yaml"
    y.write_text("vendors:\n  lg:\n    references:\n      - a/b.txt\n"
                 "      - {file: p/SmartTV.txt, section: LG}\n    extra: [x/y.lst]\n")
    v = load_vendors(y)["lg"]
    assert [s.name for s in v.references] == ["a/b.txt", "p/SmartTV.txt#LG"]
    assert v.references[1].path == tmp_path / "p" / "SmartTV.txt"
    assert [s.name for s in v.extra] == ["x/y.lst"]
    y.write_text("vendors:\n  lg:\n    references: [{file: a, sektion: LG}]\n")
    with pytest.raises(ReferenceFileError, match="unknown key"):
        load_vendors(y)


# --- the math on a small world ---------------------------------------------------------------

DEFAULT = "tracking.example.com  # analytics (e)\n/^[a-z]{2}-stat\\.example\\.com$/  # stat family (e)\n"
STRICT = "# STOPS WORKING with this list on -- cloud sync.\n#\ncloud.example.com  # cloud API (e)\n"
ESSENTIAL = "ota.example.com  # OTA update check (e)\n"
TRIAGE = """\
# triage: example -- names hushdns does not block, and why
#
cdn.example.net  # shared-infra: generic CDN (e)
ota.example.com  # essential: OTA update check; updates stop (vendor forum)
/^staging[0-9]+\\.example\\.com$/  # internal: staging hosts (crt.sh)
old.example.com  # dead: NXDOMAIN since 2021 (hagezi issue #1)
"""
REFERENCE = """\
a.tracking.example.com
us-stat.example.com
api.cloud.example.com
cdn.example.net
img.cdn.example.net
ota.example.com
staging1.example.com
staging2.example.com
old.example.com
foo.example.com
bar.example.com
"""


def world(tmp_path: Path, triage: str = TRIAGE) -> tuple[Path, Path]:
    lists = tmp_path / "lists"
    (lists / "triage").mkdir(parents=True)
    (lists / "example.txt").write_text(HEADER.format(what="default", tier="default") + DEFAULT)
    (lists / "example-strict.txt").write_text(HEADER.format(what="strict", tier="strict") + STRICT)
    (lists / "essential.txt").write_text(HEADER.format(what="essential", tier="essential") + ESSENTIAL)
    (lists / "triage" / "example.txt").write_text(triage)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "example.txt").write_text(REFERENCE)
    (refs / "more.txt").write_text("||foo.example.com^\nnew1.stat.example.org\n")
    (refs / "vendors.yaml").write_text("vendors:\n  example:\n    references: [example.txt]\n"
                                       "    extra: [more.txt]\n")
    return lists, refs


def measure(lists: Path, refs: Path, tier: str = "strict", allow: list[Path] = ()) -> coverage.Report:
    vendors = list(load_vendors(refs / "vendors.yaml").values())
    return coverage.measure(vendors, lists, lists / "triage", tier, list(allow))


def test_every_name_lands_in_exactly_one_bucket(tmp_path: Path) -> None:
    lists, refs = world(tmp_path)
    r = measure(lists, refs)
    assert r.triage_problems == []
    v = r.vendors[0]
    assert v.by_name == {
        "a.tracking.example.com": "default",        # subtree of a default rule
        "us-stat.example.com": "default",           # the family regex
        "api.cloud.example.com": "strict",
        "cdn.example.net": "shared-infra", "img.cdn.example.net": "shared-infra",
        "ota.example.com": "essential",
        "staging1.example.com": "internal", "staging2.example.com": "internal",
        "old.example.com": "dead",
        "foo.example.com": "untriaged", "bar.example.com": "untriaged",
    }
    t = v.total
    assert r.essential_blocked == {"default": [], "strict": []}
    assert (t.names, t.shared, t.owned) == (11, 2, 9)
    assert t.share("default") == pytest.approx(200 / 9)
    assert t.share("default", "strict") == pytest.approx(300 / 9)
    assert v.missing == ["bar.example.com", "foo.example.com"]
    # The extra source: one name beyond the reference, not blocked.
    (x,) = v.extra
    assert (x.names, x.beyond, x.beyond_blocked) == (2, 1, 0)


def test_a_services_reference_is_triaged_but_not_in_the_target(tmp_path: Path) -> None:
    """kind: services (WindowsSpyBlocker's extra.txt): reported and triaged, not in the vendor's row."""
    lists, refs = world(tmp_path)
    (refs / "apps.txt").write_text("cloud.example.com\nmail.example.com\nfoo.example.com\n")
    (refs / "vendors.yaml").write_text(
        "vendors:\n  example:\n    references:\n      - example.txt\n"
        "      - {file: apps.txt, kind: services}\n")
    r = measure(lists, refs)
    v = r.vendors[0]
    assert [t.label for t in v.references] == ["example.txt", "apps.txt"]
    assert v.kinds == ["telemetry", "services"]
    # The vendor's row is the telemetry reference alone: same numbers as without apps.txt.
    assert (v.total.names, v.total.owned, v.total.counts["default"]) == (11, 9, 2)
    assert v.total.share("default", "strict") == pytest.approx(300 / 9)
    # The services row is measured ...
    apps = v.references[1]
    assert (apps.names, apps.counts["strict"], apps.counts["untriaged"]) == (3, 1, 2)
    # ... and its names must be triaged: mail.example.com is untriaged, foo.example.com is
    # untriaged in both.
    assert v.missing == ["bar.example.com", "foo.example.com", "mail.example.com"]
    assert v.by_name["mail.example.com"] == "untriaged"
    # A triage entry that only a services name needs is not stale, and blocking it counts there.
    (lists / "triage" / "example.txt").write_text(TRIAGE + "mail.example.com  # internal: staff mail (e)\n")
    v = measure(lists, refs).vendors[0]
    assert "mail.example.com" not in v.missing and v.references[1].counts["internal"] == 1
    text = coverage.format_text(measure(lists, refs))
    assert "  services: apps.txt" in text
    data = measure(lists, refs).vendors[0].as_dict()
    assert [x["kind"] for x in data["references"]] == ["telemetry", "services"]
    assert data["vendor_owned"] == 9
    assert "`apps.txt` (services, not in all)" in coverage.format_markdown(measure(lists, refs), lists)
    (refs / "vendors.yaml").write_text("vendors:\n  example:\n    references: [{file: a, kind: apps}]\n")
    with pytest.raises(ReferenceFileError, match="kind 'apps' is not one of telemetry, services"):
        load_vendors(refs / "vendors.yaml")


def test_tier_default_leaves_strict_names_open(tmp_path: Path) -> None:
    lists, refs = world(tmp_path)
    v = measure(lists, refs, tier="default").vendors[0]
    assert v.by_name["api.cloud.example.com"] == "untriaged"
    assert v.total.counts["strict"] == 0 and len(v.missing) == 3


def test_an_allow_list_wins_as_in_serve(tmp_path: Path) -> None:
    lists, refs = world(tmp_path)
    allow = tmp_path / "allow.txt"
    allow.write_text("a.tracking.example.com\n")
    v = measure(lists, refs, allow=[allow]).vendors[0]
    assert v.by_name["a.tracking.example.com"] == "untriaged"


def test_stale_triage_entries(tmp_path: Path) -> None:
    stale = TRIAGE + ("x.tracking.example.com  # dead: gone (e)\n"
                      "/^[a-z]{2}-stat\\.example\\.com$/  # dead: gone (e)\n")
    lists, refs = world(tmp_path, stale)
    problems = [str(f) for f in measure(lists, refs).triage_problems]
    assert len(problems) == 2, problems
    assert "triage/example.txt:7: x.tracking.example.com: stale triage: blocked by " \
           "tracking.example.com (example.txt)" in problems[0]
    assert ":8: /^[a-z]{2}-stat\\.example\\.com$/: stale triage" in problems[1]


def test_essential_triage_must_be_backed_by_essential_txt(tmp_path: Path) -> None:
    lists, refs = world(tmp_path, TRIAGE + "push.example.com  # essential: push (forum)\n")
    (p,) = measure(lists, refs).triage_problems
    assert "push.example.com: triaged as essential, but no host of essential.txt" in str(p)


def test_an_apex_family_is_backed_by_an_essential_host_below_it(tmp_path: Path) -> None:
    """/^example\\.com$/ names only the apex; ota.example.com (essential) lies below it."""
    backed = TRIAGE + "/^example\\.com$/  # essential: apex above the OTA host (e)\n"
    lists, refs = world(tmp_path, backed)
    assert measure(lists, refs).triage_problems == []
    unbacked = TRIAGE + "/^example\\.org$/  # essential: apex (e)\n"
    lists, refs = world(tmp_path / "u", unbacked)
    (p,) = measure(lists, refs).triage_problems
    assert "triaged as essential, but no host of essential.txt" in str(p)


def test_triage_parse_errors_are_line_numbered() -> None:
    entries, findings = parse_triage(TRIAGE + "x.example.com  # maybe: unsure\n", "t.txt")
    assert len(entries) == 4
    assert [str(f) for f in findings] == [
        "t.txt:7: x.example.com: category 'maybe' is not one of essential, shared-infra, "
        "internal, dead (write '# <category>: ...')"]


def test_cli_text_json_missing_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lists, refs = world(tmp_path)
    base = ["lists", "coverage", "--lists", str(lists), "--references", str(refs)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "example" in out and "2 (22.2%)" in out and "untriaged 2" in out
    assert main([*base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["vendors"][0]["default_pct"] == 22.2 and data["vendors"][0]["untriaged"] == 2
    assert main([*base, "--missing"]) == 0
    assert capsys.readouterr().out.splitlines() == ["example\tbar.example.com", "example\tfoo.example.com"]
    assert main([*base, "--markdown"]) == 0
    assert "| **example** | 2 / 1 | **all** | 9 | 22.2% | 33.3% | 2 | cloud sync |" in capsys.readouterr().out
    # VENDOR=PATH replaces the mapping: only that vendor, only that file.
    assert main(["lists", "coverage", "--lists", str(lists), "--json",
                 f"other={refs / 'more.txt'}"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["vendor"] for v in data["vendors"]] == ["other"] and data["vendors"][0]["names"] == 2


def test_cli_exit_status_only_for_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lists, refs = world(tmp_path)
    base = ["lists", "coverage", "--lists", str(lists), "--references", str(refs)]
    assert main([*base, "--vendor", "nope"]) == 2
    assert main(["lists", "coverage", "--lists", str(lists), f"x={tmp_path / 'missing.txt'}"]) == 2
    assert main(["lists", "coverage", "--lists", str(lists), "no-equals-sign"]) == 2
    (lists / "triage" / "example.txt").write_text(TRIAGE + "y.example.com  # what: x\n")
    assert main(base) == 1
    assert "category 'what'" in capsys.readouterr().err


# --- the real repository: THE triage test of issue #16 -------------------------------------

DEFAULT_TARGET = 85.0
STRICT_TARGET = 95.0


@pytest.fixture(scope="module")
def repo_report() -> coverage.Report:
    vendors = list(load_vendors(REPO_REFERENCES / "vendors.yaml").values())
    return coverage.measure(vendors, REPO_LISTS, REPO_LISTS / "triage")


def test_repo_references_are_all_mapped_and_readable(repo_report: coverage.Report) -> None:
    names = {v.vendor for v in repo_report.vendors}
    assert names == {"xiaomi", "heytap", "vivo", "huawei", "samsung", "lg", "roku", "amazon",
                     "windows", "apple", "tiktok"}
    for v in repo_report.vendors:
        assert all(t.names > 0 for t in v.references), v.vendor
    # WindowsSpyBlocker documents extra.txt as blocking third-party applications, not telemetry.
    windows = next(v for v in repo_report.vendors if v.vendor == "windows")
    assert dict(zip((t.label for t in windows.references), windows.kinds, strict=True)) == {
        "hagezi/native.winoffice.txt": "telemetry", "nextdns/windows.txt": "telemetry",
        "windowsspyblocker/spy.txt": "telemetry", "windowsspyblocker/extra.txt": "services"}


def test_repo_triage_files_parse_and_no_entry_is_stale(repo_report: coverage.Report) -> None:
    assert [str(f) for f in repo_report.triage_problems] == []


def test_repo_extra_sources_measure_block_answers_beyond_the_references(
        repo_report: coverage.Report) -> None:
    """Issue #16 item 4: hosts no main reference lists, from another public source, are blocked too."""
    xiaomi = next(v for v in repo_report.vendors if v.vendor == "xiaomi")
    (extra,) = xiaomi.extra
    assert extra.beyond > 100
    assert extra.beyond_blocked > 0
    print(f"xiaomi extra source: {extra.beyond_blocked} of {extra.beyond} hosts beyond the "
          "references are blocked")


def test_repo_default_tier_blocks_no_essential_host(repo_report: coverage.Report) -> None:
    """Issue #16 target: essential hosts blocked by the default tier: 0 (strict: lint checks its header)."""
    assert repo_report.essential_blocked["default"] == []


def test_every_reference_name_is_blocked_or_triaged(repo_report: coverage.Report) -> None:
    missing = {v.vendor: len(v.missing) for v in repo_report.vendors if v.missing}
    assert missing == {}, "untriaged reference names (hushdns lists coverage --missing)"


# What the lists reach today (default %, default+strict %), from `hushdns lists coverage`:
# a change that blocks fewer reference names than this fails. Raise a floor when a vendor
# improves; lowering one needs the reason in the commit (e.g. a host found to be essential).
FLOORS = {
    "xiaomi": (65.5, 95.5), "heytap": (89.0, 95.5), "vivo": (85.0, 89.5), "huawei": (81.5, 96.0),
    "samsung": (85.0, 95.0), "lg": (94.5, 99.0), "roku": (84.5, 99.5), "amazon": (96.0, 99.0),
    "windows": (65.5, 79.0), "apple": (88.5, 94.0), "tiktok": (91.5, 99.5),
}


# Tier decisions of the third lists pass (issue #16), including names no reference lists yet
# (family rules generalise): the bucket each name lands in with the bundled lists.
TIER_OF = {
    # xiaomi: the pre-production family, quick apps and the theme market are default ...
    "staging.newsvc.xiaomi.com": "default", "tj1.staging.pay.xiaomi.com": "default",
    "micloudevents.preview.n.xiaomi.com": "default", "testit.miui.com": "default",
    "api.hybrid.xiaomi.com": "default", "thm.market.xiaomi.com": "default",
    # ... never sign-in, push, OTA or the store, and Mi Account's "My devices" page is strict
    "account.xiaomi.com": "untriaged", "register.xmpush.xiaomi.com": "untriaged",
    "update.miui.com": "untriaged", "app.market.xiaomi.com": "untriaged",
    "api.device.xiaomi.net": "strict", "staging.xiaomi.com.example": "untriaged",
    # lg: nudges, promoted rows and remote config are default; recommend. and guide data strict
    "eic.nudge.lgtvcommon.com": "default", "us.homeprv.lgtvcommon.com": "default",
    "aic.wiseconfig.lgtvcommon.com": "default", "eic.recommend.lgtvcommon.com": "strict",
    "eic.cdpsvc.lgtvcommon.com": "strict",
    # lg, the G1 audit's SAFE names (furkan-bayrak/lg-tv-blocklist): wiselg telemetry and two ad
    # zones default (not the ngfts update transfer); service area, ThinQ account, IoT and first
    # setup strict; the COUNTRY.nextlgsdp store/clock hosts and us.lgtvsdp.com stay open
    "eic.tv.wiselg.com": "default", "kic.tv.wiselg.com": "default", "adsdtvc.com": "default",
    "smart.adtvc.app": "default", "eic-ngfts.tv.wiselg.com": "untriaged",
    "us.ibs.lgappstv.com": "strict", "de.emp.lgsmartplatform.com": "strict",
    "eic.api.lgtviot.com": "strict", "aic-ocp.lgtviot.com": "strict", "initscr.lge.com": "strict",
    "de.nextlgsdp.com": "untriaged", "us.lgtvsdp.com": "untriaged",
    # windows: Edge telemetry below SmartScreen is default, SmartScreen itself never blocked
    "telem-edge.smartscreen.microsoft.com": "default", "nav.smartscreen.microsoft.com": "untriaged",
    "sa.windows.com": "default", "settings-win.data.microsoft.com": "strict",
    # heytap: the theme store API is default, the App Market API strict, push discovery open
    "api-id.theme.heytapmobile.com": "default", "api-id.cdo.heytapmobile.com": "strict",
    "httpdns.push.heytapmobi.com": "untriaged",
    # tiktok: the boot-time log hosts that sign-in needs are strict only, the rest of the family default
    "log-boot.tiktokv.com": "strict", "log-v2-boot.capcutapi.com": "strict",
    "log-va.tiktokv.com": "default", "log16-normal-c-useast1a.tiktokv.com": "default",
    # fourth pass: xiaomi's GetApps image servers (any tN.) and the Mi Remote IR database are
    # strict; the APK file hosts and the system-app updater stay open
    "t1.market.xiaomi.com": "strict", "t9.market.xiaomi.com": "strict",
    "controller.intl.xiaomi.com": "strict", "controller.india.xiaomi.com": "strict",
    "f8.market.xiaomi.com": "untriaged", "fga1.market.xiaomi.com": "untriaged",
    "global.market.xiaomi.com": "untriaged",
    # fifth pass (unknownFalleN's extra list): themes, dev./onebox. environments and the Mi Talk
    # API are default; Yellow Pages, balancers, the Weather API and the web site strict; Mi Home,
    # the router API and the account SDK's c.id.mi.com stay open
    "api.zhuti.xiaomi.com": "default", "onebox.market.n.xiaomi.com": "default",
    "api.chat.xiaomi.net": "default", "api.huangye.miui.com": "strict",
    "ctc.fe02.c3.xiaomi.com": "strict", "weatherapi.market.xiaomi.com": "strict",
    "www.xiaomi.com": "strict", "api.xiaomi.com": "strict", "ott.io.mi.com": "untriaged",
    "eu.api.miwifi.com": "untriaged", "c.id.mi.com": "untriaged",
    "app.chat.us.xiaomi.net": "untriaged", "xiaomi.com": "untriaged",
    # sixth pass (mtxadmin's extra list): SQM, the Watson and telemetry aliases, the vortex names
    # below metron and pre-production Skype ad hosts are default; their OneSettings siblings,
    # Defender's legacy SpyNet, Family Safety reporting, metaservices and the retired HockeyApp
    # / App Center strict; Defender cloud protection, Windows Update aliases and r.msn.com open
    "sqm.microsoft.com": "default", "legacy.watson.data.microsoft.com.akadns.net": "default",
    "telecommand.telemetry.microsoft.com.nsatc.net": "default",
    "vortex-win.data.metron.live.com.nsatc.net": "default",
    "analytics.r.msn.com": "default", "preads.skypeassets.net": "default",
    "in.appcenter.ms": "default", "redir.metaservices.microsoft.com": "default",
    "onesettings-db5.metron.live.com.nsatc.net": "strict",
    "spynetall.microsoft.akadns.net": "strict", "spynet2.microsoft.com": "strict",
    "reporting.family.microsoft.com.akadns.net": "strict",
    "dmd.metaservices.microsoft.com": "strict", "rink.hockeyapp.net": "strict",
    "install.appcenter.ms": "strict", "static.skypeassets.com": "strict",
    "wdcp.microsoft.com": "untriaged", "fe2.update.microsoft.com.akadns.net": "untriaged",
    # seventh pass (mtxadmin): r.msn.com itself strict by an exact-name regex, not its subtree
    "r.msn.com": "strict", "bat.r.msn.com": "default", "x.r.msn.com": "untriaged",
    # seventh pass (the G1 audit's STRICT list, mtxadmin's third-party hosts): the TV's ThinQ
    # cloud sync, Gallery+, voice search, LG Shop and undocumented names strict; updates and file
    # transfer, the store back ends, ThinQ appliance control and LG Channels stay open
    "lss.lgthinq.com": "strict", "kic-op-lss.lgthinq.com": "strict",
    "aic.lggalleryplus.com": "strict", "lgsmartweb.com": "strict",
    "aic.lgshopsvc.lgappstv.com": "strict", "am.lge.com": "strict", "ig.lge.com": "strict",
    "fms.lgunifiedsmart.com": "strict", "eic.lgthinq.com": "untriaged",
    "kic-gfts.lge.com": "untriaged", "su-dev.lge.com": "untriaged",
    "aic-ngfts.nextlgsdp.com": "untriaged", "de.lgeapi.com": "untriaged",
    "de.ibs.nextlgsdp.com": "untriaged", "bss.lgechannel.com": "untriaged",
    "kic.cdplauncher.lgtvcommon.com": "untriaged", "eic.lgchhomeapp.lgtvcommon.com": "untriaged",
    "a.lgappstv.com": "untriaged", "lgtviot.com": "untriaged", "discovery.meethue.com": "untriaged",
}


@pytest.fixture(scope="module")
def repo_classifier() -> coverage.Classifier:
    return coverage.Classifier(coverage.load_lists(REPO_LISTS), [])


@pytest.mark.parametrize(("name", "bucket"), sorted(TIER_OF.items()))
def test_tier_of_names_decided_in_the_third_lists_pass(
        repo_classifier: coverage.Classifier, name: str, bucket: str) -> None:
    assert repo_classifier.bucket(name) == bucket


def test_coverage_never_falls_below_todays_floor(repo_report: coverage.Report) -> None:
    now = {v.vendor: (v.total.share("default"), v.total.share("default", "strict"))
           for v in repo_report.vendors}
    assert set(now) == set(FLOORS)
    low = {v: (round(d, 1), round(s, 1)) for v, (d, s) in now.items()
           if d < FLOORS[v][0] or s < FLOORS[v][1]}
    assert low == {}, f"vendor: (default %, default+strict %) below FLOORS {FLOORS}"


@pytest.mark.xfail(strict=False, reason="issue #16 targets: xiaomi, huawei, roku, windows (default) "
                   "and vivo, windows, apple (default+strict) are below: default by hosts whose "
                   "blocking breaks a household function, default+strict by OTA, time, push and "
                   "carrier-config hosts no tier may block; see blocklists/README.md 'Coverage: "
                   "where a target is out of reach, and why'")
def test_coverage_targets_per_vendor(repo_report: coverage.Report) -> None:
    low = {v.vendor: (round(v.total.share("default"), 1), round(v.total.share("default", "strict"), 1))
           for v in repo_report.vendors
           if v.total.share("default") < DEFAULT_TARGET
           or v.total.share("default", "strict") < STRICT_TARGET}
    assert low == {}, f"vendor: (default %, default+strict %) below {DEFAULT_TARGET}/{STRICT_TARGET}"


def test_markdown_update_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    from resolver.lists.coverage_cli import BEGIN, END

    lists, refs = world(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{BEGIN}\nold table\n{END}\n\n## after\n")
    base = ["lists", "coverage", "--lists", str(lists), "--references", str(refs), "--markdown"]
    assert main([*base, "--update", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# top\n\n{BEGIN}\n| vendor |") and text.endswith(f"{END}\n\n## after\n")
    assert "old table" not in text and "| **example** |" in text
    assert main([*base, "--update", str(lists / "example.txt")]) == 2     # no markers there
    # The repository README carries the block the lead regenerates.
    repo = (ROOT / "README.md").read_text()
    assert repo.index(BEGIN) < repo.index(END)


def test_a_family_regex_in_a_curated_list_is_served_and_explained(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """'/regex/  # comment' lines load (not rejected), and query/show name the one regex and its line."""
    lists, _ = world(tmp_path)
    (lists / "example.txt").write_text(
        HEADER.format(what="default", tier="default") + DEFAULT
        + "/^obus-[a-z0-9]+\\.example\\.com$/  # obus family (e)\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"upstreams: ['192.0.2.53']\nblocking:\n  lists: {{ex: {lists / 'example.txt'}}}\n")
    assert main(["check", "-c", str(cfg)]) == 0
    assert "3 entries, 0 rejected lines" in capsys.readouterr().out
    assert main(["query", "-c", str(cfg), "obus-eu1.example.com"]) == 0
    out = capsys.readouterr().out
    assert "blocked by list ex, rule `/^obus-[a-z0-9]+\\.example\\.com$/` " \
           f"({lists / 'example.txt'}:9)" in out
    assert main(["lists", "show", "-c", str(cfg), "ex"]) == 0
    assert f"{lists / 'example.txt'}:9: /^obus-[a-z0-9]+\\.example\\.com$/  # obus family (e)" in \
        capsys.readouterr().out

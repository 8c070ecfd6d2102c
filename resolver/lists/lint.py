"""The linter for the curated lists: they are reviewed like code, so mistakes fail CI.

Why so strict: a rule covers its whole subtree, so one wrong line (a bare
vendor apex, a parent of a sign-in host) silently breaks devices for every
user of the default config.  The checks are per file, except the essential
check, which reads ``essential.txt`` next to the linted files.

The curated format (blocklists/README.md): a header of ``# key: value``
lines, optional ``# == Section ==`` lines, and one bare lower-case hostname
per rule line with a trailing ``# comment`` that says what it is and why.

Which files are curated: those in the bundled blocklists directory (what ships
with hushdns and every default config uses), or any file with ``--curated``.
Every other file is a household's own list: it needs no header, comments or
order, and only its rules are checked (each line one the loader accepts, valid
names, no duplicates, nothing as wide as a top-level domain), since that is
what ``serve`` would otherwise reject or regret.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .parse import parse_text

REQUIRED_HEADERS = ("title", "description", "tier", "license", "last-reviewed")
TIERS = ("default", "strict", "essential", "bypass")
# Opt-in lists of the ``bypass:`` config key (not vendor telemetry): their own tier.
BYPASS_FILES = ("doh-resolvers.txt",)
ESSENTIAL_FILE = "essential.txt"

# Blocking one of these as a subtree takes down sign-in, updates, app stores or
# half the web: a list must name the telemetry hosts below them instead.
VENDOR_APEXES = frozenset({
    # Xiaomi
    "xiaomi.com", "xiaomi.net", "xiaomi.cn", "miui.com", "mi.com", "mi-img.com", "xiaomi.eu",
    # Huawei / Honor
    "huawei.com", "hicloud.com", "dbankcloud.com", "dbankcloud.cn", "dbankcloud.ru",
    "dbankcdn.com", "vmall.com", "honor.com", "hihonor.com", "huaweicloud.com",
    # Samsung
    "samsung.com", "samsungcloud.com", "samsungosp.com", "samsungapps.com",
    "samsungqbe.com", "samsungdm.com",
    # OPPO / Realme / OnePlus (HeyTap)
    "oppo.com", "heytap.com", "heytapmobi.com", "heytapmobile.com", "coloros.com",
    "oppomobile.com", "realme.com", "realmemobile.com", "oneplus.com", "oneplus.net",
    # Vivo
    "vivo.com", "vivo.com.cn", "vivoglobal.com", "vivo.xyz",
    # Amazon
    "amazon.com", "amazon.de", "amazon.co.uk", "amazonaws.com", "amazonvideo.com",
    "media-amazon.com", "ssl-images-amazon.com", "amazon-dss.com", "a2z.com",
    # Roku
    "roku.com",
    # LG
    "lge.com", "lg.com", "lgtvsdp.com", "lgappstv.com", "lgtvcommon.com",
    # Microsoft
    "microsoft.com", "windows.com", "windows.net", "windowsupdate.com", "live.com",
    "office.com", "office.net", "microsoftonline.com", "msftconnecttest.com", "msn.com",
    "xboxlive.com", "azure.com", "azureedge.net",
    # Shared platforms and CDNs every device needs
    "google.com", "googleapis.com", "gstatic.com", "android.com", "apple.com", "icloud.com",
    "cloudfront.net", "akamai.net", "akamaihd.net", "akamaized.net", "akamaiedge.net",
    "edgekey.net", "edgesuite.net", "fastly.net", "cloudflare.com", "github.com",
    "githubusercontent.com",
})

# Registries under which anyone can register names: a rule on one of these is as
# wide as a top-level domain.  (A short list, not the Public Suffix List.)
PUBLIC_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.cn", "net.cn", "org.cn", "gov.cn", "com.au",
    "net.au", "co.jp", "ne.jp", "or.jp", "co.kr", "or.kr", "com.br", "com.tw", "com.hk",
    "com.sg", "co.in", "net.in", "co.id", "com.my", "com.tr", "com.mx", "com.ru", "co.za",
    "com.vn", "com.ph", "co.th", "in.th", "com.ar", "com.eg", "com.sa", "co.nz",
    "github.io", "blogspot.com", "herokuapp.com", "appspot.com", "cloudfront.net",
})

_HEADER = re.compile(r"#\s*([a-z][a-z-]*):\s*(.*)$")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, order=True)
class Finding:
    """One problem, printed as ``file:line: message`` (editors jump to it)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Entry:
    """One rule line of a curated file."""

    name: str
    line: int
    comment: str
    section: int
    regex: bool = False         # a family rule: ``name`` is the regex source


@dataclass
class ListFile:
    """A curated file read into header, entries and the findings of the per-line checks."""

    path: Path
    headers: dict[str, tuple[str, int]]
    entries: list[Entry]
    findings: list[Finding]
    preamble: str = ""          # every comment above the first rule

    @property
    def tier(self) -> str | None:
        value = self.headers.get("tier")
        return value[0] if value else None


def sort_key(name: str) -> tuple[str, ...]:
    """Rules sort by their labels read right to left, so a vendor's hosts stay together."""
    return tuple(reversed(name.split(".")))


def parents(name: str) -> Iterable[str]:
    """Every proper parent suffix of ``name`` (``a.b.c`` -> ``b.c``, ``c``)."""
    i = name.find(".")
    while i >= 0:
        name = name[i + 1:]
        yield name
        i = name.find(".")


def hostname_problem(token: str) -> str | None:
    """Why ``token`` is not a bare, lower-case, ASCII hostname (None when it is one)."""
    if not token.isascii():
        try:
            puny = token.encode("idna").decode("ascii")
        except UnicodeError:
            return f"not a valid internationalized name: {token!r}"
        return f"non-ASCII name; write it in punycode: {puny}"
    if token != token.lower():
        return f"write host names in lower case: {token.lower()}"
    if token.endswith("."):
        return f"no trailing dot: {token.rstrip('.')}"
    if len(token) > 253:
        return f"name is {len(token)} characters long (at most 253)"
    for label in token.split("."):
        if not label:
            return f"empty label in {token!r}"
        if len(label) > 63:
            return f"label {label[:20]}... is {len(label)} characters long (at most 63)"
        if label.startswith("-") or label.endswith("-"):
            return f"label {label!r} starts or ends with a hyphen"
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                return f"label {label!r} is not valid punycode"
        elif label[2:4] == "--":
            return f"label {label!r} has '--' in positions 3-4 (reserved for punycode)"
    if token.rsplit(".", 1)[-1].isdigit():
        return f"{token!r} ends in a numeric label (an IP address is not a host name)"
    return None


def read_list(path: Path) -> ListFile:
    """Read one curated file, checking everything that needs only that line."""
    p = str(path)
    findings: list[Finding] = []
    headers: dict[str, tuple[str, int]] = {}
    entries: list[Entry] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ListFile(path, {}, [], [Finding(p, 1, f"cannot read: {exc}")])
    in_header = True
    section = 0
    preamble, preamble_done = text, False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if in_header:
            m = _HEADER.match(line)
            if m and m.group(1) in REQUIRED_HEADERS:
                if m.group(1) in headers:
                    findings.append(Finding(p, lineno, f"header field {m.group(1)!r} given twice"))
                headers[m.group(1)] = (m.group(2).strip(), lineno)
                continue
            if not line.startswith("#") or line.startswith("# =="):
                in_header = False
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# =="):
                section += 1
            continue
        if not entries and not preamble_done:
            preamble_done = True
            preamble = "\n".join(text.splitlines()[:lineno - 1])
        entry = _rule(p, lineno, raw, findings)
        if entry is not None:
            entry.section = section
            entries.append(entry)
    return ListFile(path, headers, entries, findings, preamble)


def _rule(p: str, lineno: int, raw: str, findings: list[Finding]) -> Entry | None:
    """Check one rule line: exactly one bare hostname, with a comment."""
    line = raw.strip()
    parsed = parse_text(line, keep_rules=True)
    rule_text, _, comment = line.partition("#")
    token = rule_text.strip()
    if parsed.rejected:
        problem = hostname_problem(token) if len(token.split()) == 1 else None
        findings.append(Finding(p, lineno, problem or f"not a rule: {parsed.rejected[0][2]}"))
        return None
    if parsed.regexes:
        return _regex_rule(p, lineno, parsed.regexes[0], comment, findings)
    if len(parsed.domains) != 1:
        what = "no host name" if not parsed.domains else f"{len(parsed.domains)} host names"
        findings.append(Finding(p, lineno, f"a rule line holds exactly one host name, found {what}"))
        return None
    name = parsed.domains[0]
    problem = hostname_problem(token)
    if problem is None and token != name:
        problem = f"write the bare host name: {name}"
    if problem is not None:
        findings.append(Finding(p, lineno, problem))
        return None
    if not comment.strip():
        findings.append(Finding(p, lineno, f"{name}: every rule needs a '# comment' saying what "
                                           "the host does and the public evidence"))
    return Entry(name, lineno, comment.strip(), 0)


def check_file(lf: ListFile, essential: dict[str, tuple[str, int, str]] | None) -> list[Finding]:
    """All checks of one file; ``essential`` maps host -> (file, line, reason)."""
    p = str(lf.path)
    out = list(lf.findings)
    out += _check_headers(lf)
    out += _check_regex_rules(lf, essential)
    hosts = [e for e in lf.entries if not e.regex]
    seen: dict[str, int] = {}
    for e in hosts:
        if e.name in seen:
            out.append(Finding(p, e.line, f"{e.name}: duplicate of line {seen[e.name]}"))
        else:
            seen[e.name] = e.line
    for e in hosts:
        for parent in parents(e.name):
            if parent in seen:
                out.append(Finding(p, e.line, f"{e.name}: redundant, line {seen[parent]} "
                                              f"({parent}) already covers it"))
                break
    prev: Entry | None = None
    for e in hosts:
        if prev is not None and prev.section == e.section and sort_key(e.name) < sort_key(prev.name):
            out.append(Finding(p, e.line, f"{e.name}: out of order, sort it before {prev.name} "
                                          f"(line {prev.line}); rules sort by reversed labels"))
        prev = e
    if lf.tier != "essential":
        for e in hosts:
            problem = _too_wide(e.name)
            if problem:
                out.append(Finding(p, e.line, problem))
    if lf.tier in ("default", "strict") and essential:
        for host, (efile, eline, _) in sorted(essential.items(), key=lambda h: h[1][1]):
            for rule in (host, *parents(host)):
                if rule not in seen:
                    continue
                how = "is" if rule == host else "covers"
                if lf.tier == "default":
                    out.append(Finding(p, seen[rule], f"{rule}: {how} the essential host {host} "
                                                      f"({efile}:{eline}); a default-tier list "
                                                      "must not block it"))
                else:
                    out += _strict_essential(lf, rule, seen[rule], how, host, essential[host])
    return sorted(out, key=lambda f: f.line)


def _regex_rule(p: str, lineno: int, src: str, comment: str,
                findings: list[Finding]) -> Entry | None:
    """A family rule ``/^...$/  # comment``: anchored, linear, with its evidence."""
    from .family import regex_problem

    problem = regex_problem(src)
    if problem is not None:
        findings.append(Finding(p, lineno, f"/{src}/: {problem}"))
        return None
    if not comment.strip():
        findings.append(Finding(p, lineno, f"/{src}/: every rule needs a '# comment' naming the "
                                           "family members the references list, and the evidence"))
    return Entry(src, lineno, comment.strip(), 0, regex=True)


def _check_regex_rules(lf: ListFile, essential: dict[str, tuple[str, int, str]] | None) -> list[Finding]:
    """Family regexes: few per file, no duplicates, never a vendor apex or an essential host.

    An anchored regex matches whole names only (no subtree), so it covers an
    essential host only when it matches that very name.  A strict list may,
    under the same header rule as a host rule (``_strict_essential``).
    """
    from .family import MAX_REGEXES_PER_FILE

    p = str(lf.path)
    out: list[Finding] = []
    regexes = [e for e in lf.entries if e.regex]
    if lf.tier == "essential" and regexes:
        out.append(Finding(p, regexes[0].line, "essential.txt names hosts, not regexes"))
        return out
    if len(regexes) > MAX_REGEXES_PER_FILE:
        out.append(Finding(p, regexes[MAX_REGEXES_PER_FILE].line,
                           f"more than {MAX_REGEXES_PER_FILE} regex rules in one file; every query "
                           "runs them: merge families or name the hosts"))
    seen: dict[str, int] = {}
    for e in regexes:
        if e.name in seen:
            out.append(Finding(p, e.line, f"/{e.name}/: duplicate of line {seen[e.name]}"))
            continue
        seen[e.name] = e.line
        rx = re.compile(e.name)
        wide = sorted(a for a in VENDOR_APEXES | PUBLIC_SUFFIXES if rx.search(a))
        if wide:
            out.append(Finding(p, e.line, f"/{e.name}/: matches the vendor apex or public suffix "
                                          f"{wide[0]}; a family regex names hosts below it"))
        for host, info in sorted((essential or {}).items(), key=lambda h: h[1][1]):
            if not rx.search(host):
                continue
            if lf.tier == "default":
                out.append(Finding(p, e.line, f"/{e.name}/: matches the essential host {host} "
                                              f"({info[0]}:{info[1]}); a default-tier list must not "
                                              "block it"))
            elif lf.tier == "strict":
                out += _strict_essential(lf, f"/{e.name}/", e.line, "matches", host, info)
    return out


STOPS_WORKING = "STOPS WORKING"


def stops_working_paragraph(preamble: str) -> str:
    """The header paragraph starting ``# STOPS WORKING`` (up to the next ``#``-only or non-comment line)."""
    out: list[str] = []
    for raw in preamble.split("\n"):
        line = raw.strip()
        body = line.lstrip("#").strip() if line.startswith("#") else None
        if out:
            if not body or line.startswith("# =="):
                break
            out.append(body)
        elif body and body.startswith(STOPS_WORKING):
            out.append(body)
    return " ".join(out)


def essential_function(comment: str) -> str:
    """What an essential host is for: its comment up to the first ``;``, ``(``, ``:`` or ``,``."""
    return re.split(r"[;(:,]", comment, maxsplit=1)[0].strip()


def _names(paragraph: str, text: str) -> bool:
    squash = " ".join(text.lower().split())
    return bool(squash) and squash in " ".join(paragraph.lower().split())


def _strict_essential(lf: ListFile, rule: str, line: int, how: str, host: str,
                      info: tuple[str, int, str]) -> list[Finding]:
    """A strict rule may cover an essential host only when the list says what stops working.

    The rule: the header's ``STOPS WORKING`` paragraph (the comments above the
    first rule) contains the essential host's name, or its function: the
    essential entry's comment up to the first ``;``, ``(``, ``:`` or ``,``
    (``find.api.micloud.xiaomi.net  # Find Device; ...`` -> ``Find Device``),
    compared case-insensitively with runs of blanks squashed.
    """
    efile, eline, reason = info
    paragraph = stops_working_paragraph(lf.preamble)
    function = essential_function(reason)
    if paragraph and (host in paragraph or _names(paragraph, function)):
        return []
    what = f"the host or its function ({function!r})" if function else "the host"
    return [Finding(str(lf.path), line, f"{rule}: {how} the essential host {host} ({efile}:{eline}); "
                                        f"a strict list may, but its header must name the host "
                                        f"and say what stops working: its '# {STOPS_WORKING} with "
                                        f"this list on' paragraph must name {what}")]


def lint_triage(files: list[Path]) -> list[Finding]:
    """Syntax of triage files (blocklists/triage/README.md): rule, category, reason."""
    from .triage import parse_triage

    out: list[Finding] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.append(Finding(str(f), 1, f"cannot read: {exc}"))
            continue
        out += parse_triage(text, str(f))[1]
    return out


def triage_files(paths: Iterable[Path]) -> list[Path]:
    """Triage files to lint: ``triage/*.txt`` of a linted directory, or files inside a ``triage`` folder."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            tdir = path if path.name == "triage" else path / "triage"
            if tdir.is_dir():
                out += sorted(q for q in tdir.glob("*.txt") if q.is_file())
        elif path.is_file() and path.parent.name == "triage":
            out.append(path)
    return list(dict.fromkeys(out))


def _too_wide(name: str) -> str | None:
    if "." not in name:
        return f"{name}: a single label covers a whole top-level domain"
    if name in PUBLIC_SUFFIXES:
        return f"{name}: a public suffix, it covers every site registered under it"
    if name in VENDOR_APEXES:
        return (f"{name}: a bare vendor apex blocks the whole vendor (sign-in, updates, push); "
                "list the telemetry hosts below it")
    return None


def _check_headers(lf: ListFile) -> list[Finding]:
    p = str(lf.path)
    out = []
    for key in REQUIRED_HEADERS:
        if key not in lf.headers or not lf.headers[key][0]:
            out.append(Finding(p, 1, f"header field '# {key}:' is missing or empty "
                                     "(it belongs in the comment block at the top)"))
    tier = lf.headers.get("tier")
    if tier and tier[0]:
        if tier[0] not in TIERS:
            out.append(Finding(p, tier[1], f"tier {tier[0]!r} is not one of {', '.join(TIERS)}"))
        else:
            expect = "essential" if lf.path.name == ESSENTIAL_FILE else \
                "bypass" if lf.path.name in BYPASS_FILES else \
                "strict" if lf.path.stem.endswith("-strict") else "default"
            if tier[0] != expect:
                out.append(Finding(p, tier[1], f"tier {tier[0]!r} does not match the file name "
                                               f"(<vendor>.txt is default, <vendor>-strict.txt "
                                               f"strict, {ESSENTIAL_FILE} essential, "
                                               f"{', '.join(BYPASS_FILES)} bypass)"))
    date = lf.headers.get("last-reviewed")
    if date and date[0]:
        try:
            if not _DATE.fullmatch(date[0]):
                raise ValueError
            datetime.date.fromisoformat(date[0])
        except ValueError:
            out.append(Finding(p, date[1], f"last-reviewed {date[0]!r} is not a date YYYY-MM-DD"))
    return out


def collect(paths: Iterable[Path]) -> tuple[list[Path], list[Finding]]:
    """The ``*.txt`` files named or inside the named directories (sorted, no duplicates)."""
    files: list[Path] = []
    problems: list[Finding] = []
    for path in paths:
        if path.is_dir():
            found = sorted(q for q in path.glob("*.txt") if q.is_file())
            if not found:
                problems.append(Finding(str(path), 0, "no *.txt list files in this directory"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Finding(str(path), 0, "no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, problems


def essential_hosts(files: list[Path]) -> dict[str, tuple[str, int, str]]:
    """host -> (file, line, reason) from every essential.txt given or next to a given file."""
    candidates = [f for f in files if f.name == ESSENTIAL_FILE]
    candidates += [f.parent / ESSENTIAL_FILE for f in files]
    out: dict[str, tuple[str, int, str]] = {}
    for ef in dict.fromkeys(c.resolve() for c in candidates):
        if ef.is_file():
            for e in read_list(ef).entries:
                out.setdefault(e.name, (str(ef), e.line, e.comment))
    return out


def is_curated(path: Path) -> bool:
    """A file of the bundled blocklists directory (where the curated lists live)."""
    from .. import bundled

    return path.resolve().parent == bundled.lists_dir().resolve()


def check_household(path: Path) -> list[Finding]:
    """A household list: its rules, in any format the loader reads; no header, no comments."""
    p = str(path)
    parsed = parse_text(path.read_text(encoding="utf-8", errors="replace"), keep_rules=True)
    out = [Finding(p, line, f"not a rule: {reason}: {text.strip()}")
           for line, text, reason in parsed.rejected]
    seen: dict[str, int] = {}
    for r in parsed.rules or ():
        if r.regex:
            continue
        if r.value in seen:
            out.append(Finding(p, r.line, f"{r.value}: duplicate of line {seen[r.value]}"))
            continue
        seen[r.value] = r.line
        if "." not in r.value:
            out.append(Finding(p, r.line, f"{r.value}: a single label covers a whole top-level domain"))
        elif r.value in PUBLIC_SUFFIXES:
            out.append(Finding(p, r.line, f"{r.value}: a public suffix, it covers every site "
                                          "registered under it"))
    return sorted(out, key=lambda f: f.line)


def lint(paths: Iterable[Path], curated: bool = False) -> tuple[list[Path], list[Finding]]:
    """Lint files and directories; returns the files looked at and every finding.

    Curated files (``is_curated``, or all with ``curated``) get every check; the others
    are household lists and get ``check_household``.  Triage files (``triage_files``:
    ``triage/*.txt`` of a linted directory) get ``lint_triage``."""
    paths = list(paths)
    triage = triage_files(paths)
    files, findings = collect([p for p in paths if not (p.is_dir() and p.name == "triage")
                               and p not in triage])
    strict = [f for f in files if curated or is_curated(f)]
    essential = essential_hosts(strict)
    for f in files:
        findings += check_file(read_list(f), essential) if f in strict else check_household(f)
    findings += lint_triage(triage)
    return files + triage, findings

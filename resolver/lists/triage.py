"""Triage files: why a reference name is not blocked, recorded in git next to the lists.

Why: a public list names hundreds of vendor hosts; some must stay reachable
(sign-in, OTA), some are CDNs that serve other things, some no device ever
resolves.  ``blocklists/triage/<vendor>.txt`` records that decision per name
or per family, so coverage can tell "decided not to block" from "never looked
at", and a test can fail on the second.  Format (blocklists/triage/README.md):

    # triage: xiaomi -- reference names hushdns does not block, and why
    #
    # == optional section ==
    <rule>  # <category>: <what it is; for essential: what breaks> (<public source>)

``<rule>`` means what a list rule means: a bare host name covers the name and
everything below it, ``/regex/`` (anchored ``^...$``) matches whole names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .family import regex_problem
from .lint import Finding, hostname_problem, parents
from .parse import normalize_domain

CATEGORIES = ("essential", "shared-infra", "internal", "dead")
TRIAGE_DIR = "triage"
_RULE_LINE = re.compile(r"(\S+)(?:\s+#\s*(.*))?$")
_CATEGORY = re.compile(r"([a-z-]+):\s*(.*)$")
_SOURCE = re.compile(r"\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


@dataclass(frozen=True)
class Entry:
    """One triage rule: what it covers, why, and where it is written."""

    rule: str
    regex: bool
    category: str
    reason: str
    path: str
    line: int

    def __str__(self) -> str:
        rule = f"/{self.rule}/" if self.regex else self.rule
        return f"{self.path}:{self.line}: {rule} ({self.category})"


def parse_triage(text: str, path: str) -> tuple[list[Entry], list[Finding]]:
    """Entries of one triage file, and a ``file:line`` finding for every bad line."""
    entries: list[Entry] = []
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        if first:
            first = False
            if not line.startswith("# triage:"):
                findings.append(Finding(path, lineno, "a triage file starts with '# triage: <vendor> -- ...'"))
        if line.startswith("#"):
            continue
        m = _RULE_LINE.match(line)
        token, comment = (m.group(1), m.group(2)) if m else (line.split()[0], None)
        if m is None or comment is None:
            findings.append(Finding(path, lineno, f"{token}: write '<rule>  # <category>: <reason> "
                                                  "(<source>)' (one rule per line, then the comment)"))
            continue
        regex = token.startswith("/") and token.endswith("/") and len(token) > 2
        rule = token[1:-1] if regex else token
        problem = regex_problem(rule) if regex else hostname_problem(token)
        if problem is None and not regex and ("." not in token or normalize_domain(token) != token):
            problem = f"{token}: not a host name (letters, digits, hyphens; two labels or more)"
        if problem is not None:
            findings.append(Finding(path, lineno, problem))
            continue
        cm = _CATEGORY.match(comment)
        if cm is None or cm.group(1) not in CATEGORIES:
            got = cm.group(1) if cm else comment.split(":")[0][:30]
            findings.append(Finding(path, lineno, f"{token}: category {got!r} is not one of "
                                                  f"{', '.join(CATEGORIES)} (write '# <category>: ...')"))
            continue
        category, reason = cm.group(1), cm.group(2).strip()
        if not reason:
            findings.append(Finding(path, lineno, f"{token}: say why after '{category}:'"))
            continue
        if category == "essential" and not _SOURCE.search(reason):
            findings.append(Finding(path, lineno, f"{token}: an essential entry ends with its public "
                                                  "source in parentheses: what breaks (source)"))
            continue
        if token in seen:
            findings.append(Finding(path, lineno, f"{token}: duplicate of line {seen[token]}"))
            continue
        seen[token] = lineno
        entries.append(Entry(rule, regex, category, reason, path, lineno))
    return entries, findings


def read_triage_dir(directory: Path) -> tuple[dict[str, list[Entry]], list[Finding]]:
    """vendor -> entries of ``<directory>/<vendor>.txt``; a missing directory is empty."""
    out: dict[str, list[Entry]] = {}
    findings: list[Finding] = []
    if not directory.is_dir():
        return out, findings
    for f in sorted(directory.glob("*.txt")):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            findings.append(Finding(str(f), 1, f"cannot read: {exc}"))
            continue
        entries, problems = parse_triage(text, str(f))
        out[f.stem] = entries
        findings += problems
    return out, findings


class Matcher:
    """Which triage entry covers a name: the longest host rule on its suffix path, else a regex."""

    def __init__(self, entries: list[Entry]) -> None:
        self.hosts: dict[str, Entry] = {}
        self.regexes: list[tuple[re.Pattern[str], Entry]] = []
        for e in entries:
            if e.regex:
                self.regexes.append((re.compile(e.rule), e))
            else:
                self.hosts.setdefault(e.rule, e)

    def match(self, name: str) -> Entry | None:
        hosts = self.hosts
        if name in hosts:
            return hosts[name]
        for p in parents(name):
            if p in hosts:
                return hosts[p]
        for rx, e in self.regexes:
            if rx.search(name):
                return e
        return None


def essential_problems(entries: list[Entry], essential: dict[str, tuple[str, int, str]]) -> list[Finding]:
    """An ``essential`` triage entry must be backed by blocklists/essential.txt.

    Backed means: the triaged host is an essential host or lies below one,
    or (a family) an essential host matches its regex or lies below a name
    that matches it.
    """
    out = []
    for e in entries:
        if e.category != "essential":
            continue
        if e.regex:
            rx = re.compile(e.rule)
            # a family is backed when it matches an essential host or a parent of
            # one (an essential host lies below a name it matches: /^xiaomi\.com$/)
            ok = any(rx.search(h) or any(rx.search(p) for p in parents(h)) for h in essential)
        else:
            suffix = "." + e.rule
            ok = e.rule in essential or any(p in essential for p in parents(e.rule)) \
                or any(h.endswith(suffix) for h in essential)
        if not ok:
            rule = f"/{e.rule}/" if e.regex else e.rule
            out.append(Finding(e.path, e.line, f"{rule}: triaged as essential, but no host of "
                                               "essential.txt is or covers it; add it to essential.txt "
                                               "(what breaks, with the source)"))
    return out

"""Parsing of blocklist and allowlist text in the formats people subscribe to.

Accepted, one rule per line, in any mix:
  hosts files        ``0.0.0.0 a.example b.example`` (localhost-style names skipped)
  plain domains      ``tracking.example.com``
  adblock            ``||tracking.example.com^``  (modifiers like ``$important`` ignored)
  wildcards          ``*.example.com``  (same subtree as ``example.com``)
  regexes            ``/^ads?[0-9]*\\./``  (matched against the whole lower-case name)
Comments (``#``, ``!``, ``[Adblock ...]``) and inline ``# comments`` are skipped;
CRLF, a BOM, trailing dots, upper case and IDN (converted to punycode) are handled.
Every rule covers the name and all its subdomains.  Lines that are none of the
above are reported with their line number, never silently dropped.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ListSpec

from . import safe_regex

# Names that hosts files map to loopback for the machine itself, not blocks.
_HOSTS_SKIP = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
    "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
    "ip6-allhosts", "0.0.0.0",
})
# A whole hostname in one match (one regex call per rule keeps a 1M-line list fast).
_HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)
MAX_REGEX_LEN = 1024


@dataclass(slots=True)
class Rule:
    """One accepted rule: the domain (or regex source), its line, and the text as written."""

    value: str
    line: int
    text: str
    regex: bool = False


@dataclass
class Parsed:
    """What a list's text yielded.

    ``rules`` (with line numbers) is filled only when asked for: a million
    Rule objects would double the memory of loading a big list for serving.
    """

    domains: list[str] = field(default_factory=list)
    regexes: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # line, text, reason
    rules: list[Rule] | None = None

    def add(self, value: str, lineno: int, text: str, regex: bool = False) -> None:
        (self.regexes if regex else self.domains).append(value)
        if self.rules is not None:
            self.rules.append(Rule(value, lineno, text, regex))

    def __len__(self) -> int:
        return len(self.domains) + len(self.regexes)


def normalize_domain(name: str) -> str | None:
    """Lower-case, strip the trailing dot, IDN -> punycode; None when not a valid hostname."""
    name = name.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if _HOSTNAME.fullmatch(name) is None or len(name) > 253:
        return None
    return name


# A regex rule followed by a comment: the regex has no blanks (host names have none).
_COMMENTED_REGEX = re.compile(r"(/\S+/)\s+#")
_IPISH = re.compile(r"[0-9a-fA-F:.%]+")


def _is_ip(token: str) -> bool:
    if _IPISH.fullmatch(token) is None:   # most tokens are names: skip the exception path
        return False
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


def parse_text(text: str, keep_rules: bool = False) -> Parsed:
    """Parse a whole list; never raises on content."""
    out = Parsed(rules=[] if keep_rules else None)
    if text.startswith("\ufeff"):
        text = text[1:]
    # Split on "\n" only (CR is stripped with the line): str.splitlines() also
    # breaks on \x0b, \x0c, \x1c-\x1e, \x85 and \u2028, and the line numbers in
    # messages would no longer match the editor's or grep -n's.
    fast = _HOSTNAME.fullmatch
    domains = out.domains if out.rules is None else None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] in "#!" or line.startswith("[") and line.endswith("]"):
            continue
        # Fast path for the commonest line of big lists, a bare lower-case hostname:
        # one regex call, no tokenizing (a million-line list loads in seconds).
        if domains is not None:
            name = line
            if line[0] == "|" and line[-1] == "^" and line[1] == "|":       # ||host^
                name = line[2:-1]
            elif line[0] == "0" and line.startswith("0.0.0.0 "):            # hosts file
                name = line[8:].strip()
            elif line[0] == "1" and line.startswith("127.0.0.1 "):
                name = line[10:].strip()
            if len(name) <= 253 and fast(name) is not None and name not in _HOSTS_SKIP:
                domains.append(name)
                continue
        if line.startswith("/") and line.rstrip().endswith("/") and len(line) > 2:
            _regex(out, line, lineno)
            continue
        if line.startswith("/"):
            commented = _COMMENTED_REGEX.match(line)   # /regex/  # why (curated lists)
            if commented is not None:
                _regex(out, commented.group(1), lineno, line)
                continue
        hash_at = line.find("#")
        if hash_at >= 0:
            line = line[:hash_at].strip()
            if not line:
                continue
        _rule_line(out, line, raw.strip(), lineno)
    return out


def _regex(out: Parsed, line: str, lineno: int, text: str | None = None) -> None:
    src = line[1:-1]
    if len(src) > MAX_REGEX_LEN:
        out.rejected.append((lineno, line, "regex too long"))
        return
    try:
        re.compile(src)
    except re.error as exc:
        out.rejected.append((lineno, line, f"bad regex: {exc}"))
        return
    try:
        safe_regex.check(src)
    except safe_regex.UnsafeRegex as exc:
        out.rejected.append((lineno, line, f"unsafe regex: {exc}"))
        return
    out.add(src, lineno, text or line, regex=True)


def _rule_line(out: Parsed, line: str, text: str, lineno: int) -> None:
    tokens = line.split()
    if len(tokens) > 1 or _is_ip(tokens[0]):
        if not _is_ip(tokens[0]):
            out.rejected.append((lineno, text, "several words, and the first is not an IP (hosts format)"))
            return
        for tok in tokens[1:]:
            if tok.lower() in _HOSTS_SKIP:
                continue
            name = normalize_domain(tok)
            if name is None:
                out.rejected.append((lineno, text, f"not a valid hostname: {tok!r}"))
            else:
                out.add(name, lineno, text)
        return
    tok = tokens[0]
    if tok.startswith("@@"):
        out.rejected.append((lineno, text, "adblock exceptions (@@) are not supported; use an allow list"))
        return
    if tok.startswith("||"):
        tok = tok[2:]
        cut = tok.find("^")
        if cut >= 0:
            rest = tok[cut + 1:]
            if rest and not rest.startswith("$"):
                out.rejected.append((lineno, text, "adblock rule with a path is not a DNS rule"))
                return
            tok = tok[:cut]
        elif "$" in tok:
            tok = tok.split("$", 1)[0]
    elif tok.startswith("*."):
        tok = tok[2:]
    if tok.lower() in _HOSTS_SKIP:
        return
    name = normalize_domain(tok)
    if name is None:
        out.rejected.append((lineno, text, f"not a valid hostname: {tok!r}"))
        return
    out.add(name, lineno, text)


# A list whose lines are mostly unparseable is probably an HTML error page or a
# format we do not know: refuse it rather than serve a fraction of it.
MAX_REJECTED_SHARE = 0.5


class LoadError(Exception):
    """A list could not be read or its content was refused."""


def parse_checked(spec: ListSpec, text: str, keep_rules: bool = False) -> Parsed:
    """Parse and apply the refusal rules (nothing usable, or mostly garbage).

    Here, beside the parser, so that both the loader and the downloader
    (``remote``, which checks a download before it replaces the disk copy) use
    it without importing each other.
    """
    parsed = parse_text(text, keep_rules=keep_rules)
    total = len(parsed) + len(parsed.rejected)
    if total and len(parsed.rejected) / total > MAX_REJECTED_SHARE:
        raise LoadError(f"{len(parsed.rejected)} of {total} lines are not rules; refusing the list "
                        f"(first: line {parsed.rejected[0][0]}: {parsed.rejected[0][2]})")
    if spec.kind == "url" and len(parsed) == 0:
        raise LoadError("the download parsed to zero entries; refusing it")
    return parsed

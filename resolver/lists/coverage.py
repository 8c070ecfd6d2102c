"""How much of the public record of vendor telemetry the curated lists block.

Why: precision is easy to keep with few rules; breadth is what a household
loses without noticing.  For every vendor this measures the reference names
(references/vendors.yaml) against the bundled lists with the matcher ``serve``
uses (``DomainIndex``: subtree semantics, regexes, allow lists) and sorts each
name into exactly one bucket:

  shared-infra  a triage entry says it is a CDN / third-party host: not counted
  default       blocked by a default-tier list
  strict        blocked only once the strict lists are on too
  essential, internal, dead   not blocked, triaged with that reason
  untriaged     neither blocked nor triaged: somebody has to decide

"vendor-owned" (the denominator of the percentages) is every name but the
shared-infra ones.  A triage entry whose host a rule blocks is stale.

A reference of kind ``services`` (references/vendors.yaml) lists the vendor's
services, not its telemetry (its own documentation says so): its names are
classified and must be blocked or triaged like any other, but the vendor's row
(the targets) counts only the names of its telemetry references.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .index import DomainIndex
from .lint import ESSENTIAL_FILE, Finding, essential_hosts
from .parse import parse_text
from .references import Names, Source, Vendor, read_source
from .triage import CATEGORIES, Entry, Matcher, essential_problems, read_triage_dir

TIERS = ("default", "strict")
BUCKETS = ("default", "strict", "essential", "internal", "dead", "untriaged")


@dataclass
class Lists:
    """The bundled lists in one index: which bits are default, strict and allow."""

    index: DomainIndex
    default: int = 0
    strict: int = 0
    allow: int = 0
    files: dict[int, Path] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)     # file stem -> number of rules

    def block_bits(self, tier: str) -> int:
        return self.default | (self.strict if tier == "strict" else 0)


def file_tier(path: Path) -> str:
    """``<vendor>-strict.txt`` is strict, ``essential.txt`` essential, every other file default."""
    if path.name == ESSENTIAL_FILE:
        return "essential"
    return "strict" if path.stem.endswith("-strict") else "default"


def load_lists(lists_dir: Path, allow: list[Path] = ()) -> Lists:
    """Every ``*.txt`` list of ``lists_dir`` (essential.txt blocks nothing) plus allow lists."""
    out = Lists(DomainIndex())
    bit = 1
    for path in sorted(lists_dir.glob("*.txt")):
        tier = file_tier(path)
        if tier == "essential":
            continue
        parsed = parse_text(path.read_text(encoding="utf-8", errors="replace"))
        out.index.add(bit, parsed)
        out.rules[path.stem] = len(parsed)
        out.files[bit] = path
        if tier == "strict":
            out.strict |= bit
        else:
            out.default |= bit
        bit <<= 1
    for path in allow:
        out.index.add(bit, parse_text(path.read_text(encoding="utf-8", errors="replace")), allow=True)
        out.files[bit] = path
        out.allow |= bit
        bit <<= 1
    return out


@dataclass
class Tally:
    """The buckets of one set of names."""

    label: str
    names: int = 0
    shared: int = 0
    counts: Counter = field(default_factory=Counter)
    regexes: int = 0
    rejected: int = 0
    beyond: int = 0             # extra sources: vendor-owned names no main reference lists
    beyond_blocked: int = 0     # ... and how many of them the tiers block anyway

    @property
    def owned(self) -> int:
        return self.names - self.shared

    def share(self, *buckets: str) -> float:
        """Percentage of the vendor-owned names in ``buckets`` (100 when there are none)."""
        if not self.owned:
            return 100.0
        return 100.0 * sum(self.counts[b] for b in buckets) / self.owned

    def as_dict(self) -> dict:
        return {
            "label": self.label, "names": self.names, "shared_infra": self.shared,
            "vendor_owned": self.owned,
            **{b: self.counts[b] for b in BUCKETS},
            "default_pct": round(self.share("default"), 1),
            "default_strict_pct": round(self.share("default", "strict"), 1),
            "regexes": self.regexes, "rejected_lines": self.rejected,
            "beyond_references": self.beyond, "beyond_references_blocked": self.beyond_blocked,
        }


@dataclass
class VendorReport:
    """Coverage of one vendor: all its references together, each one, and the extra sources."""

    vendor: str
    total: Tally                        # the telemetry references together: what the targets measure
    references: list[Tally]             # each reference, services ones included
    extra: list[Tally]
    missing: list[str]                  # untriaged names of every reference, sorted
    by_name: dict[str, str]             # name -> bucket (shared-infra included), every reference
    kinds: list[str] = field(default_factory=list)    # the kind of each of ``references``

    def as_dict(self) -> dict:
        refs = [{**t.as_dict(), "kind": k}
                for t, k in zip(self.references, self.kinds or ["telemetry"] * len(self.references), strict=True)]
        return {"vendor": self.vendor, **self.total.as_dict(), "references": refs,
                "extra": [t.as_dict() for t in self.extra], "missing": self.missing}


class Classifier:
    """Puts a name in its bucket, with the lists and the triage entries."""

    def __init__(self, lists: Lists, triage: list[Entry], tier: str = "strict") -> None:
        self.lists = lists
        self.tier = tier
        self.triage = Matcher(triage)

    def bucket(self, name: str) -> str:
        entry = self.triage.match(name)
        if entry is not None and entry.category == "shared-infra":
            return "shared-infra"
        idx, allow = self.lists.index, self.lists.allow
        if idx.match(name, self.lists.default, allow) is not None:
            return "default"
        if self.tier == "strict" and idx.match(name, self.lists.strict, allow) is not None:
            return "strict"
        if entry is not None:
            return entry.category
        return "untriaged"


def tally(label: str, names: set[str], buckets: dict[str, str], ref: Names | None = None) -> Tally:
    t = Tally(label, names=len(names))
    for n in names:
        b = buckets[n]
        if b == "shared-infra":
            t.shared += 1
        else:
            t.counts[b] += 1
    if ref is not None:
        t.regexes, t.rejected = len(ref.regexes), len(ref.rejected)
    return t


def vendor_report(vendor: Vendor, clf: Classifier) -> VendorReport:
    """Read the vendor's references and classify every name."""
    refs: list[tuple[Source, Names]] = [(s, read_source(s)) for s in vendor.references]
    extra: list[tuple[Source, Names]] = [(s, read_source(s)) for s in vendor.extra]
    everything = set().union(*(n.names for _, n in refs + extra)) if refs or extra else set()
    buckets = {n: clf.bucket(n) for n in everything}
    union = set().union(*(n.names for _, n in refs)) if refs else set()
    telemetry = [(s, n) for s, n in refs if s.kind == "telemetry"]
    measured = set().union(*(n.names for _, n in telemetry)) if telemetry else set()
    total = tally(vendor.name, measured, buckets)
    total.regexes = sum(len(n.regexes) for _, n in telemetry)
    total.rejected = sum(len(n.rejected) for _, n in telemetry)
    extras = []
    for s, n in extra:
        t = tally(s.name, n.names, buckets, n)
        beyond = [x for x in n.names - union if buckets[x] != "shared-infra"]
        t.beyond = len(beyond)
        t.beyond_blocked = sum(buckets[x] in ("default", "strict") for x in beyond)
        extras.append(t)
    return VendorReport(
        vendor.name, total,
        [tally(s.name, n.names, buckets, n) for s, n in refs],
        extras,
        sorted((n for n in union if buckets[n] == "untriaged"), key=lambda h: h.split(".")[::-1]),
        {n: buckets[n] for n in union},
        [s.kind for s, _ in refs],
    )


def stale_entries(entries: list[Entry], lists: Lists, reference_names: set[str]) -> list[Finding]:
    """Triage entries that a default or strict rule makes pointless.

    A host entry is stale when the host itself is blocked.  A regex entry is
    stale when every reference name it matches is blocked (at least one).
    """
    idx, bits, allow = lists.index, lists.default | lists.strict, lists.allow
    out = []
    for e in entries:
        if e.regex:
            rx = re.compile(e.rule)
            hits = [n for n in reference_names if rx.search(n)]
            if hits and all(idx.match(n, bits, allow) is not None for n in hits):
                out.append(Finding(e.path, e.line, f"/{e.rule}/: stale triage: every reference name "
                                                   f"it matches ({len(hits)}) is blocked by a rule"))
            continue
        m = idx.match(e.rule, bits, allow)
        if m is not None:
            rule = f"/{idx.which_regex(m.bit, e.rule, m.rule)}/" if m.regex else m.rule
            out.append(Finding(e.path, e.line, f"{e.rule}: stale triage: blocked by {rule} "
                                               f"({lists.files[m.bit].name}); remove the entry"))
    return out


@dataclass
class Report:
    """Everything ``hushdns lists coverage`` prints."""

    tier: str
    vendors: list[VendorReport]
    triage_problems: list[Finding]      # syntax, stale, unbacked essential
    rules: dict[str, int]
    essential_blocked: dict[str, list[str]] = field(default_factory=dict)   # tier -> hosts

    def as_dict(self) -> dict:
        return {"tier": self.tier, "vendors": [v.as_dict() for v in self.vendors],
                "triage_problems": [str(f) for f in self.triage_problems], "rules": self.rules,
                "essential_blocked": self.essential_blocked}


def essential_blocked(lists: Lists, essential: dict[str, tuple[str, int, str]]) -> dict[str, list[str]]:
    """Hosts of essential.txt that the default tier blocks (must be none) and that strict adds."""
    idx, allow = lists.index, lists.allow
    out: dict[str, list[str]] = {"default": [], "strict": []}
    for host in sorted(essential, key=lambda h: h.split(".")[::-1]):
        if idx.match(host, lists.default, allow) is not None:
            out["default"].append(host)
        elif idx.match(host, lists.strict, allow) is not None:
            out["strict"].append(host)
    return out


def measure(vendors: list[Vendor], lists_dir: Path, triage_dir: Path, tier: str = "strict",
            allow: list[Path] = ()) -> Report:
    """Coverage of every vendor plus the triage checks (syntax, stale, essential backing)."""
    lists = load_lists(lists_dir, list(allow))
    by_vendor, problems = read_triage_dir(triage_dir)
    entries = [e for es in by_vendor.values() for e in es]
    clf = Classifier(lists, entries, tier)
    reports = [vendor_report(v, clf) for v in vendors]
    names = set().union(*(r.by_name for r in reports)) if reports else set()
    problems = problems + stale_entries(entries, lists, names)
    essential = essential_hosts([lists_dir / ESSENTIAL_FILE])
    problems += essential_problems(entries, essential)
    return Report(tier, reports, sorted(problems), lists.rules, essential_blocked(lists, essential))


# --- output ----------------------------------------------------------------------------------


def _pct(n: int, t: Tally) -> str:
    # One decimal, as in --json: a whole-number percentage would show 66 of 78 (84.6 %) as
    # "85%", a target it misses.
    return f"{n} ({100.0 * n / t.owned:.1f}%)" if t.owned else str(n)


def format_text(report: Report) -> str:
    """One block per vendor: the union of its references, then each reference and extra source."""
    rows = [("vendor / reference", "names", "owned", "default", "+strict", "essential",
             "internal", "dead", "shared", "untriaged")]
    for v in report.vendors:
        kinds = ["", *(v.kinds or ["telemetry"] * len(v.references))]
        for i, t in enumerate([v.total, *v.references, *(x for x in v.extra)]):
            label = t.label if i == 0 else (
                ("  services: " if kinds[i] == "services" else "  ") + t.label
                if i <= len(v.references) else "  extra: " + t.label)
            c = t.counts
            rows.append((label, str(t.names), str(t.owned), _pct(c["default"], t),
                         _pct(c["strict"], t) if report.tier == "strict" else "-",
                         str(c["essential"]), str(c["internal"]), str(c["dead"]), str(t.shared),
                         str(c["untriaged"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(r)).rstrip() for r in rows]
    total = Tally("all", counts=Counter())
    for v in report.vendors:
        total.names += v.total.names
        total.shared += v.total.shared
        total.counts.update(v.total.counts)
    lines.append("")
    for v in report.vendors:
        for x in v.extra:
            lines.append(f"{v.vendor}: {x.label} names {x.beyond} vendor-owned hosts no main "
                         f"reference lists; the tiers block {x.beyond_blocked} of them")
    eb = report.essential_blocked
    if eb:
        lines.append(f"essential hosts blocked: default tier {len(eb['default'])}"
                     + (f" ({', '.join(eb['default'])})" if eb["default"] else "")
                     + f", strict tier {len(eb['strict'])} (each named in its list's STOPS WORKING paragraph)")
    lines.append(f"all vendors ({report.tier} tier on): {total.owned} vendor-owned names, default "
                 f"{total.share('default'):.1f}%, default+strict {total.share('default', 'strict'):.1f}%, "
                 f"untriaged {sum(len(v.missing) for v in report.vendors)}"
                 + (" (services references included)" if any("services" in v.kinds for v in report.vendors)
                    else ""))
    return "\n".join(lines)


def strict_breaks(lists_dir: Path, vendor: str, limit: int = 140) -> str:
    """The first sentence of a strict list's ``STOPS WORKING with this list on`` paragraph."""
    path = lists_dir / f"{vendor}-strict.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    para = stops_working(text)
    if not para:
        return ""
    first = re.split(r"(?<=[a-z)])\.\s", para + " ", maxsplit=1)[0].rstrip(". ")
    return first if len(first) <= limit else first[:limit - 3].rsplit(" ", 1)[0] + "..."


def stops_working(text: str) -> str:
    """The header paragraph that starts ``# STOPS WORKING with this list on``, joined into one line."""
    out: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line.startswith("#") or line.startswith("# =="):
            if out:
                break
            if line:
                break
            continue
        body = line.lstrip("#").strip()
        if out:
            if not body:
                break
            out.append(body)
        elif body.startswith("STOPS WORKING with this list on"):
            out.append(body[len("STOPS WORKING with this list on"):].lstrip(" -:"))
    return " ".join(out)


def format_markdown(report: Report, lists_dir: Path) -> str:
    """The README's coverage table: one row per reference, the vendor's rules and strict breakage once."""
    head = ("| vendor | rules (default / strict) | reference | vendor-owned names | default | "
            "default + strict | untriaged | strict breaks |")
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---|"]
    for v in report.vendors:
        rules = f"{report.rules.get(v.vendor, 0)} / {report.rules.get(v.vendor + '-strict', 0)}"
        breaks = strict_breaks(lists_dir, v.vendor).replace("|", "\\|")
        kinds = ["", *(v.kinds or ["telemetry"] * len(v.references))]
        for i, t in enumerate([v.total, *v.references, *v.extra]):
            label = ("**all**" if i == 0 else
                     (f"`{t.label}` (services, not in all)" if kinds[i] == "services" else f"`{t.label}`")
                     if i <= len(v.references) else f"`{t.label}` (extra)")
            first = i == 0
            lines.append(
                f"| {'**' + v.vendor + '**' if first else ''} | {rules if first else ''} | {label} | "
                f"{t.owned} | {t.share('default'):.1f}% | {t.share('default', 'strict'):.1f}% | "
                f"{t.counts['untriaged']} | {breaks if first else ''} |")
    return "\n".join(lines)


__all__ = ["CATEGORIES", "TIERS", "Classifier", "Lists", "Report", "Tally", "VendorReport",
           "format_markdown", "format_text", "load_lists", "measure", "stale_entries"]

"""Reading the public reference lists that the curated lists are measured against.

Why a module of its own: the references come in every format people publish
(plain domains, hosts files, adblock ``||x^``, Pi-hole regex files) and some
files hold several vendors in ``# Vendor`` sections (Perflyst's SmartTV.txt).
``references/vendors.yaml`` says which file, or which section of a file,
feeds which vendor; this module turns that into sets of names.  Names are
read with the same parser ``serve`` uses, so a reference line means here what
it would mean as a subscribed list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .parse import normalize_domain, parse_text

VENDORS_FILE = "vendors.yaml"
FORMATS = ("auto", "pihole-regex")
# What a reference lists.  ``telemetry``: the vendor's telemetry, the names the coverage targets
# are measured on.  ``services``: a list that its own authors say blocks the vendor's services
# (WindowsSpyBlocker's extra.txt: Skype, Bing, Outlook, Office ...), not telemetry: every name
# must still be blocked or triaged, but it stays out of the target's denominator.
KINDS = ("telemetry", "services")


class ReferenceFileError(Exception):
    """A reference file or the vendor mapping cannot be read."""


@dataclass(frozen=True)
class Source:
    """One reference: a file, optionally only one ``# section`` of it."""

    path: Path
    section: str | None = None
    fmt: str = "auto"
    label: str = ""
    kind: str = "telemetry"

    @property
    def name(self) -> str:
        base = self.label or self.path.name
        return f"{base}#{self.section}" if self.section else base


@dataclass
class Vendor:
    """The references of one vendor, and the extra sources measured beside them."""

    name: str
    references: list[Source] = field(default_factory=list)
    extra: list[Source] = field(default_factory=list)


@dataclass
class Names:
    """What one reference yielded: host names, regexes, and lines that are neither."""

    names: set[str] = field(default_factory=set)
    regexes: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def _source(base: Path, item: object, where: str) -> Source:
    if isinstance(item, str):
        return Source(base / item, label=item)
    if isinstance(item, dict) and isinstance(item.get("file"), str):
        unknown = set(item) - {"file", "section", "format", "kind"}
        if unknown:
            raise ReferenceFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        fmt = item.get("format", "auto")
        if fmt not in FORMATS:
            raise ReferenceFileError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        kind = item.get("kind", "telemetry")
        if kind not in KINDS:
            raise ReferenceFileError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        section = item.get("section")
        if section is not None and not isinstance(section, str):
            raise ReferenceFileError(f"{where}: section must be a string")
        return Source(base / item["file"], section, fmt, item["file"], kind)
    raise ReferenceFileError(f"{where}: expected a path or {{file: PATH, section: NAME, kind: KIND}}, "
                             f"got {item!r}")


def load_vendors(path: Path) -> dict[str, Vendor]:
    """vendor -> its references, from ``vendors.yaml`` (paths relative to its folder)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReferenceFileError(f"cannot read {path}: {exc}") from None
    vendors = data.get("vendors") if isinstance(data, dict) else None
    if not isinstance(vendors, dict):
        raise ReferenceFileError(f"{path}: expected a top-level 'vendors:' mapping")
    out: dict[str, Vendor] = {}
    for name, spec in vendors.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("references", []), list) \
                or not isinstance(spec.get("extra", []), list):
            raise ReferenceFileError(f"{path}: vendor {name!r}: expected references: [...] (and extra: [...])")
        v = Vendor(str(name))
        for kind in ("references", "extra"):
            for i, item in enumerate(spec.get(kind) or []):
                getattr(v, kind).append(_source(path.parent, item, f"{path}: {name}.{kind}[{i}]"))
        out[v.name] = v
    return out


def section_text(text: str, section: str) -> str:
    """The lines under the comment ``# <section>``, up to the next heading.

    A heading is a ``# ...`` comment line that follows a blank line (Perflyst
    puts a blank line before every vendor heading, and comments inside a
    section directly below a rule or heading).  Lines outside are blanked, not
    removed, so line numbers stay those of the file.
    """
    lines = text.split("\n")
    start = None
    for i, line in enumerate(lines):
        if line.strip() == f"# {section}":
            start = i
            break
    if start is None:
        raise ReferenceFileError(f"no section '# {section}'")
    end = len(lines)
    for j in range(start + 1, len(lines)):
        if lines[j].startswith("# ") and not lines[j - 1].strip():
            end = j
            break
    return "\n".join(line if start < k < end else "" for k, line in enumerate(lines))


def parse_pihole_regex(text: str) -> Names:
    """A Pi-hole regex file: one regular expression per line, ``#`` comments."""
    out = Names()
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            re.compile(line)
        except re.error as exc:
            out.rejected.append((lineno, line, f"bad regex: {exc}"))
            continue
        out.regexes.append(line)
    return out


def parse_reference(text: str, fmt: str = "auto") -> Names:
    """Names of a reference in any list format hushdns reads (same parser as ``serve``)."""
    if fmt == "pihole-regex":
        return parse_pihole_regex(text)
    parsed = parse_text(text)
    names = set()
    for d in parsed.domains:
        # The fast path keeps already-normal names; normalise the rest the same way.
        n = normalize_domain(d)
        if n is not None:
            names.add(n)
    return Names(names, list(parsed.regexes), list(parsed.rejected))


def read_source(src: Source) -> Names:
    """Read one reference (file or section)."""
    try:
        text = src.path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReferenceFileError(f"cannot read {src.path}: {exc.strerror or exc}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if src.section is not None:
        try:
            text = section_text(text, src.section)
        except ReferenceFileError as exc:
            raise ReferenceFileError(f"{src.path}: {exc}") from None
    return parse_reference(text, src.fmt)


def default_references_dir(lists_dir: Path) -> Path:
    """``references/`` beside ``blocklists/`` in a checkout, else in the working directory."""
    beside = lists_dir.parent / "references"
    if (beside / VENDORS_FILE).is_file():
        return beside
    return Path.cwd() / "references"

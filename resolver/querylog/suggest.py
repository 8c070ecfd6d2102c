"""``hushdns lists suggest``: names seen in traffic, not blocked, of a vendor family a list knows.

Why: a curated list is written from public evidence; real traffic shows the
endpoints it misses.  A name is a candidate when its registrable domain
(``families.family``) is the registrable domain of a rule of a configured block
list, a bundled curated list, or a reference list (``references/*.txt`` when
present), and no list blocks or allows it now.  Hosts in the bundled
``essential.txt`` are never suggested.  Each candidate comes out as a list line
with an evidence stub, to review before it goes into a list file in git.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import bundled
from ..lists.loader import Blocklists
from ..lists.parse import parse_text
from . import reader
from .families import family, vendor_of_list

ESSENTIAL = "essential.txt"


@dataclass
class Known:
    """What makes a family known: the list and one of its rules there."""

    list: str
    rule: str


@dataclass
class Candidate:
    name: str
    family: str
    known: Known
    first: float
    count: int = 0
    devices: set[str] = field(default_factory=set)


def _files(directory: Path, deep: bool = False) -> list[Path]:
    """The list files of a directory (``deep``: and of its subdirectories, as references/ has)."""
    if not directory.is_dir():
        return []
    found = directory.rglob("*.txt") if deep else directory.iterdir()
    return sorted(p for p in found if p.suffix == ".txt" and p.name != ESSENTIAL and p.is_file())


def known_families(lists: Blocklists, references: list[Path]) -> dict[str, Known]:
    """Registrable domain -> the first list (configured, then bundled, then references) with a rule in it."""
    out: dict[str, Known] = {}
    for name, info in lists.lists.items():
        if info.spec.allow:
            continue
        for domain in sorted(lists.index.domains_of(info.bit)):
            out.setdefault(family(domain), Known(name, domain))
    for path in _files(bundled.lists_dir()):
        for domain in parse_text(path.read_text(encoding="utf-8", errors="replace")).domains:
            out.setdefault(family(domain), Known(vendor_of_list(path.stem), domain))
    for directory in references:
        for label, names in _reference_names(directory):
            for domain in sorted(names):
                out.setdefault(family(domain), Known(label, domain))
    return out


def _reference_names(directory: Path) -> list[tuple[str, set[str]]]:
    """(label, names) per reference: by ``vendors.yaml`` when the directory has one (its
    telemetry references only: a list of a vendor's *services* says nothing about telemetry),
    else every ``*.txt`` below it."""
    from ..lists import references as refs

    if (directory / refs.VENDORS_FILE).is_file():
        out = []
        try:
            for vendor in refs.load_vendors(directory / refs.VENDORS_FILE).values():
                for src in vendor.references:
                    if src.kind == "telemetry":
                        out.append((f"reference {vendor.name} ({src.name})", refs.read_source(src).names))
        except refs.ReferenceFileError:
            return []
        return out
    return [(f"reference {p.relative_to(directory).with_suffix('').as_posix()}",
             set(parse_text(p.read_text(encoding="utf-8", errors="replace")).domains))
            for p in _files(directory, deep=True)]


def essential_hosts() -> set[str]:
    path = bundled.lists_dir() / ESSENTIAL
    if not path.is_file():
        return set()
    return set(parse_text(path.read_text(encoding="utf-8")).domains)


def _covered(name: str, hosts: set[str]) -> bool:
    labels = name.split(".")
    return any(".".join(labels[i:]) in hosts for i in range(len(labels)))


def candidates(db: sqlite3.Connection, lists: Blocklists, references: list[Path],
               device: str | None = None) -> list[Candidate]:
    """The candidates from the inventory, grouped by name (devices merged), by family then name."""
    known = known_families(lists, references)
    essential = essential_hosts()
    every = 0
    for info in lists.lists.values():
        every |= info.bit
    allow_bits = sum(i.bit for i in lists.lists.values() if i.spec.allow)
    out: dict[str, Candidate] = {}
    for dev, ep in reader.endpoints(db, device):
        if ep.blocked:
            continue
        fam = family(ep.name)
        k = known.get(fam)
        if k is None or _covered(ep.name, essential):
            continue
        if lists.index.explain(ep.name, every & ~allow_bits, allow_bits) is not None:
            continue   # blocked by a list now, or explicitly allowed
        c = out.get(ep.name)
        if c is None:
            c = out[ep.name] = Candidate(ep.name, fam, k, ep.first)
        c.first = min(c.first, ep.first)
        c.count += ep.count
        c.devices.add(dev)
    return sorted(out.values(), key=lambda c: (c.known.list, c.family, c.name))


def render(cands: list[Candidate]) -> str:
    """Candidate list lines, a comment block per vendor family, ready to paste into a list file."""
    if not cands:
        return "# hushdns lists suggest: no candidates (every name seen is blocked, allowed, or of a family no list knows)\n"
    lines = [f"# hushdns lists suggest: {len(cands)} name(s) seen and not blocked, of vendor families "
             "the lists know.", "# Review each before adding it: blocking may break the device."]
    current = None
    for c in cands:
        if (c.known.list, c.family) != current:
            current = (c.known.list, c.family)
            lines += ["", f"# == {c.known.list}: family {c.family} (known from rule {c.known.rule}) =="]
        day = time.strftime("%Y-%m-%d", time.localtime(c.first))
        lines.append(f"{c.name}  # seen in traffic: first {day}, {c.count} queries, devices: "
                     f"{', '.join(sorted(c.devices))} (hushdns lists suggest; add evidence)")
    return "\n".join(lines) + "\n"

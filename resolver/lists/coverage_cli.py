"""``hushdns lists coverage``: arguments to a report on stdout.

Exit status: 0 when the report could be made (coverage gaps are data, not
errors), 1 when a triage file is broken or stale, 2 when a reference, the
vendor mapping or a list cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import bundled
from . import coverage
from .references import (
    VENDORS_FILE,
    ReferenceFileError,
    Source,
    Vendor,
    default_references_dir,
    load_vendors,
)
from .triage import TRIAGE_DIR


def _vendors(args: argparse.Namespace, lists_dir: Path) -> list[Vendor]:
    if args.refs:
        chosen: dict[str, Vendor] = {}
        for arg in args.refs:
            vendor, sep, path = arg.partition("=")
            if not sep or not vendor or not path:
                raise ReferenceFileError(f"REFERENCE is VENDOR=PATH, got {arg!r}")
            chosen.setdefault(vendor, Vendor(vendor)).references.append(Source(Path(path), label=path))
        vendors = list(chosen.values())
    else:
        refdir = Path(args.references) if args.references else default_references_dir(lists_dir)
        if not (refdir / VENDORS_FILE).is_file():
            raise ReferenceFileError(f"no {VENDORS_FILE} in {refdir}: run from a hushdns checkout, pass "
                                 "--references DIR, or name files as VENDOR=PATH")
        vendors = list(load_vendors(refdir / VENDORS_FILE).values())
    if args.vendor:
        known = {v.name for v in vendors}
        unknown = [v for v in args.vendor if v not in known]
        if unknown:
            raise ReferenceFileError(f"unknown vendor(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        vendors = [v for v in vendors if v.name in args.vendor]
    return vendors


def run(args: argparse.Namespace) -> int:
    lists_dir = Path(args.lists) if args.lists else bundled.lists_dir()
    triage_dir = Path(args.triage) if args.triage else lists_dir / TRIAGE_DIR
    try:
        vendors = _vendors(args, lists_dir)
        report = coverage.measure(vendors, lists_dir, triage_dir, args.tier,
                                  [Path(a) for a in args.allow])
    except (ReferenceFileError, OSError) as exc:
        print(f"hushdns lists coverage: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif args.missing:
        for v in report.vendors:
            for name in v.missing:
                print(f"{v.vendor}\t{name}")
    elif args.markdown:
        print(coverage.format_markdown(report, lists_dir))
    else:
        print(coverage.format_text(report))
    for f in report.triage_problems:
        print(f, file=sys.stderr)
    if report.triage_problems:
        print(f"{len(report.triage_problems)} triage problem(s)", file=sys.stderr)
        return 1
    return 0

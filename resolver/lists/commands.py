"""``hushdns lists lint | show | stats``: the list tools people run in their list repository and CI."""

from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path

from .. import bundled
from ..config import Config, ConfigError, ListSpec, load_config
from . import lint as linter
from . import remote
from .loader import LoadError, read_local
from .parse import Parsed, parse_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``lists`` command group on the main parser."""
    p = sub.add_parser("lists", help="lint, show and compare block lists")
    lsub = p.add_subparsers(dest="lists_command", required=True)

    lt = lsub.add_parser("lint", help="check list files (default: the bundled curated lists)")
    lt.add_argument("paths", nargs="*", metavar="PATH", help="list files or directories of *.txt")
    lt.add_argument("--curated", action="store_true",
                    help="hold every file to the curated format (header, comments, order), "
                         "not only those in the bundled blocklists directory")
    lt.set_defaults(func=cmd_lint)

    sh = lsub.add_parser("show", help="the entries of one configured or bundled list, with file:line")
    sh.add_argument("name")
    sh.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    sh.set_defaults(func=cmd_show)

    st = lsub.add_parser("stats", help="entries, rejected lines and overlap of the configured lists")
    st.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    st.set_defaults(func=cmd_stats)

    cv = lsub.add_parser("coverage", help="how many reference names of each vendor the tiers block "
                                          "or triage")
    cv.add_argument("refs", nargs="*", metavar="REFERENCE",
                    help="VENDOR=PATH: measure these files instead of references/vendors.yaml "
                         "(repeatable; only the vendors named are reported)")
    cv.add_argument("--tier", choices=("default", "strict"), default="strict",
                    help="lists that count as blocking: default only, or default+strict (default)")
    cv.add_argument("--vendor", action="append", metavar="V", help="only this vendor (repeatable)")
    cv.add_argument("--missing", action="store_true", help="print the untriaged names, one a line")
    out = cv.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable report")
    out.add_argument("--markdown", action="store_true", help="the README's coverage table")
    cv.add_argument("--update", metavar="FILE", help="with --markdown: replace the coverage table "
                                                     "block of FILE (README.md) instead of printing")
    cv.add_argument("--references", metavar="DIR", help="folder with vendors.yaml "
                                                        "(default: references/ of the checkout)")
    cv.add_argument("--lists", metavar="DIR", help="curated lists (default: the bundled ones)")
    cv.add_argument("--triage", metavar="DIR", help="triage files (default: LISTS/triage)")
    cv.add_argument("--allow", action="append", metavar="PATH", default=[],
                    help="an allow list applied as serve applies it (repeatable)")
    cv.set_defaults(func=cmd_coverage)

    from ..querylog.commands import add_suggest_parser

    add_suggest_parser(lsub)   # lists suggest: candidate rules from the query log


def cmd_coverage(args: argparse.Namespace) -> int:
    from .coverage_cli import run

    return run(args)


def cmd_lint(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or [bundled.lists_dir()]
    files, findings = linter.lint(paths, curated=args.curated)
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"{len(files)} file(s) OK", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"hushdns: configuration error:\n{exc}", file=sys.stderr)
        return None


def read_parts(spec: ListSpec, state_dir: str) -> list[tuple[str, Parsed]]:
    """(file label, parsed with line numbers) per file of a list.

    A URL list is read from its disk copy (what the server serves); only when
    there is none yet is it downloaded.
    """
    if spec.kind == "dir":
        files = sorted(p for p in Path(spec.source).iterdir()
                       if p.is_file() and not p.name.startswith("."))
        return [(str(p), parse_text(p.read_text(encoding="utf-8", errors="replace"),
                                    keep_rules=True)) for p in files]
    if spec.kind == "url":
        try:
            text, label = remote.disk_text(spec, state_dir), str(remote.copy_paths(spec.source, state_dir)[0])
        except LoadError:
            text, label = remote.fetch_text(spec, state_dir), spec.source
        return [(label, parse_text(text, keep_rules=True))]
    return [(spec.source, parse_text(read_local(spec), keep_rules=True))]


def _bundled_spec(name: str) -> ListSpec | None:
    """A curated list shipped with hushdns, by name (``xiaomi-strict`` or ``xiaomi-strict.txt``),
    so one the config does not use yet can be read before it is turned on."""
    path = bundled.lists_dir() / (name if name.endswith(".txt") else f"{name}.txt")
    if "/" in name or not path.is_file():
        return None
    return ListSpec(name, str(path), "file")


def cmd_show(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    specs = {s.name: s for s in config.all_lists()}
    spec = specs.get(args.name) or _bundled_spec(args.name)
    if spec is None:
        shipped = ", ".join(sorted(p.stem for p in bundled.lists_dir().glob("*.txt")))
        print(f"no list named {args.name!r}; configured: {', '.join(specs) or '(none)'}; "
              f"bundled: {shipped}", file=sys.stderr)
        return 2
    try:
        parts = read_parts(spec, config.state_dir)
    except LoadError as exc:
        print(f"list {spec.name}: {exc}", file=sys.stderr)
        return 1
    for label, parsed in parts:
        for r in parsed.rules or ():
            rule = f"/{r.value}/" if r.regex else r.value
            comment = r.text[len(rule):].partition("#")[2] if r.regex else r.text.partition("#")[2]
            print(f"{label}:{r.line}: {rule}" + (f"  # {comment.strip()}" if comment.strip() else ""))
    for label, parsed in parts:
        for line, text, reason in parsed.rejected:
            print(f"{label}:{line}: rejected ({reason}): {text}", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    domains: dict[str, set[str]] = {}
    failed = 0
    width = max((len(s.name) for s in config.all_lists()), default=4)
    print(f"{'list':<{width}}  kind   entries  rejected  source")
    for spec in config.all_lists():
        kind = "allow" if spec.allow else "block"
        try:
            parts = read_parts(spec, config.state_dir)
        except LoadError as exc:
            print(f"{spec.name:<{width}}  {kind}  FAILED: {exc}")
            failed += 1
            continue
        names = {d for _, p in parts for d in p.domains}
        regexes = sum(len(p.regexes) for _, p in parts)
        rejected = sum(len(p.rejected) for _, p in parts)
        domains[spec.name] = names
        extra = f" (+{regexes} regex)" if regexes else ""
        print(f"{spec.name:<{width}}  {kind}  {len(names):>7}  {rejected:>8}  {spec.source}{extra}")
    pairs = [(a, b, len(domains[a] & domains[b])) for a, b in combinations(domains, 2)]
    shared = [p for p in pairs if p[2]]
    print()
    if not shared:
        print("overlap: no domain is on more than one list")
    else:
        print("overlap (domains listed in both):")
        for a, b, n in sorted(shared, key=lambda p: -p[2]):
            print(f"  {a} & {b}: {n}")
    return 1 if failed else 0

"""``hushdns log | devices | device NAME`` and ``hushdns lists suggest``: reading the query log."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config, parse_duration
from . import reader

SYSTEM_LOG = Path("/var/lib/hushdns/querylog.sqlite")   # StateDirectory=hushdns of the unit
FIELDS = ("time", "device", "client", "name", "type", "result", "list", "rule", "rcode",
          "upstream", "latency_ms")


def _duration(text: str) -> float:
    v = parse_duration(text)
    if v is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 1h, 1d, 7d)")
    return v


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``log``, ``devices`` and ``device`` on the main parser."""
    lg = sub.add_parser("log", help="show the query log (who asked what, and what happened)")
    lg.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    lg.add_argument("--device", help="only this device (its name), or this client address")
    verdict = lg.add_mutually_exclusive_group()
    verdict.add_argument("--blocked", action="store_true", help="only blocked queries")
    verdict.add_argument("--allowed", action="store_true", help="only queries that were not blocked")
    lg.add_argument("--since", type=_duration, help="only the last DURATION, e.g. 1h, 1d")
    lg.add_argument("--name", help="only names matching a glob, e.g. '*.xiaomi.com'")
    lg.add_argument("--limit", type=int, default=1000,
                    help="the newest N rows (default 1000; 0: all)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new rows")
    fmt = lg.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    lg.set_defaults(func=cmd_log)

    ds = sub.add_parser("devices", help="every device seen: addresses, last query, blocked share, vendors")
    ds.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    ds.add_argument("--json", action="store_true", help="one JSON object per device")
    ds.set_defaults(func=cmd_devices)

    d = sub.add_parser("device", help="the names one device asked for (its endpoint inventory)")
    d.add_argument("name", help="the device (a clients: name or an address)")
    d.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    d.add_argument("--new-since", type=_duration, metavar="DURATION",
                   help="only names first seen in the last DURATION, e.g. 7d")
    d.add_argument("--json", action="store_true", help="one JSON object per name")
    d.set_defaults(func=cmd_device)


def add_suggest_parser(lsub: argparse._SubParsersAction) -> None:
    """Register ``lists suggest`` on the ``lists`` command group."""
    s = lsub.add_parser("suggest", help="candidate rules from traffic: unblocked names of known vendor families")
    s.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    s.add_argument("--device", help="only names this device asked for")
    s.add_argument("--references", action="append", metavar="DIR",
                   help="a directory of reference lists (its vendors.yaml, else every *.txt) "
                        "whose families count too (default: the checkout's references/)")
    s.set_defaults(func=cmd_suggest)


def _open(args: argparse.Namespace) -> tuple[Config, Any] | None:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hushdns: configuration error:\n{exc}", file=sys.stderr)
        return None
    if not config.query_log.on:
        print(f"hushdns: the query log is off in {config.path} (query_log)", file=sys.stderr)
        return None
    path = Path(config.query_log.path)
    if not path.exists() and SYSTEM_LOG.exists():
        # A shell has no $STATE_DIRECTORY: the systemd unit's state directory is the likely one.
        path = SYSTEM_LOG
    try:
        return config, reader.connect(str(path))
    except reader.NoLog as exc:
        print(f"hushdns: {exc}", file=sys.stderr)
        return None


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class _Printer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.csv = csv.writer(sys.stdout) if args.csv else None
        if self.csv is not None:
            self.csv.writerow(FIELDS)

    def __call__(self, row: dict[str, Any]) -> None:
        if self.args.json:
            print(json.dumps({k: row[k] for k in FIELDS}, separators=(",", ":")))
        elif self.csv is not None:
            self.csv.writerow(["" if row[k] is None else row[k] for k in FIELDS])
        else:
            why = f" {row['list']} ({row['rule']})" if row["list"] else ""
            print(f"{_local(row['timestamp'])}  {row['device']:<16} {row['client'] or '-':<15} "
                  f"{row['type']:<5} {row['name']}  {row['result']}{why}")


def cmd_log(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 1
    _, db = opened
    blocked = True if args.blocked else False if args.allowed else None
    f = reader.Filter(args.device, blocked, time.time() - args.since if args.since else None, args.name)
    out = _Printer(args)
    got = reader.rows(db, f, limit=args.limit or None)
    for row in got:
        out(row)
    if args.follow:
        sys.stdout.flush()
        try:
            for row in reader.follow(db, f, got[-1]["id"] if got else reader.last_id(db)):
                out(row)
                sys.stdout.flush()
        except KeyboardInterrupt:
            return 0
    return 0


def _ago(t: float) -> str:
    s = max(0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def cmd_devices(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 1
    config, db = opened
    devs = reader.devices(db)
    macs = _macs(config)
    if args.json:
        for d in devs:
            print(json.dumps({"device": d.name, "addresses": d.addresses,
                              "macs": macs.get(d.name, []), "last_query": d.last,
                              "queries": d.queries, "blocked": d.blocked,
                              "blocked_share": round(d.blocked_share, 4),
                              "top_vendors": dict(d.top_vendors())}, separators=(",", ":")))
        return 0
    if not devs:
        print("no devices in the query log yet")
        return 0
    print(f"{'DEVICE':<20} {'ADDRESSES':<32} {'MAC':<17} {'LAST QUERY':<14} {'QUERIES':>8} "
          f"{'BLOCKED':>8}  TOP VENDORS")
    for d in devs:
        addrs = ", ".join(d.addresses[:2]) + (f" +{len(d.addresses) - 2}" if len(d.addresses) > 2 else "")
        vendors = ", ".join(f"{v} {n}" for v, n in d.top_vendors())
        mac = ", ".join(macs.get(d.name, [])) or "-"
        print(f"{d.name:<20} {addrs or '-':<32} {mac:<17} {_ago(d.last):<14} {d.queries:>8} "
              f"{d.blocked_share:>7.1%}  {vendors}")
    return 0


def _macs(config: Config) -> dict[str, list[str]]:
    """Device name -> its MACs, from the ``devices:`` sources as they are now (the neighbour
    table, leases: resolver/devices/); empty without a ``devices:`` section."""
    if not config.devices.enabled:
        return {}
    from ..devices.registry import devices_now

    try:
        return {name: list(d.macs) for name, d in devices_now(config).devices.items()}
    except Exception as exc:   # names are a bonus here; the log is the point
        print(f"hushdns: device sources not read: {exc}", file=sys.stderr)
        return {}


def cmd_device(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 1
    _, db = opened
    known = reader.device_names(db)
    if args.name not in known:
        print(f"hushdns: no device {args.name!r} in the query log (devices: "
              f"{', '.join(known) or 'none yet'})", file=sys.stderr)
        return 1
    since = time.time() - args.new_since if args.new_since else None
    eps = [ep for _, ep in reader.endpoints(db, args.name, since)]
    eps.sort(key=lambda e: -e.first if since else -e.count)
    if args.json:
        for e in eps:
            print(json.dumps({"name": e.name, "first_seen": e.first, "last_seen": e.last,
                              "count": e.count, "blocked": e.blocked, "verdict": e.verdict,
                              "list": e.list, "vendor": e.vendor}, separators=(",", ":")))
        return 0
    what = f"first seen since {_local(since)}" if since else "asked for"
    print(f"{args.name}: {len(eps)} name(s) {what}")
    print(f"{'NAME':<44} {'FIRST SEEN':<20} {'LAST SEEN':<20} {'COUNT':>7}  VERDICT")
    for e in eps:
        verdict = f"blocked ({e.list})" if e.verdict == "blocked" and e.list else e.verdict
        print(f"{e.name:<44} {_local(e.first):<20} {_local(e.last):<20} {e.count:>7}  {verdict}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from .. import bundled
    from ..lists import loader
    from . import suggest

    opened = _open(args)
    if opened is None:
        return 1
    config, db = opened
    from ..lists.references import default_references_dir

    refs = [Path(r) for r in args.references] if args.references else \
        [p for p in (default_references_dir(bundled.lists_dir()),) if p.is_dir()]
    lists = loader.load_all(config)
    sys.stdout.write(suggest.render(suggest.candidates(db, lists, refs, args.device)))
    return 0

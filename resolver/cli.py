"""Command line: ``hushdns serve | check | query | lists``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__, sdnotify
from .config import Config, ConfigError, ListSpec, load_config
from .lifecycle import defer_sighup, handle_signals, tune_gc
from .listen_errors import ListenError
from .lists import loader, local_file
from .lists.parse import Parsed

log = logging.getLogger("hushdns")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options that replace config keys (used by tests and quick trials)."""
    out: dict[str, Any] = {}
    if getattr(args, "listen", None):
        out["listen"] = args.listen
    if getattr(args, "upstream", None):
        out["upstreams"] = args.upstream
    return out


def _load(args: argparse.Namespace) -> Config:
    overrides = _overrides(args)
    metrics = getattr(args, "metrics", None)
    cfg = load_config(args.config, text=_strict_text(args), overrides=overrides or None)
    if metrics is not None:
        from dataclasses import replace

        from .config import parse_endpoint

        listen = None if metrics in ("off", "none", "") else parse_endpoint(metrics, 9153)
        cfg = replace(cfg, metrics=replace(cfg.metrics, listen=listen))
    return cfg


def _strict_text(args: argparse.Namespace) -> str | None:
    """``--strict``: the embedded default config with the bundled strict lists added."""
    if not getattr(args, "strict", False):
        return None
    if args.config:
        raise ConfigError(["--strict turns on the bundled strict lists of the embedded default "
                           "config; with -c, name the strict lists in your config instead "
                           "(docs/lists.md, \"Turning the strict tier on\")"])
    from . import bundled

    return bundled.strict_config_text()


STRICT_HELP = ("the embedded default config plus every bundled strict list (blocks more; "
               "breaks what each strict list's header says, e.g. Mi Account sign-in)")


# --- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    defer_sighup()   # first: a reload during the slow start-up must not kill the process
    if args.worker_fd is not None:   # a worker: its config comes from the supervisor
        from .workers import worker_main

        return worker_main(args.worker_fd, args.log_level, _runner())
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"hushdns: configuration error:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, (args.log_level or config.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for text in config.warnings:
        log.warning("%s", text)
    runner = _runner()
    try:
        if config.workers > 1:
            from .workers import Supervisor, worker_argv

            return runner(Supervisor(config, lambda: _load(args), worker_argv(args.argv)).run())
        return runner(_serve(config, args))
    except KeyboardInterrupt:
        return 0


def _runner() -> Any:
    try:
        import uvloop  # type: ignore[import-not-found]

        return uvloop.run
    except ImportError:
        return asyncio.run


async def _serve(config: Config, args: argparse.Namespace) -> int:
    from .server import Server

    server = Server(config, reload_config=lambda: _load(args))
    notifier = sdnotify.attach(server, describe=lambda: _status(server))
    # Pings from the event loop itself: if the loop hangs, systemd restarts us.
    watchdog = asyncio.create_task(notifier.watchdog_loop())
    try:
        await server.start()
    except OSError as exc:   # ListenError names address, port and protocol itself
        text = str(exc) if isinstance(exc, ListenError) else f"cannot listen: {exc}"
        log.error("%s", text)
        notifier.status(text)
        watchdog.cancel()
        await server.stop()
        return 1
    tune_gc()
    stop = handle_signals(server.reload)
    await stop.wait()
    log.info("stopping")
    await server.stop()
    watchdog.cancel()
    return 0


def _status(server: Any) -> str:
    """One line for ``systemctl status``: what is served, and whether the last reload worked."""
    from .config import format_endpoint

    addrs = ", ".join(map(format_endpoint, server.udp_addresses))
    text = f"serving {len(server.lists.index)} domains from {len(server.lists.lists)} lists on {addrs}"
    if not server.stats.config_reload_success:
        text += "; last reload FAILED, running the previous config"
    return text


# --- check ---------------------------------------------------------------------------------


def _parse_spec(spec: ListSpec, state_dir: str, fetch: bool = False) -> list[tuple[str, Parsed]]:
    """(file label, parsed) per file of a list, with line numbers kept."""
    if spec.kind == "dir":
        files = sorted(p for p in Path(spec.source).iterdir()
                       if p.is_file() and not p.name.startswith("."))
        try:
            return [(str(p), loader.parse_text(local_file.read_text(str(p), spec.max_size),
                                               keep_rules=True)) for p in files]
        except OSError as exc:
            raise loader.LoadError(str(exc)) from None
    text = loader.read_source(spec, state_dir, fetch=fetch)
    return [(spec.source, loader.parse_checked(spec, text, keep_rules=True))]


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and every list; the last line says what failed, if anything.

    ``--offline`` (the systemd unit's pre-start check) reads URL lists from their disk
    copies only: a URL list with no copy yet is a warning, since ``serve`` starts without
    it and downloads it in the background; start-up must never wait on the network.
    """
    try:
        config = _load(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("check FAILED: configuration errors (above)", file=sys.stderr)
        return 2
    offline = getattr(args, "offline", False)
    print(f"{config.path}: configuration OK")
    for text in config.warnings:
        print(f"warning: {text}")
    for line in _household_summary(config):
        print(line)
    warnings = len(config.warnings)
    from .tls_check import report  # DoT/DoH upstreams and listeners, the certificate's dates

    lines, tls_warnings, failures = report(config)
    for line in lines:
        print(line)
    warnings += tls_warnings
    for spec in config.all_lists():
        kind = "allow" if spec.allow else "block"
        if offline and spec.kind == "url":
            from .lists import remote

            if remote.read_copy(spec.source, config.state_dir) is None:
                print(f"{kind} list {spec.name}: warning: not downloaded yet ({spec.source}); "
                      "serve starts without it and downloads it in the background")
                warnings += 1
                continue
        try:
            parts = _parse_spec(spec, config.state_dir, fetch=not offline)   # URL lists: download now
        except loader.LoadError as exc:
            print(f"{kind} list {spec.name}: FAILED: {exc}")
            failures.append(f"list {spec.name} failed to load")
            continue
        entries = sum(len(p) for _, p in parts)
        rejected = [(f, r) for f, p in parts for r in p.rejected]
        print(f"{kind} list {spec.name}: {entries} entries, {len(rejected)} rejected lines ({spec.source})")
        for f, (line, text, reason) in rejected:
            print(f"  {f}:{line}: {reason}: {text}")
        if spec.kind != "url" and rejected:   # subscribed lists may carry junk; your own files may not
            failures.append(f"{len(rejected)} rejected line{'s' * (len(rejected) != 1)} "
                            f"in list {spec.name}")
        if entries == 0 and not spec.allow:
            print(f"  warning: {spec.name} has no entries")
            warnings += 1
    note = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
    if failures:
        print(f"check FAILED: {'; '.join(failures)}{note}")
        return 1
    print(f"check OK: configuration and {len(config.all_lists())} lists{note}")
    return 0


def _household_summary(config: Config) -> list[str]:
    """``check``'s lines for local names and schedules (nothing when neither is configured)."""
    out = []
    local = config.household.local
    if local.records:
        hosts = sum(1 for r in local.records if not r.where.startswith(config.path + ":"))
        out.append(f"local names: {len({r.name for r in local.records})} names, "
                   f"{len(local.records)} records" + (f" ({hosts} from hosts files)" if hosts else "")
                   + (f", zones {', '.join(local.zones)}" if local.zones else ""))
    for g in config.groups.values():
        for sch in g.schedules:
            out.append(f"schedule of group {g.name}: {sch.describe()} "
                       f"({config.household.timezone or 'system time zone'})")
    return out


# --- query ---------------------------------------------------------------------------------


def _rule_location(spec: ListSpec, rule: str, state_dir: str) -> str:
    try:
        for f, parsed in _parse_spec(spec, state_dir):
            for r in parsed.rules or ():
                if r.value == rule:
                    return f"{f}:{r.line}"
    except (loader.LoadError, OSError):
        pass
    return spec.source


def _question(name: str, qtype: str) -> bytes | None:
    """A plain query for ``name``/``qtype`` as a stub would send it, or None for an unknown type."""
    from .wire import QTYPE_NAMES, encode_name

    codes = {v: k for k, v in QTYPE_NAMES.items()}
    code = codes.get(qtype)
    if code is None and qtype.startswith("TYPE") and qtype[4:].isdigit():
        code = int(qtype[4:])
    if code is None or not 0 < code < 65536:
        return None
    return (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + encode_name(name)
            + code.to_bytes(2, "big") + b"\x00\x01")


def cmd_query(args: argparse.Namespace) -> int:
    """Explain a decision by running the serving pipeline's on_query stages on the question."""
    from .clients import ClientTable, LabelBound, UnknownClient, client_address
    from .lists.parse import normalize_domain
    from .pipeline import build_pipeline
    from .stats import Stats
    from .wire import Drop, Reject, parse_query

    try:
        config = _load(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    name = normalize_domain(args.name)
    if name is None:
        print(f"not a valid name: {args.name!r}", file=sys.stderr)
        return 2
    qtype = args.type.upper()
    data = _question(name, qtype)
    if data is None:
        print(f"not a query type: {args.type!r}", file=sys.stderr)
        return 2
    from .devices import devices_now

    devices = devices_now(config)   # leases, neighbours, PTR when devices: is configured
    try:
        # an address, a clients: name or a device name
        address = client_address(config, args.client,
                                 {n: d.addresses for n, d in devices.devices.items()})
    except UnknownClient as exc:
        print(exc, file=sys.stderr)
        return 2
    lists = loader.load_all(config)
    from .control.state import HouseholdState, parse_when

    try:
        when = parse_when(args.at, config) if getattr(args, "at", None) else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Schedules now (or --at), and the pauses and allows the server saved.
    household = HouseholdState(config) if when is None else HouseholdState(config, clock=lambda: when)
    household.load()
    client = ClientTable(config, lists, LabelBound(config.metrics.max_clients),
                         devices.names, household).lookup(address)
    named = client.device or client.name
    who = f"client {address}" + (f" ({named})" if named else "") + f", group {client.group}"
    head = f"{name} {qtype} for {who}"
    try:
        q = parse_query(data)
    except (Drop, Reject) as exc:
        print(f"{head}: rejected before any stage ({exc})")
        return 0
    q.client, q.proto, q.info, q.addr = address, "tcp" if args.tcp else "udp", client, (address, 0)
    reply, notes, terminal = build_pipeline(config, lists, Stats()).explain(q)
    for r in (*notes, reply):
        if r is not None and r.list is not None and r.rule and r.rule.startswith("/"):
            # A regex verdict names the list's whole alternation: show the one that matched.
            bit = lists.lists[r.list].bit
            r.rule = "/" + lists.index.which_regex(bit, name, r.rule[1:-1]) + "/"
    for note in notes:   # why a stage let the query through (an allow rule)
        print(f"{head}: {note.result} by list {note.list}, rule `{note.rule}` "
              f"({_where(lists, note, config.state_dir)})")
    if reply is None:
        print(f"{head}: {terminal}"
              + (", unless a CNAME in the answer is blocked" if client.block else ""))
    elif reply.list is not None:
        print(f"{head}: {reply.result} by list {reply.list}, rule `{reply.rule}` "
              f"({_where(lists, reply, config.state_dir)})")
        if reply.note:
            print(f"  {reply.note}")
    else:
        print(f"{head}: {reply.note or reply.result}")
    for line in household.explain(client, address):
        print(f"  note: {line}")
    for info in lists.failed():
        print(f"  note: list {info.spec.name} failed to load: {info.error}")
    return 0


def _where(lists: Any, reply: Any, state_dir: str) -> str:
    """File and line of the rule a reply names (regex rules are shown between slashes)."""
    rule = reply.rule
    if len(rule) > 1 and rule.startswith("/") and rule.endswith("/"):
        rule = rule[1:-1]
    return _rule_location(lists.lists[reply.list].spec, rule, state_dir)


# --- config ---------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    """Print the embedded default config: the file to copy and edit (`serve` without -c uses it)."""
    from . import bundled

    if not args.default:
        print("hushdns config: say --default to print the embedded default config", file=sys.stderr)
        return 2
    sys.stdout.write(bundled.default_config_text())
    return 0


# --- entry point -----------------------------------------------------------------------------


def _qtype(text: str) -> str:
    """argparse type of ``query --type``: a record type DNS knows (``TYPE65`` included)."""
    import dnslib

    name = text.upper()
    if name in dnslib.QTYPE.reverse or (name.startswith("TYPE") and name[4:].isdigit()
                                        and int(name[4:]) < 65536):
        return name
    raise argparse.ArgumentTypeError(f"not a DNS record type: {text!r} (e.g. A, AAAA, MX, HTTPS)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hushdns", description="DNS blocking resolver for vendor telemetry")
    p.add_argument("--version", action="version", version=f"hushdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the resolver (embedded default config without -c)")
    s.add_argument("-c", "--config", help="YAML config file")
    s.add_argument("--listen", action="append", help="override listen (repeatable), e.g. 127.0.0.1:5533")
    s.add_argument("--upstream", action="append", help="override upstreams (repeatable)")
    s.add_argument("--metrics", help="override metrics.listen, or 'off'")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--strict", action="store_true", help=STRICT_HELP)
    s.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)   # internal: workers: N
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="validate a config and every list it uses")
    c.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    c.add_argument("--strict", action="store_true", help=STRICT_HELP)
    c.add_argument("--offline", action="store_true",
                   help="no downloads: URL lists from their disk copies (the unit's pre-start check)")
    c.set_defaults(func=cmd_check)

    q = sub.add_parser("query", help="explain what hushdns would do for a name (no network)")
    q.add_argument("name")
    q.add_argument("--type", default="A", type=_qtype, help="record type, e.g. A, AAAA, HTTPS")
    q.add_argument("--client", default="127.0.0.1",
                   help="client address or a name from clients: (default 127.0.0.1)")
    q.add_argument("--tcp", action="store_true", help="as if asked over TCP")
    q.add_argument("--at", help="as if asked at this time (schedules): 'sat 21:00', "
                                "'2026-12-05 21:00'; in the config's timezone")
    q.add_argument("-c", "--config", help="YAML config file (embedded default without -c)")
    q.add_argument("--strict", action="store_true", help=STRICT_HELP)
    q.set_defaults(func=cmd_query)

    g = sub.add_parser("config", help="print the embedded default config (--default)")
    g.add_argument("--default", action="store_true",
                   help="the config `serve` uses without -c, to copy to /etc/hushdns/config.yaml")
    g.set_defaults(func=cmd_config)

    from .lists.commands import add_parser as add_lists_parser

    add_lists_parser(sub)   # hushdns lists lint | show | stats | suggest
    from .querylog.commands import add_parsers as add_querylog_parsers

    add_querylog_parsers(sub)   # hushdns log | devices | device NAME
    from .control.commands import add_parsers as add_control_parsers

    add_control_parsers(sub)   # hushdns pause | resume | allow | status
    return p


def main(argv: list[str] | None = None) -> int:
    from .control.commands import negative_durations

    args = build_parser().parse_args(negative_durations(list(sys.argv[1:] if argv is None else argv)))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `hushdns lists show xiaomi | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""``hushdns pause | resume | allow | status``: the command-line side of the control API.

``-c CONFIG`` finds the unix socket (``control.socket``, else ``control.sock`` in the
runtime or state dir); ``--control HOST:PORT`` with ``--token`` (or
``$HUSHDNS_CONTROL_TOKEN``) talks to the TCP listener instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from datetime import datetime
from typing import Any

from ..household_config import CONTROL_PORT, TOKEN_ENV

TIMEOUT = 10.0
SYSTEMD_SOCKET = "/run/hushdns/control.sock"


class ControlUnreachable(OSError):
    """No running hushdns answers on the socket or address."""


def request(req: dict[str, Any], socket_path: str | None = None,
            address: tuple[str, int] | None = None, token: str | None = None) -> dict[str, Any]:
    """Send one request, read one reply (both one JSON line)."""
    if token:
        req = {**req, "token": token}
    try:
        if address is not None:
            s = socket.create_connection(address, timeout=TIMEOUT)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(TIMEOUT)
            s.connect(socket_path or "")
    except OSError as exc:
        where = f"{address[0]}:{address[1]}" if address else socket_path
        raise ControlUnreachable(f"cannot reach hushdns at {where}: {exc.strerror or exc} "
                                 "(is it running? is this its config?)") from None
    with s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise ControlUnreachable("hushdns closed the connection without a reply")
    return json.loads(buf)


_NEGATIVE = re.compile(r"-\d[\w.]*")


def negative_durations(argv: list[str]) -> list[str]:
    """``pause -5m`` / ``allow X --for -1h``: argparse would take ``-5m`` for an option and
    say "unrecognized arguments"; handed over as values, the server says what is wrong."""
    if not argv or argv[0] not in ("pause", "allow"):
        return argv
    out: list[str] = []
    tail: list[str] = []
    for arg in argv:
        if _NEGATIVE.fullmatch(arg):
            if out and out[-1] == "--for":
                out[-1] = f"--for={arg}"
            else:
                tail.append(arg)
            continue
        out.append(arg)
    return out + (["--", *tail] if tail else [])


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="YAML config file (finds the control socket)")
        p.add_argument("--socket", help="the control socket (instead of the config's)")
        p.add_argument("--control", help="HOST:PORT of the TCP control listener")
        p.add_argument("--token", help=f"the TCP listener's token (default ${TOKEN_ENV})")
        p.set_defaults(func=cmd_control)

    p = sub.add_parser("pause", help="pause blocking (everyone, a --group or a --device)")
    p.add_argument("duration", nargs="?", help="e.g. 30m, 1h (default: until resume)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--group")
    who.add_argument("--device", help="a name from clients: or an address")
    common(p)
    p.set_defaults(verb="pause")

    r = sub.add_parser("resume", help="end a pause (all of them without --group/--device)")
    who = r.add_mutually_exclusive_group()
    who.add_argument("--group")
    who.add_argument("--device")
    common(r)
    r.set_defaults(verb="resume")

    a = sub.add_parser("allow", help="allow a blocked name for one device for a while")
    a.add_argument("name")
    a.add_argument("--device", required=True, help="a name from clients: or an address")
    a.add_argument("--for", dest="for_", required=True, metavar="DURATION", help="e.g. 1h")
    common(a)
    a.set_defaults(verb="allow")

    s = sub.add_parser("status", help="lists, pauses, temporary allows, upstreams, uptime")
    s.add_argument("--json", action="store_true", help="the raw reply")
    common(s)
    s.set_defaults(verb="status")


def _where(args: argparse.Namespace) -> tuple[str | None, tuple[str, int] | None, str | None]:
    token = args.token or os.environ.get(TOKEN_ENV)
    if args.control:
        from ..config import parse_endpoint

        return None, parse_endpoint(args.control, CONTROL_PORT), token
    if args.socket:
        return args.socket, None, None
    from ..config import load_config

    cfg = load_config(args.config)
    ctl = cfg.household.control
    if ctl.socket is None:
        if ctl.listen is None:
            raise ControlUnreachable("the config turns the control API off (control.socket: null)")
        return None, ctl.listen, token or ctl.token
    if not os.path.exists(ctl.socket) and os.path.exists(SYSTEMD_SOCKET):
        return SYSTEMD_SOCKET, None, None   # the unit's RuntimeDirectory (its $RUNTIME_DIRECTORY)
    return ctl.socket, None, None


def cmd_control(args: argparse.Namespace) -> int:
    from ..config import ConfigError

    req: dict[str, Any] = {"verb": args.verb}
    for key in ("group", "device", "duration", "name"):
        if getattr(args, key, None) is not None:
            req[key] = getattr(args, key)
    if getattr(args, "for_", None) is not None:
        req["for"] = args.for_
    try:
        path, address, token = _where(args)
        reply = request(req, path, address, token)
    except ConfigError as exc:
        print(f"hushdns: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except (ControlUnreachable, ValueError) as exc:
        print(f"hushdns {args.verb}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"hushdns {args.verb}: {reply.get('error')}", file=sys.stderr)
        return 1
    result = reply["result"]
    if args.verb == "status" and not getattr(args, "json", False):
        print(format_status(result))
    elif args.verb == "status":
        print(json.dumps(result, indent=2))
    elif args.verb == "pause":
        print(f"blocking paused for {result['paused']}")
    elif args.verb == "resume":
        gone = result["resumed"]
        print("resumed: " + "; ".join(gone) if gone else "nothing was paused")
    else:
        print(f"allowed {result['allowed']}")
    return 0


def format_status(st: dict[str, Any]) -> str:
    up = int(st.get("uptime", 0))
    lines = [f"hushdns up {up // 86400}d {up % 86400 // 3600}h {up % 3600 // 60}m, "
             f"config {st.get('config')}, listening on {', '.join(st.get('listen', []))}"]
    lists = st.get("lists", {})
    lines.append("lists: " + (", ".join(f"{n} {v}" for n, v in lists.items()) or "none"))
    lines.append("upstreams: " + ", ".join(f"{u} {v}" for u, v in st.get("upstreams", {}).items()))
    pauses = st.get("pauses", [])
    lines.append("paused: " + ("; ".join(p["text"] for p in pauses) if pauses else "nothing"))
    allows = st.get("allows", [])
    lines.append("temporary allows: " + ("; ".join(a["text"] for a in allows) if allows else "none"))
    for g, on in st.get("schedules", {}).items():
        lines.append(f"schedule in force for group {g}: {'; '.join(on)}")
    lines.append(f"as of {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    return "\n".join(lines)

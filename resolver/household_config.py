"""The household keys of the configuration: control, timezone, schedules, local names, bypass.

Why a module of its own: ``config.py`` stays the one place where validation
happens (these readers take its ``_Reader`` and report through it, with key path
and line), but the household keys are a feature of their own and change
together.  Everything here is read once per load; nothing runs per query.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Endpoint, _Reader

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_ACTIONS = ("block", "unblock")
LOCAL_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "PTR")
TOKEN_ENV = "HUSHDNS_CONTROL_TOKEN"
MAX_HOSTS_BYTES = 16 << 20   # an /etc/hosts is kilobytes; a bigger file is a mistake or hostile
CONTROL_PORT = 5534   # the port after DNS's 5533 when control.listen names none
_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class Schedule:
    """A weekly window of a group that blocks (or stops blocking) some lists.

    ``days`` name the day a window *starts*: ``fri 21:00-07:00`` runs from Friday
    21:00 into Saturday 07:00.  Times are minutes after midnight in the config's
    time zone; ``start == end`` is not a window (rejected when read).
    """

    lists: tuple[str, ...]
    days: frozenset[int]          # 0 = Monday
    start: int
    end: int
    action: str = "block"         # block: add the lists in the window; unblock: drop them
    line: int = 0

    def active(self, when: datetime) -> bool:
        m = when.hour * 60 + when.minute
        wd = when.weekday()
        if self.start < self.end:
            return wd in self.days and self.start <= m < self.end
        return (wd in self.days and m >= self.start) or ((wd - 1) % 7 in self.days and m < self.end)

    def describe(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return (f"{self.action} {','.join(self.lists)} {days} "
                f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}")


@dataclass(frozen=True)
class Control:
    """The control API's listeners: a unix socket (no token: its file mode guards it) and an
    optional TCP address, which requires the token."""

    socket: str | None = None
    listen: Endpoint | None = None
    token: str | None = None


@dataclass(frozen=True)
class LocalRecord:
    """One local record as written: owner, type, rdata text, and where it was written."""

    name: str
    rtype: str
    rdata: str
    where: str = ""


@dataclass(frozen=True)
class LocalNames:
    """``local_records`` and the records of ``hosts_files`` (read when the config is)."""

    records: tuple[LocalRecord, ...] = ()
    zones: tuple[str, ...] = ()              # names below these that are not local: NXDOMAIN
    hosts_files: tuple[str, ...] = ()
    ttl: int = 300

    @property
    def enabled(self) -> bool:
        return bool(self.records or self.zones or self.hosts_files)


@dataclass(frozen=True)
class Bypass:
    """Answers that keep clients on this resolver (see docs/household.md)."""

    firefox_canary: bool = True
    ddr: bool = True
    private_relay: bool = True
    doh_resolvers: bool = False
    # ``bypass: false``: no answers and no counting (the stage is left out of the pipeline).
    enabled: bool = True


@dataclass(frozen=True)
class Household:
    control: Control = field(default_factory=Control)
    timezone: str | None = None
    local: LocalNames = field(default_factory=LocalNames)
    bypass: Bypass = field(default_factory=Bypass)

    def zone(self) -> zoneinfo.ZoneInfo | None:
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else None


HOUSEHOLD_KEYS = ("control", "timezone", "local_records", "local_zones", "hosts_files", "bypass")


def read_household(r: _Reader, top: dict[str, Any], state_dir: str) -> Household:
    from .config import parse_endpoint

    doc = r.doc
    c = r.section(top.get("control"), "control", ("socket", "listen", "token"))
    sock: str | None = os.path.join(os.environ.get("RUNTIME_DIRECTORY") or state_dir, "control.sock")
    if "socket" in c:
        raw = c["socket"]
        if raw is None or raw is False:
            sock = None
        elif isinstance(raw, str) and raw:
            sock = str((r.base / os.path.expanduser(raw)).resolve())
        else:
            doc.err("control.socket", "must be a path, or null for no unix socket")
    listen = None
    if c.get("listen") is not None:
        try:
            listen = parse_endpoint(str(c["listen"]), CONTROL_PORT)
        except ValueError as exc:
            doc.err("control.listen", str(exc))
    token = r.typed(c, "token", "control", str, None) or os.environ.get(TOKEN_ENV) or None
    if listen is not None and not token:
        doc.err("control.listen", f"a TCP control address needs control.token (or ${TOKEN_ENV})")
    if token is not None and len(token) < 12:
        doc.err("control.token", "too short: use at least 12 characters")

    tz = r.typed(top, "timezone", "", str, None)
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            doc.err("timezone", f"unknown time zone {tz!r} (e.g. Europe/Berlin, UTC)")
            tz = None

    switches = ("firefox_canary", "ddr", "private_relay", "doh_resolvers")
    if top.get("bypass") is False:
        bypass = Bypass(False, False, False, False, enabled=False)
    elif top.get("bypass") is True:
        bypass = Bypass()
    else:
        b = r.section(top.get("bypass"), "bypass", switches)
        bypass = Bypass(**{k: r.typed(b, k, "bypass", bool, getattr(Bypass(), k)) for k in switches})
    return Household(Control(sock, listen, token), tz, _local(r, top), bypass)


def _local(r: _Reader, top: dict[str, Any]) -> LocalNames:
    records: list[LocalRecord] = []
    data = top.get("local_records")
    doc = r.doc
    if isinstance(data, dict):
        for name, value in data.items():
            path = f"local_records.{name}"
            for i, v in enumerate(value if isinstance(value, list) else [value]):
                sub = f"{path}[{i}]" if isinstance(value, list) else path
                rec = _record(r, name, v, sub)
                if rec is not None:
                    records.append(rec)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            sub = f"local_records[{i}]"
            if not isinstance(item, str) or len(item.split(None, 1)) < 2:
                doc.err(sub, "must be a line like 'nas.home A 192.168.1.10' or 'nas.home 192.168.1.10'")
                continue
            name, rest = item.split(None, 1)
            rec = _record(r, name, rest, sub)
            if rec is not None:
                records.append(rec)
    elif data is not None:
        doc.err("local_records", "must be a mapping of name -> address(es) or records, or a list of lines")
    zones = []
    for i, z in enumerate(r.str_list(top.get("local_zones"), "local_zones")):
        name = normal_name(z)
        if name is None:
            doc.err(f"local_zones[{i}]", f"not a domain name: {z!r}")
            continue
        zones.append(name)
    hosts = []
    for i, h in enumerate(r.str_list(top.get("hosts_files"), "hosts_files")):
        p = Path(os.path.expanduser(h))
        p = p if p.is_absolute() else r.base / p
        if not p.is_file():
            doc.err(f"hosts_files[{i}]", f"not a regular file: {h!r}" if p.exists()
                    else f"no such file {h!r}")
            continue
        problems: list[str] = []
        try:
            if p.stat().st_size > MAX_HOSTS_BYTES:
                doc.err(f"hosts_files[{i}]", f"{h!r} is larger than {MAX_HOSTS_BYTES >> 20} MiB: "
                        "not a hosts file")
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            doc.err(f"hosts_files[{i}]", f"cannot read {h!r}: {exc.strerror or exc}")
            continue
        records.extend(parse_hosts(text, str(p), problems))
        for problem in problems:
            doc.err(f"hosts_files[{i}]", problem)
        hosts.append(str(p))
    return LocalNames(tuple(records), tuple(zones), tuple(hosts))


def normal_name(text: str) -> str | None:
    """``text`` as the resolver compares names (lower case, no trailing dot), or None."""
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(lb) for lb in name.split(".")):
        return None
    return name


def _record(r: _Reader, owner: Any, value: Any, path: str) -> LocalRecord | None:
    line = r.doc.lines.get(path, 0)
    name = normal_name(str(owner))
    if name is None:
        r.doc.err(path, f"not a domain name: {owner!r}")
        return None
    text = str(value).strip() if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    if text is None:
        r.doc.err(path, f"must be an address or a record like 'TXT hello', not {type(value).__name__}")
        return None
    try:
        rtype, rdata = split_record(text)
    except ValueError as exc:
        r.doc.err(path, str(exc))
        return None
    return LocalRecord(name, rtype, rdata, f"{r.doc.filename}:{line}")


def split_record(text: str) -> tuple[str, str]:
    """'192.168.1.10' -> (A, ..); 'fd00::20' -> (AAAA, ..); 'TXT hello' -> (TXT, 'hello').

    The rdata is checked here, so a bad record is a config error with its line.
    """
    try:
        ip = ipaddress.ip_address(text)
        return ("A" if ip.version == 4 else "AAAA"), str(ip)
    except ValueError:
        pass
    parts = text.split(None, 1)
    rtype = parts[0].upper()
    if rtype not in LOCAL_TYPES:
        raise ValueError(f"not an address or a record of type {', '.join(LOCAL_TYPES)}: {text!r}")
    rdata = parts[1].strip() if len(parts) > 1 else ""
    if not rdata:
        raise ValueError(f"{rtype} record without data")
    if rtype in ("A", "AAAA"):
        try:
            ip = ipaddress.ip_address(rdata)
        except ValueError:
            raise ValueError(f"{rtype}: not an address: {rdata!r}") from None
        if (ip.version == 4) != (rtype == "A"):
            raise ValueError(f"{rtype}: wrong address family: {rdata!r}")
    elif rtype in ("CNAME", "PTR"):
        if normal_name(rdata) is None:
            raise ValueError(f"{rtype}: not a domain name: {rdata!r}")
    elif rtype == "MX":
        f = rdata.split()
        if len(f) != 2 or not f[0].isdigit() or int(f[0]) > 65535 or normal_name(f[1]) is None:
            raise ValueError(f"MX needs 'PREFERENCE HOST', not {rdata!r}")
    elif rtype == "SRV":
        f = rdata.split()
        if len(f) != 4 or not all(x.isdigit() and int(x) < 65536 for x in f[:3]) or normal_name(f[3]) is None:
            raise ValueError(f"SRV needs 'PRIORITY WEIGHT PORT TARGET', not {rdata!r}")
    elif rtype == "TXT" and len(rdata.encode()) > 255 * 8:
        raise ValueError("TXT record too long")
    return rtype, rdata


def parse_hosts(text: str, where: str, problems: list[str]) -> list[LocalRecord]:
    """An ``/etc/hosts`` file: 'ADDRESS NAME [ALIAS...]' per line, '#' comments.

    A bad line is a problem naming ``where:line``; the other lines still count, but the
    caller refuses the file as a whole (the old records keep serving).
    """
    out: list[LocalRecord] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            ip = ipaddress.ip_address(fields[0].split("%")[0])
        except ValueError:
            problems.append(f"{where}:{n}: not an address: {fields[0]!r} in {raw.strip()!r}")
            continue
        if len(fields) < 2:
            problems.append(f"{where}:{n}: an address without a name: {raw.strip()!r}")
            continue
        if ip.is_multicast:   # ff02::1 ip6-allnodes and friends: nothing to answer
            continue
        for alias in fields[1:]:
            name = normal_name(alias)
            if name is None:
                problems.append(f"{where}:{n}: not a host name: {alias!r}")
                continue
            out.append(LocalRecord(name, "A" if ip.version == 4 else "AAAA", str(ip), f"{where}:{n}"))
    return out


def read_schedules(r: _Reader, data: Any, path: str, lists: dict[str, Any]) -> tuple[Schedule, ...]:
    """``schedules: [{lists: [social], days: [mon-fri], from: "21:00", to: "07:00"}]``."""
    if data is None:
        return ()
    if not isinstance(data, list):
        r.doc.err(path, "must be a list of {lists, days, from, to, action}")
        return ()
    out = []
    for i, item in enumerate(data):
        sub = f"{path}[{i}]"
        s = r.section(item, sub, ("lists", "days", "from", "to", "action"))
        if not s:
            if not isinstance(item, dict):
                continue
            r.doc.err(sub, "needs lists, from and to")
            continue
        names = r.str_list(s.get("lists"), f"{sub}.lists")
        ok = bool(names)
        if not names:
            r.doc.err(f"{sub}.lists", "a schedule needs at least one list")
        for j, ln in enumerate(names):
            if ln not in lists:
                r.doc.err(f"{sub}.lists[{j}]", f"no list named {ln!r} in blocking.lists")
                ok = False
        days = _days(r, s.get("days"), f"{sub}.days")
        times = []
        for key in ("from", "to"):
            v = s.get(key)
            m = _HHMM.fullmatch(str(v).strip()) if isinstance(v, str) else None
            if m is None:
                r.doc.err(f"{sub}.{key}" if key in s else sub,
                          f"needs {key}: a time like \"21:00\" (24-hour, quoted), not {v!r}"
                          if key in s else f"needs {key}: a time like \"21:00\"")
                ok = False
                continue
            times.append(int(m.group(1)) * 60 + int(m.group(2)))
        if len(times) == 2 and times[0] == times[1]:
            r.doc.err(f"{sub}.to", "from and to are the same time: an empty window "
                      "(for all day, use from: \"00:00\", to: \"23:59\")")
            ok = False
        action = r.typed(s, "action", sub, str, "block",
                         lambda v: None if v in SCHEDULE_ACTIONS else
                         f"must be one of {', '.join(SCHEDULE_ACTIONS)}")
        if ok and days is not None and len(times) == 2:
            out.append(Schedule(tuple(names), days, times[0], times[1], action,
                                r.doc.lines.get(sub, 0)))
    return tuple(out)


def _days(r: _Reader, data: Any, path: str) -> frozenset[int] | None:
    """``[mon, tue]``, ``[mon-fri]``, ``"sat-sun"``, ``daily``; absent: every day."""
    if data is None or data == "daily":
        return frozenset(range(7))
    items = r.str_list(data, path)
    out: set[int] = set()
    for i, item in enumerate(items):
        a, _, b = item.strip().lower().replace("..", "-").partition("-")
        a, b = a.strip()[:3], b.strip()[:3]
        if a not in DAYS or (b and b not in DAYS):
            r.doc.err(f"{path}[{i}]" if isinstance(data, list) else path,
                      f"not a day or a range of days: {item!r} (mon..sun, e.g. mon-fri)")
            return None
        lo, hi = DAYS.index(a), DAYS.index(b or a)
        d = lo
        while True:
            out.add(d)
            if d == hi:
                break
            d = (d + 1) % 7
    return frozenset(out)

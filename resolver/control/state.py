"""Household state: pauses, temporary allows and the schedule windows in force.

Why it lives beside the pipeline, not in it: the state outlives every pipeline
(a SIGHUP reload builds a new one) and is persisted to the state dir, so a
restart forgets a timed pause only if it has expired.  It reaches the queries
through ``ClientInfo`` (``adjust``): a paused client's block mask is empty, a
schedule adds or drops lists from its group's masks, a temporary allow is a set
of names in ``ClientInfo.allow_names``; and each of those is in the client's
policy key, so the reply memo, which is keyed by it, never gives a reply made
under other rules.  Every change clears the client table (``on_change``), so
the next query of every client is looked up again under the new state.

Expiry is wall-clock time (it has to survive a restart); ``tick`` runs once a
second on the event loop and logs each expiry exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..config import Config, parse_duration
from ..household_config import normal_name

if TYPE_CHECKING:
    from ..clients import ClientInfo

log = logging.getLogger("hushdns.household")

MAX_PAUSE = 7 * 86400.0      # longer than a week is not a pause: edit the config
MAX_ALLOW = 7 * 86400.0
STATE_FILE = "household.json"
ALL = "all"


class ControlError(ValueError):
    """A request the state refuses (unknown group or device, bad duration): said to the caller."""


@dataclass
class Pause:
    scope: str                 # "all", "group", "device"
    target: str                # group or device name ("" for all)
    until: float | None        # unix time; None: until resumed

    @property
    def key(self) -> str:
        return ALL if self.scope == ALL else f"{self.scope}:{self.target}"

    def describe(self) -> str:
        who = "everyone" if self.scope == ALL else f"{self.scope} {self.target}"
        return who + (f" until {_clock(self.until)}" if self.until else " until resumed")


@dataclass
class TempAllow:
    device: str
    name: str
    until: float

    def describe(self) -> str:
        return f"{self.name} for device {self.device} until {_clock(self.until)}"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def parse_for(text: Any, what: str, limit: float) -> float:
    """A duration from the control API: positive, at most ``limit`` seconds."""
    if isinstance(text, str) and text.strip().startswith("-"):
        raise ControlError(f"{what}: a duration cannot be negative: {text!r}")
    seconds = parse_duration(text)
    if seconds is None:
        raise ControlError(f"{what}: not a duration like 30m, 1h, 2d: {text!r}")
    if seconds <= 0:
        raise ControlError(f"{what}: must be longer than 0: {text!r}")
    if seconds > limit:
        raise ControlError(f"{what}: {text!r} is longer than the limit of {limit / 86400:g} days")
    return seconds


def parse_when(text: str, config: Config) -> float:
    """``hushdns query --at``: 'sat 21:00' (the next one from now) or 'YYYY-MM-DD HH:MM',
    in the config's time zone -> unix time."""
    from datetime import timedelta

    from ..household_config import DAYS

    tz = config.household.zone() if config.household.timezone else None
    now = datetime.now(tz) if tz else datetime.now().astimezone()
    parts = text.strip().lower().split()
    try:
        if len(parts) == 2 and parts[0][:3] in DAYS:
            hh, mm = (int(x) for x in parts[1].split(":"))
            day = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            day += timedelta(days=(DAYS.index(parts[0][:3]) - now.weekday()) % 7)
            return day.timestamp()
        t = datetime.fromisoformat(text.strip())
        return (t.replace(tzinfo=tz) if tz and t.tzinfo is None else t).timestamp()
    except ValueError:
        pass
    raise ValueError(f"--at {text!r}: not a time like 'sat 21:00' or '2026-12-05 21:00'")


class HouseholdState:
    """Pauses, temporary allows and schedule windows; one per server, across reloads."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time,
                 stats: Any = None) -> None:
        self.clock = clock
        self.stats = stats
        self.pauses: dict[str, Pause] = {}
        self.allows: list[TempAllow] = []
        self.generation = 0
        self.on_change: list[Callable[[], None]] = []
        # Device names from leases, reverse DNS (resolver/devices), besides clients: names.
        self.device_names: Callable[[], Collection[str]] = lambda: ()
        self.windows: dict[str, tuple[int, ...]] = {}   # group -> indexes of schedules in force
        self.config = config
        self.path: str | None = os.path.join(config.state_dir, STATE_FILE) if config.state_dir else None
        self.configure(config)

    # --- configuration and persistence ---------------------------------------------------

    def configure(self, config: Config) -> None:
        """A (re)loaded config: groups, devices and schedules may have changed; the state stays."""
        self.config = config
        self.windows = self._windows(self.clock())
        self._changed(save=False)

    def load(self) -> None:
        """Read the state file; entries that expired while hushdns was stopped are dropped."""
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("household state %s unreadable, starting without pauses: %s", self.path, exc)
            return
        now = self.clock()
        for p in data.get("pauses", []):
            pause = Pause(p["scope"], p["target"], p.get("until"))
            if pause.until is None or pause.until > now:
                self.pauses[pause.key] = pause
        for a in data.get("allows", []):
            if a["until"] > now:
                self.allows.append(TempAllow(a["device"], a["name"], a["until"]))
        if self.pauses or self.allows:
            log.info("household state restored: %s",
                     "; ".join([f"paused {p.describe()}" for p in self.pauses.values()]
                               + [f"allowed {a.describe()}" for a in self.allows]))
        self._changed(save=False)

    def save(self) -> None:
        if self.path is None:
            return
        data = {"pauses": [vars(p) for p in self.pauses.values()],
                "allows": [vars(a) for a in self.allows]}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot save household state to %s: %s", self.path, exc)

    # --- the verbs ---------------------------------------------------------------------

    def pause(self, duration: Any = None, group: str | None = None,
              device: str | None = None) -> Pause:
        scope, target = self._target(group, device)
        until = None if duration in (None, "") else self.clock() + parse_for(duration, "pause", MAX_PAUSE)
        pause = Pause(scope, target, until)
        self.pauses[pause.key] = pause
        log.info("blocking paused for %s", pause.describe())
        self._changed()
        return pause

    def resume(self, group: str | None = None, device: str | None = None) -> list[Pause]:
        """Resume one scope; with neither group nor device, every pause ends."""
        if group is None and device is None:
            gone = list(self.pauses.values())
            self.pauses.clear()
        else:
            scope, target = self._target(group, device)
            p = self.pauses.pop(Pause(scope, target, None).key, None)
            gone = [p] if p is not None else []
        for p in gone:
            log.info("blocking resumed for %s", "everyone" if p.scope == ALL else f"{p.scope} {p.target}")
        if gone:
            self._changed()
        return gone

    def allow(self, name: str, device: str | None, duration: Any) -> TempAllow:
        if not device:
            raise ControlError("allow: say which device (--device NAME or address)")
        _, device = self._target(None, device)
        domain = normal_name(name or "")
        if domain is None:
            raise ControlError(f"allow: not a domain name: {name!r}")
        if duration in (None, ""):
            raise ControlError("allow: say for how long (--for 1h): a temporary allow expires by itself")
        until = self.clock() + parse_for(duration, "allow", MAX_ALLOW)
        self.allows = [a for a in self.allows if (a.device, a.name) != (device, domain)]
        grant = TempAllow(device, domain, until)
        self.allows.append(grant)
        log.info("temporarily allowed %s", grant.describe())
        self._changed()
        return grant

    def tick(self) -> bool:
        """Expire what is due (logged once each) and follow the schedule windows."""
        now = self.clock()
        changed = False
        for key, p in list(self.pauses.items()):
            if p.until is not None and p.until <= now:
                del self.pauses[key]
                log.info("pause of %s expired: blocking resumed",
                         "everyone" if p.scope == ALL else f"{p.scope} {p.target}")
                changed = True
        keep = []
        for a in self.allows:
            if a.until <= now:
                log.info("temporary allow of %s for device %s expired", a.name, a.device)
                changed = True
            else:
                keep.append(a)
        self.allows = keep
        windows = self._windows(now)
        if windows != self.windows:
            for g in sorted(set(windows) | set(self.windows)):
                was, now_on = set(self.windows.get(g, ())), set(windows.get(g, ()))
                for i in sorted(now_on - was):
                    log.info("schedule of group %s starts: %s", g, self.config.groups[g].schedules[i].describe())
                for i in sorted(was - now_on):
                    if g in self.config.groups and i < len(self.config.groups[g].schedules):
                        log.info("schedule of group %s ends: %s", g,
                                 self.config.groups[g].schedules[i].describe())
            self.windows = windows
            self._changed(save=False)
        if changed:
            self._changed()
        return changed

    # --- what queries see ----------------------------------------------------------------

    def adjust(self, info: ClientInfo, address: str, mask: Callable[[tuple[str, ...]], int]) -> ClientInfo:
        """``info`` under the household state (the client table calls this once per address)."""
        p = self.pauses
        policy = info.policy
        if p and (ALL in p or f"group:{info.group}" in p or f"device:{address}" in p
                  or (info.name is not None and f"device:{info.name}" in p)
                  or (info.device is not None and f"device:{info.device}" in p)):
            return replace(info, block=0, policy=policy + "|paused")
        block = info.block
        on = self.windows.get(info.group)
        if on:
            group = self.config.groups[info.group]
            for i in on:
                s = group.schedules[i]
                m = mask(s.lists)
                block = block | m if s.action == "block" else block & ~m
            policy += "|s" + ",".join(map(str, on))
        names = frozenset(a.name for a in self.allows if a.device in (address, info.name, info.device))
        if names:
            policy += f"|a{self.generation}:{address}"
        if block == info.block and not names and policy == info.policy:
            return info
        return replace(info, block=block, policy=policy, allow_names=names)

    def explain(self, info: ClientInfo, address: str) -> list[str]:
        """For ``hushdns query``: what of the household state applies to this client."""
        out = []
        for p in self.pauses.values():
            if p.scope == ALL or (p.scope, p.target) in (("group", info.group), ("device", address),
                                                         ("device", info.name), ("device", info.device)):
                out.append(f"blocking paused for {p.describe()}")
        group = self.config.groups.get(info.group)
        for i in self.windows.get(info.group, ()):
            out.append(f"schedule of group {info.group} in force: {group.schedules[i].describe()}")  # type: ignore[union-attr]
        for a in self.allows:
            if a.device in (address, info.name, info.device):
                out.append(f"temporarily allowed {a.describe()}")
        return out

    def paused_groups(self) -> dict[str, int]:
        every = ALL in self.pauses
        return {g: int(every or f"group:{g}" in self.pauses) for g in self.config.groups}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "pauses": [{"scope": p.scope, "target": p.target, "until": p.until,
                        "left": None if p.until is None else round(p.until - now),
                        "text": p.describe()} for p in self.pauses.values()],
            "allows": [{"device": a.device, "name": a.name, "until": a.until,
                        "left": round(a.until - now), "text": a.describe()} for a in self.allows],
            "schedules": {g: [self.config.groups[g].schedules[i].describe() for i in on]
                          for g, on in self.windows.items() if on},
        }

    # --- inside -------------------------------------------------------------------------

    def _target(self, group: str | None, device: str | None) -> tuple[str, str]:
        if group and device:
            raise ControlError("say --group or --device, not both")
        if group:
            if group not in self.config.groups:
                raise ControlError(f"unknown group {group!r} (groups: {', '.join(sorted(self.config.groups))})")
            return "group", group
        if device:
            if device in self.config.clients or device in self.device_names():
                return "device", device
            import ipaddress

            try:
                return "device", str(ipaddress.ip_address(device.split("%")[0]))
            except ValueError:
                known = ", ".join(sorted({*self.config.clients, *self.device_names()})) or "none known"
                raise ControlError(f"unknown device {device!r}: not an address or a known "
                                   f"device name ({known})") from None
        return ALL, ""

    def _windows(self, now: float) -> dict[str, tuple[int, ...]]:
        if not any(g.schedules for g in self.config.groups.values()):
            return {}
        when = datetime.fromtimestamp(now, self.config.household.zone()) \
            if self.config.household.timezone else datetime.fromtimestamp(now)
        out = {}
        for g in self.config.groups.values():
            on = tuple(i for i, s in enumerate(g.schedules) if s.active(when))
            if on:
                out[g.name] = on
        return out

    def _changed(self, save: bool = True) -> None:
        self.generation += 1
        if save:
            self.save()
        if self.stats is not None:
            self.stats.paused = self.paused_groups()
            self.stats.paused_devices = {p.target: 1 for p in self.pauses.values() if p.scope == "device"}
        for fn in self.on_change:
            fn()

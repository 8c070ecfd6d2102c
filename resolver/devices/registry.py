"""One address -> device name mapping from every source, rebuilt on each refresh.

Precedence, for an address more than one source names: the config's ``clients:``,
then DHCP leases, then reverse DNS. The neighbour table names nothing by itself:
it ties an address to a MAC, and an address whose MAC another address's name
owns gets that name (just below that name's own source), so one phone's IPv4
lease and its rotating IPv6 addresses are one device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .leases import Lease, read_leases
from .names import norm_address
from .neighbours import read_neighbours
from .ptr import Endpoint, lookup_ptr

log = logging.getLogger("hushdns.devices")

# Ranks (lower wins); a MAC-tied address gets its name's rank + 1.
CONFIG, LEASE, PTR = 0, 2, 4
PTR_PER_REFRESH = 64            # reverse lookups per refresh at most (unnamed addresses)
PTR_BUDGET = 10.0              # seconds of reverse lookups per refresh at most (a dead router)
PTR_TTL = 3600.0                # seconds a PTR answer (or its absence) is remembered
MAX_PTR_CACHE = 4096


@dataclass(frozen=True)
class Device:
    name: str
    addresses: tuple[str, ...]
    macs: tuple[str, ...] = ()
    source: str = "config"      # where the name came from: config, lease or ptr


@dataclass(frozen=True)
class DeviceMap:
    """The result of one refresh: ``names`` is what the hot path looks addresses up in."""

    names: Mapping[str, str] = field(default_factory=dict)     # address -> device name
    devices: Mapping[str, Device] = field(default_factory=dict)

    def addresses(self, name: str) -> tuple[str, ...]:
        d = self.devices.get(name)
        return d.addresses if d is not None else ()


def _single_hosts(clients: Mapping[str, Iterable[object]]) -> list[tuple[str, str]]:
    """(address, name) for every ``clients:`` entry that is one host (a /32 or /128)."""
    out = []
    for name, nets in clients.items():
        for net in nets:
            if getattr(net, "num_addresses", 0) == 1:
                addr = norm_address(str(net.network_address))  # type: ignore[attr-defined]
                if addr is not None:
                    out.append((addr, name))
    return out


def _distinct(leases: list[Lease]) -> list[Lease]:
    """Two devices whose leases carry the same host name (two phones both called 'iphone')
    stay two devices: each gets the last two octets of its MAC ('iphone-a1b2')."""
    macs: dict[str, set[str]] = {}
    for lease in leases:
        if lease.name and lease.mac:
            macs.setdefault(lease.name, set()).add(lease.mac)
    shared = {name for name, ms in macs.items() if len(ms) > 1}
    if not shared:
        return leases
    return [Lease(lease.address, f"{lease.name}-{lease.mac[-5:].replace(':', '')}", lease.mac)
            if lease.name in shared and lease.mac else lease for lease in leases]


def build_map(clients: Mapping[str, Iterable[object]], leases: Iterable[Lease],
              ptr: Mapping[str, str], neighbours: Iterable[tuple[str, str]]) -> DeviceMap:
    """Combine the sources (see the module docstring for who wins)."""
    named: dict[str, tuple[int, str]] = {}
    macs: dict[str, str] = {}

    def offer(addr: str, rank: int, name: str) -> None:
        if addr not in named or rank < named[addr][0]:
            named[addr] = (rank, name)

    for addr, name in _single_hosts(clients):
        offer(addr, CONFIG, name)
    leases = _distinct(list(leases))
    for lease in leases:
        if lease.mac:
            macs[lease.address] = lease.mac
        if lease.name:
            offer(lease.address, LEASE, lease.name)
    for addr, name in ptr.items():
        offer(addr, PTR, name)
    for addr, mac in neighbours:
        macs[addr] = mac                      # the live table beats an old lease
    by_mac: dict[str, tuple[int, str]] = {}
    for addr, (rank, name) in sorted(named.items(), key=lambda kv: kv[1][0]):
        mac = macs.get(addr)
        if mac is not None and mac not in by_mac:
            by_mac[mac] = (rank, name)
    for addr, mac in macs.items():
        if mac in by_mac:
            rank, name = by_mac[mac]
            offer(addr, rank + 1, name)
    names = {addr: name for addr, (_, name) in named.items()}
    grouped: dict[str, tuple[list[str], set[str], int]] = {}
    for addr, (rank, name) in named.items():
        addrs, dmacs, best = grouped.setdefault(name, ([], set(), rank))
        addrs.append(addr)
        if addr in macs:
            dmacs.add(macs[addr])
        grouped[name] = (addrs, dmacs, min(best, rank))
    source = {CONFIG: "config", LEASE: "lease", PTR: "ptr"}
    devices = {name: Device(name, tuple(sorted(addrs)), tuple(sorted(dmacs)),
                            source[best - best % 2])
               for name, (addrs, dmacs, best) in grouped.items()}
    return DeviceMap(names, devices)


class DeviceNames:
    """Reads the configured sources; ``refresh()`` is blocking (run it in a thread)."""

    def __init__(self, clients: Mapping[str, Iterable[object]], leases: Iterable[str] = (),
                 neighbours: bool = False, reverse_dns: Endpoint | None = None,
                 read_neigh: Callable[[], list[tuple[str, str]]] = read_neighbours) -> None:
        self.clients = clients
        self.lease_paths = tuple(leases)
        self.neighbours = neighbours
        self.reverse_dns = reverse_dns
        self.read_neigh = read_neigh
        self.ptr_cache: dict[str, tuple[float, str | None]] = {}
        self.current = build_map(clients, (), {}, ())
        self._failing: set[str] = set()   # sources whose failure was logged (once each)

    def _once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._failing:
            self._failing.add(key)
            log.warning(msg, *args)

    def _ok(self, key: str) -> None:
        if key in self._failing:
            self._failing.discard(key)
            log.info("devices: %s readable again", key)

    def refresh(self, seen: Iterable[str] = (), reverse: bool = True) -> DeviceMap:
        """Re-read every source; ``seen``: addresses that asked, candidates for reverse DNS.

        ``reverse=False`` skips new PTR lookups (answers already remembered still count):
        the refresh at start-up, which must not wait on a slow router.
        """
        leases: list[Lease] = []
        for path in self.lease_paths:
            try:
                leases.extend(read_leases(path))
                self._ok(path)
            except OSError as exc:
                self._once(path, "devices: cannot read lease file %s: %s", path,
                           exc.strerror or exc)
        neigh = self.read_neigh() if self.neighbours else []
        pre = build_map(self.clients, leases, {}, neigh)
        ptr = self._reverse(pre, [*seen, *(a for a, _ in neigh)], reverse)
        self.current = build_map(self.clients, leases, ptr, neigh) if ptr else pre
        return self.current

    def _reverse(self, pre: DeviceMap, candidates: Iterable[str], ask: bool = True) -> dict[str, str]:
        """PTR names for addresses no other source names (cached; a bounded number of lookups
        and seconds per refresh)."""
        if self.reverse_dns is None:
            return {}
        now = time.monotonic()
        budget_end = now + PTR_BUDGET
        out: dict[str, str] = {}
        asked = 0
        for addr in dict.fromkeys(candidates):
            norm = norm_address(addr)
            if norm is None or norm in pre.names:
                continue
            hit = self.ptr_cache.get(norm)
            if hit is None or now - hit[0] > PTR_TTL:
                if not ask or asked >= PTR_PER_REFRESH or time.monotonic() > budget_end:
                    continue
                asked += 1
                if len(self.ptr_cache) >= MAX_PTR_CACHE:
                    self.ptr_cache.clear()
                hit = self.ptr_cache[norm] = (now, lookup_ptr(self.reverse_dns, norm))
            if hit[1] is not None:
                out[norm] = hit[1]
        return out


def devices_now(config: Any) -> DeviceMap:
    """One blocking read of every source ``config.devices`` names, for the CLI
    (``hushdns query --client NAME``); an empty map when there is no ``devices:``."""
    d = config.devices
    if not d.enabled:
        return build_map(config.clients, (), {}, ())
    return DeviceNames(config.clients, d.leases, d.neighbours, d.reverse_dns).refresh()

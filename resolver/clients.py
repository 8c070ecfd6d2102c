"""Who is asking: access decision, metrics label and group of a client address, cached per address.

Why cached: the same few dozen LAN devices send every query, so the network
matching (longest prefix over the configured clients and groups) runs once per
address, and the hot path does one dict lookup.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config, IPNetwork
from .lists.loader import Blocklists
from .stats import Stats

MAX_CACHED_ADDRESSES = 65_536


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Everything the pipeline needs to know about one client address."""

    allowed: bool
    label: str      # metrics label: the device name, else the address, else "other"
    name: str | None
    group: str
    block: int      # bit mask of the block lists that apply
    allow: int      # bit mask of the allow lists that apply
    snoop: bool = False   # in access.allow_snoop: RD=0 queries answered from the cache
    # The device's name (a clients: name, else leases/reverse DNS/neighbours: see
    # resolver/devices/), unbounded unlike ``label``; None when no source names it.
    device: str | None = None
    # What selects policy, as the reply memo's key: the group, whether the client may
    # ask at all, and whether it may snoop.  Two clients with one policy get the same answers.
    policy: str = ""
    # Names a household control allows for this client for a while (resolver/control/state.py).
    allow_names: frozenset[str] = frozenset()


class LabelBound:
    """At most ``limit`` distinct client label values; the rest are counted as "other".

    Lives across reloads so a label, once given out, keeps its series, until it has
    been idle for ``idle`` seconds (``release_idle``): then its slot and its series go,
    so that devices rotating IPv6 privacy addresses do not use up the bound for good.
    """

    def __init__(self, limit: int, idle: float = 0.0) -> None:
        self.limit = limit
        self.idle = idle      # metrics.client_idle; 0: never released
        self.seen: set[str] = set()
        # label -> (its query count when last looked at, when that count last changed)
        self._last: dict[str, tuple[int, float]] = {}

    def __call__(self, label: str) -> str:
        if label in self.seen:
            return label
        if len(self.seen) < self.limit:
            self.seen.add(label)
            return label
        return "other"

    def release_idle(self, stats: Stats, now: float, keep: frozenset[str],
                     table: ClientTable | None) -> list[str]:
        """Release the labels whose query count has not moved for ``idle`` seconds.

        A released label loses its slot, its series (queries, blocked, limited, bypass) and the
        cached ClientInfo of its addresses, so a returning address is labelled afresh.
        ``keep`` (configured client names and "other") is never released.  The count of
        released labels is ``stats.client_labels_released``.
        """
        if self.idle <= 0:
            return []
        totals: dict[str, int] = dict.fromkeys(self.seen, 0)
        for (client, _, _), n in list(stats.queries.items()):
            totals[client] = totals.get(client, 0) + n
        last = self._last
        gone = []
        for label, total in totals.items():
            if label in keep:
                continue
            prev = last.get(label)
            if prev is None or prev[0] != total:
                last[label] = (total, now)
            elif now - prev[1] >= self.idle:
                gone.append(label)
        if not gone:
            return []
        dead = set(gone)
        for label in gone:
            self.seen.discard(label)
            del last[label]
        for series in (stats.queries, stats.blocked, stats.limited, stats.bypass_lookups):
            for key in [k for k in series if k[0] in dead]:
                del series[key]
        if table is not None:
            # Addresses counted as "other" are looked up again too: there is room now.
            dead.add("other")
            cache = table.cache
            for address in [a for a, info in cache.items() if info.label in dead]:
                del cache[address]
        stats.client_labels_released += len(gone)
        return gone


def _longest(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             table: list[tuple[IPNetwork, str]]) -> str | None:
    best, best_len = None, -1
    for net, name in table:
        if net.version == ip.version and ip in net and net.prefixlen > best_len:
            best, best_len = name, net.prefixlen
    return best


class ClientTable:
    """Maps a client address to its ClientInfo for one configuration and list snapshot."""

    def __init__(self, config: Config, lists: Blocklists, labels: LabelBound,
                 devices: Mapping[str, str] | None = None, household: Any = None) -> None:
        self.allow_nets = config.access_allow
        self.snoop_nets = config.access_allow_snoop
        self.names = [(n, name) for name, nets in config.clients.items() for n in nets]
        self.groups = [(n, g.name) for g in config.groups.values() for n in g.clients]
        self.masks = {g.name: (lists.mask(g.lists), lists.mask(g.allow))
                      for g in config.groups.values()}
        self.labels = labels
        self.devices: Mapping[str, str] = devices or {}   # address -> device name
        self.cache: dict[str, ClientInfo] = {}
        # Pauses, schedules, temporary allows (resolver.control.state.HouseholdState.adjust).
        self.household = household
        self.list_mask: Callable[[tuple[str, ...]], int] = lists.mask

    def set_devices(self, devices: Mapping[str, str]) -> None:
        """Swap in a refreshed address -> device name mapping (on the event loop's thread).

        The per-address cache is emptied in place (the fast path holds the same
        dict), so the next query of each address is built once more with the new name.
        """
        if devices != self.devices:
            self.devices = devices
            self.cache.clear()

    def lookup(self, address: str) -> ClientInfo:
        info = self.cache.get(address)
        if info is None:
            info = self._build(address)
            if len(self.cache) >= MAX_CACHED_ADDRESSES:
                self.cache.clear()
            self.cache[address] = info
        return info

    def _build(self, address: str) -> ClientInfo:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return ClientInfo(False, self.labels("other"), None, "default", 0, 0, False, None,
                              "!default")
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        snoop = any(ip.version == n.version and ip in n for n in self.snoop_nets)
        allowed = snoop or any(ip.version == n.version and ip in n for n in self.allow_nets)
        name = _longest(ip, self.names)
        device = name or self.devices.get(str(ip))
        group = _longest(ip, self.groups) or "default"
        block, allow = self.masks.get(group, (0, 0))
        policy = ("" if allowed else "!") + ("~" if snoop else "") + group
        info = ClientInfo(allowed, self.labels(device or str(ip)), name, group, block, allow, snoop,
                          device, policy)
        if self.household is not None and allowed:
            info = self.household.adjust(info, str(ip), self.list_mask)
        return info


class UnknownClient(ValueError):
    """``hushdns query --client X``: X is not an IP address, a ``clients:`` name or a device name."""


def client_address(config: Config, client: str,
                   devices: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """An address that stands for ``client``: the address itself, or, for a ``clients:`` name,
    an address of its networks that the name really matches (longest prefix: a more specific
    name may own part of a network), or, for a device name from ``devices``
    (name -> its addresses), the first of its addresses."""
    try:
        return str(ipaddress.ip_address(client.split("%")[0]))
    except ValueError:
        pass
    nets = config.clients.get(client)
    if not nets and devices and devices.get(client):
        return devices[client][0]
    if not nets:
        known = ", ".join(sorted(config.clients)) or "none configured"
        extra = f"; devices: {', '.join(sorted(devices))}" if devices else ""
        raise UnknownClient(f"--client {client!r}: not an address or a known client "
                            f"(clients: {known}{extra})")
    table = [(n, name) for name, ns in config.clients.items() for n in ns]
    for net in nets:
        for ip in itertools.islice(itertools.chain([net.network_address], net.hosts()), 256):
            if _longest(ip, table) == client:
                return str(ip)
    return str(nets[0].network_address)

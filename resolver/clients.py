"""Who is asking: access decision, metrics label and group of a client address, cached per address.

Why cached: the same few dozen LAN devices send every query, so the network
matching (longest prefix over the configured clients and groups) runs once per
address, and the hot path does one dict lookup.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config, IPNetwork
from .lists.loader import Blocklists

MAX_CACHED_ADDRESSES = 65_536


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Everything the pipeline needs to know about one client address."""

    allowed: bool
    label: str      # metrics label: configured name, else the address, else "other"
    name: str | None
    group: str
    block: int      # bit mask of the block lists that apply
    allow: int      # bit mask of the allow lists that apply
    # What selects policy, as the reply memo's key: the group, and whether the client
    # may ask at all.  Two clients with the same policy get the same answers.
    policy: str = ""
    # Names a household control allows for this client for a while (resolver/control/state.py).
    allow_names: frozenset[str] = frozenset()


class LabelBound:
    """At most ``limit`` distinct client label values; the rest are counted as "other".

    Lives across reloads so a label, once given out, keeps its series.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, label: str) -> str:
        if label in self.seen:
            return label
        if len(self.seen) < self.limit:
            self.seen.add(label)
            return label
        return "other"


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
                 household: Any = None) -> None:
        self.allow_nets = config.access_allow
        self.names = [(n, name) for name, nets in config.clients.items() for n in nets]
        self.groups = [(n, g.name) for g in config.groups.values() for n in g.clients]
        self.masks = {g.name: (lists.mask(g.lists), lists.mask(g.allow))
                      for g in config.groups.values()}
        self.labels = labels
        self.cache: dict[str, ClientInfo] = {}
        # Pauses, schedules, temporary allows (resolver.control.state.HouseholdState.adjust).
        self.household = household
        self.list_mask: Callable[[tuple[str, ...]], int] = lists.mask

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
            return ClientInfo(False, self.labels("other"), None, "default", 0, 0, "!default")
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        allowed = any(ip.version == n.version and ip in n for n in self.allow_nets)
        name = _longest(ip, self.names)
        group = _longest(ip, self.groups) or "default"
        block, allow = self.masks.get(group, (0, 0))
        policy = group if allowed else "!" + group
        info = ClientInfo(allowed, self.labels(name or str(ip)), name, group, block, allow, policy)
        if self.household is not None and allowed:
            info = self.household.adjust(info, str(ip), self.list_mask)
        return info


class UnknownClient(ValueError):
    """``hushdns query --client X``: X is neither an IP address nor a name in ``clients:``."""


def client_address(config: Config, client: str) -> str:
    """An address that stands for ``client``: the address itself, or, for a ``clients:`` name,
    an address of its networks that the name really matches (longest prefix: a more specific
    name may own part of a network)."""
    try:
        return str(ipaddress.ip_address(client.split("%")[0]))
    except ValueError:
        pass
    nets = config.clients.get(client)
    if not nets:
        known = ", ".join(sorted(config.clients)) or "none configured"
        raise UnknownClient(f"--client {client!r}: not an address or a known client "
                            f"(clients: {known})")
    table = [(n, name) for name, ns in config.clients.items() for n in ns]
    for net in nets:
        for ip in itertools.islice(itertools.chain([net.network_address], net.hosts()), 256):
            if _longest(ip, table) == client:
                return str(ip)
    return str(nets[0].network_address)

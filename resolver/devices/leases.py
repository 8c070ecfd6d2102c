"""DHCP lease files: dnsmasq, ISC dhcpd, Kea (CSV) and odhcpd, told apart by their content.

Why by content: routers put these files in many places under many names; what is
in them is unambiguous (an ISC file has ``lease X {`` blocks, a Kea file a CSV
header starting ``address,``, an odhcpd state file ``# iface ...`` lines).
Every parser returns ``Lease`` rows; a line it does not understand is skipped,
never an error: a half-written file must not stop the others.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from .names import norm_address, norm_hostname, norm_mac


@dataclass(frozen=True)
class Lease:
    address: str
    name: str | None
    mac: str | None = None


def parse_dnsmasq(text: str) -> list[Lease]:
    """``expiry mac ip hostname client-id`` (IPv4) and, after a ``duid`` line,
    ``expiry iaid ip hostname duid`` (IPv6, where the second field is not a MAC)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 4 or f[0] == "duid":
            continue
        addr = norm_address(f[2])
        if addr is None:
            continue
        out.append(Lease(addr, norm_hostname(f[3]), norm_mac(f[1])))
    return out


_ISC_BLOCK = re.compile(r"^lease\s+(\S+)\s*\{(.*?)^\}", re.M | re.S)
_ISC_STATE = re.compile(r"^\s*binding\s+state\s+(\w+)\s*;", re.M)
_ISC_MAC = re.compile(r"^\s*hardware\s+ethernet\s+([0-9A-Fa-f:]+)\s*;", re.M)
_ISC_NAME = re.compile(r'^\s*client-hostname\s+"([^"]*)"\s*;', re.M)


def parse_isc(text: str) -> list[Lease]:
    """ISC dhcpd's ``dhcpd.leases``: the file is a journal, the last block of an address
    wins; only ``binding state active`` leases (not free, expired, released, backup)."""
    latest: dict[str, Lease | None] = {}
    for m in _ISC_BLOCK.finditer(text):
        addr = norm_address(m.group(1))
        if addr is None:
            continue
        body = m.group(2)
        state = _ISC_STATE.search(body)   # anchored: 'next binding state' does not match
        if state is not None and state.group(1) != "active":
            latest[addr] = None
            continue
        mac = _ISC_MAC.search(body)
        name = _ISC_NAME.search(body)
        latest[addr] = Lease(addr, norm_hostname(name.group(1) if name else None),
                             norm_mac(mac.group(1) if mac else None))
    return [lease for lease in latest.values() if lease is not None]


def parse_kea(text: str) -> list[Lease]:
    """Kea's memfile (``kea-leases4.csv`` / ``kea-leases6.csv``): a CSV with a header;
    rows are appended on every change, so the last row of an address wins; state 0
    is an active lease (1 declined, 2 expired-reclaimed)."""
    latest: dict[str, Lease | None] = {}
    for row in csv.DictReader(io.StringIO(text)):
        addr = norm_address(row.get("address") or "")
        if addr is None:
            continue
        if (row.get("state") or "0").strip() != "0":
            latest[addr] = None
            continue
        latest[addr] = Lease(addr, norm_hostname(row.get("hostname")), norm_mac(row.get("hwaddr")))
    return [lease for lease in latest.values() if lease is not None]


def parse_odhcpd(text: str) -> list[Lease]:
    """odhcpd (OpenWrt): its lease state file, lines
    ``# iface duid-or-mac iaid-or-'ipv4' hostname valid assigned length addr/len ...``,
    or its hosts file (``/tmp/hosts/odhcpd``), lines ``addr name.domain name``."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 9 and f[0] == "#":
            name = norm_hostname(f[4])
            mac = norm_mac(f[2])
            out.extend(Lease(a, name, mac) for a in map(norm_address, f[8:]) if a is not None)
        elif len(f) >= 2 and not line.lstrip().startswith("#"):
            addr = norm_address(f[0])
            if addr is not None:
                out.append(Lease(addr, norm_hostname(f[-1]), None))
    return out


def detect(text: str) -> str:
    """Which format ``text`` is in: 'isc', 'kea', 'odhcpd' or 'dnsmasq'."""
    head = text.lstrip()[:4096]
    if re.search(r"^lease\s+\S+\s*\{", head, re.M) or head.startswith(("# The format of this file",
                                                                        "authoring-byte-order")):
        return "isc"
    if head.startswith("address,"):
        return "kea"
    first = next((ln.split() for ln in head.splitlines() if ln.strip()), [])
    if first[:1] == ["#"] or (len(first) in (2, 3) and norm_address(first[0]) is not None):
        return "odhcpd"
    return "dnsmasq"


PARSERS = {"dnsmasq": parse_dnsmasq, "isc": parse_isc, "kea": parse_kea, "odhcpd": parse_odhcpd}


def parse_leases(text: str) -> list[Lease]:
    return PARSERS[detect(text)](text)


def read_leases(path: str | Path) -> list[Lease]:
    """The leases in one file (OSError if it cannot be read: the caller logs it once)."""
    return parse_leases(Path(path).read_text(encoding="utf-8", errors="replace"))

"""Addresses, MACs and host names in one spelling, whatever file or table they came from."""

from __future__ import annotations

import ipaddress
import re

_MAC = re.compile(r"^[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def norm_address(text: str) -> str | None:
    """'192.168.1.5', 'fe80::1%eth0', '::ffff:192.168.1.5', '2001:db8::5/128' -> canonical text."""
    t = text.strip().split("%")[0].split("/")[0]
    try:
        ip = ipaddress.ip_address(t)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def norm_mac(text: str | None) -> str | None:
    """'AA:BB:CC:0D:0E:0F' or 'aa-bb-..' -> 'aa:bb:cc:0d:0e:0f'; None for anything else (or all zeros)."""
    if not text:
        return None
    t = text.strip().lower().replace("-", ":")
    if not _MAC.match(t):
        return None
    mac = ":".join(p.zfill(2) for p in t.split(":"))
    return None if mac == "00:00:00:00:00:00" else mac


def norm_hostname(text: str | None) -> str | None:
    """A lease's or PTR's host name as a device name: its first label, lower case.

    'Kids-Tablet.lan.' -> 'kids-tablet'; '*', '-', '' and anything that is not a
    host label -> None (dnsmasq writes '*' and odhcpd '-' for "no name").
    """
    if not text:
        return None
    first = text.strip().strip('"').rstrip(".").split(".")[0].lower()
    return first if _LABEL.match(first) else None

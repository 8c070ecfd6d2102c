"""The kernel neighbour table: which MAC each LAN address belongs to right now.

Why: a phone has one IPv4 lease but several IPv6 addresses (privacy addresses
rotate daily); they share the phone's MAC, so the MAC ties them to one device.
Read with ``ip -j neigh`` (IPv4 and IPv6) when ``ip`` is installed, else from
/proc/net/arp (IPv4 only). The parsers take text, so tests feed them snapshots
and the live source goes through the same code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .names import norm_address, norm_mac

# Entries whose MAC is not (or no longer) known.
_UNUSABLE = {"FAILED", "INCOMPLETE", "NOARP"}


def parse_ip_json(text: str) -> list[tuple[str, str]]:
    """``ip -j neigh`` output -> [(address, mac)]."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        return []
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        state = row.get("state") or []
        if isinstance(state, str):
            state = [state]
        if any(s in _UNUSABLE for s in state):
            continue
        addr = norm_address(str(row.get("dst", "")))
        mac = norm_mac(row.get("lladdr"))
        if addr is not None and mac is not None:
            out.append((addr, mac))
    return out


def parse_proc_arp(text: str) -> list[tuple[str, str]]:
    """/proc/net/arp (``IP address  HW type  Flags  HW address  Mask  Device``) -> [(address, mac)]."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or f[2] == "0x0":     # flags 0: an incomplete entry
            continue
        addr, mac = norm_address(f[0]), norm_mac(f[3])
        if addr is not None and mac is not None:
            out.append((addr, mac))
    return out


def read_neighbours(proc_arp: str = "/proc/net/arp") -> list[tuple[str, str]]:
    """The live table: ``ip -j neigh`` if it runs, else /proc/net/arp; [] when neither is there."""
    ip = shutil.which("ip")
    if ip is not None:
        try:
            proc = subprocess.run([ip, "-j", "neigh", "show"], capture_output=True, text=True,
                                  timeout=5, check=False)
            if proc.returncode == 0 and proc.stdout.strip().startswith("["):
                return parse_ip_json(proc.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return parse_proc_arp(Path(proc_arp).read_text())
    except OSError:
        return []

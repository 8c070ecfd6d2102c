"""Bypass answers: keep the household's devices on this resolver, and count who tries to leave.

Why: a browser or phone that switches to its own encrypted resolver takes itself
out of every list, pause and schedule here.  Three standard signals let a network
say "use the local resolver" (each switchable under ``bypass:``):

- ``use-application-dns.net`` NXDOMAIN: Firefox's canary; Firefox then keeps its
  DNS-over-HTTPS off (unless the user turned it on explicitly).
- ``_dns.resolver.arpa`` NODATA: no DDR designated resolver (RFC 9462), so clients
  do not upgrade to an encrypted resolver hushdns does not control.
- ``mask.icloud.com`` / ``mask-h2.icloud.com`` NXDOMAIN: iCloud Private Relay off
  for the network (Apple's documented switch for networks that filter).

And, opt-in (``doh_resolvers: true``), NXDOMAIN for the public DoH/DoT resolver names
of ``blocklists/doh-resolvers.txt``.  Lookups of all of these are counted per client
(``hushdns_bypass_lookups_total{client,kind}``) whether answered here or not: a
device that keeps asking for ``dns.google`` is a device going around the lists.

Memo-safe: the answers given here carry a ``Keep`` that counts again when the memo
repeats them; a bypass name answered by a later stage (forwarded, cached) is never
remembered (``on_query`` clears ``Request.remember``), so every lookup passes here
and is counted.
"""

from __future__ import annotations

from pathlib import Path

from .. import bundled
from ..household_config import Bypass as BypassConfig
from ..memo import Keep
from ..names import Zones
from ..reply import Reply
from ..stats import Stats
from ..wire import NOERROR, NXDOMAIN, T_SOA, Request, encode_name, opt_record, reply_for, rr

DOH_FILE = "doh-resolvers.txt"
CANARY = "use-application-dns.net"
DDR = "_dns.resolver.arpa"
RELAY = ("mask.icloud.com", "mask-h2.icloud.com")
_SOA_BODY = encode_name("ns.hushdns.invalid") + encode_name("bypass.hushdns.invalid") + b"".join(
    v.to_bytes(4, "big") for v in (1, 3600, 600, 86400, 300))


def doh_names(path: Path | None = None) -> frozenset[str]:
    """The host names of the bundled DoH/DoT resolver list (rule lines: the first word)."""
    p = path or bundled.lists_dir() / DOH_FILE
    out = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            out.add(word.lower())
    return frozenset(out)


class Counted(Keep):
    """A bypass answer: valid as long as the pipeline; counts the lookup again when repeated."""

    __slots__ = ("stats", "kind")

    def __init__(self, stats: Stats, kind: str) -> None:
        self.stats, self.kind = stats, kind

    def replay(self, label: str) -> None:
        count(self.stats, label, self.kind)


def count(stats: Stats, label: str, kind: str) -> None:
    key = (label, kind)
    d = stats.bypass_lookups
    d[key] = d.get(key, 0) + 1


class Bypass:
    per_query = False

    def __init__(self, cfg: BypassConfig, stats: Stats, udp_size: int = 1232,
                 doh: frozenset[str] | None = None) -> None:
        self.stats = stats
        # name -> (kind, rcode, whether answered here)
        self.exact: dict[str, tuple[str, int, bool]] = {
            CANARY: ("firefox_canary", NXDOMAIN, cfg.firefox_canary),
            DDR: ("ddr", NOERROR, cfg.ddr),
            **{n: ("private_relay", NXDOMAIN, cfg.private_relay) for n in RELAY},
        }
        self.doh = Zones(doh if doh is not None else doh_names())
        self.every = Zones(set(self.exact) | set(self.doh))   # the one check most names get
        self.block_doh = cfg.doh_resolvers
        self.keeps = {kind: Counted(stats, kind) for kind in
                      ("firefox_canary", "ddr", "private_relay", "doh_resolver")}
        self.opt = {do: opt_record(udp_size, do) for do in (False, True)}
        self.soa = {zone: rr(T_SOA, 300, _SOA_BODY, owner=encode_name(zone))
                    for zone in (CANARY, "resolver.arpa", "icloud.com")}

    def on_query(self, q: Request) -> Reply | None:
        name = q.qname
        if not self.every.may_hold(name):   # almost every query ends here, at one lookup
            return None
        hit = self.exact.get(name)
        if hit is not None:
            kind, rcode, answer = hit
            count(self.stats, q.info.label, kind)
            if answer:
                zone = CANARY if kind == "firefox_canary" else \
                    "resolver.arpa" if kind == "ddr" else "icloud.com"
                return self._reply(q, kind, rcode, zone)
            q.remember = False   # answered below: not remembered, so every lookup is counted
            return None
        doh = self.doh.find(name)
        if doh is not None:
            count(self.stats, q.info.label, "doh_resolver")
            if self.block_doh:
                if doh not in self.soa:
                    self.soa[doh] = rr(T_SOA, 300, _SOA_BODY, owner=encode_name(doh))
                return self._reply(q, "doh_resolver", NXDOMAIN, doh)
            q.remember = False
        return None

    def _reply(self, q: Request, kind: str, rcode: int, zone: str) -> Reply:
        wire = reply_for(q.data, q.qend, q.flags, rcode, self.soa[zone], 0, 1,
                         self.opt[q.do] if q.edns else None)
        what = "NXDOMAIN" if rcode == NXDOMAIN else "NODATA"
        return Reply("blocked", wire, note=f"bypass {kind}: {what} (bypass.{_key(kind)}: true)",
                     keep=self.keeps[kind])


def _key(kind: str) -> str:
    return "doh_resolvers" if kind == "doh_resolver" else kind

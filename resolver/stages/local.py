"""Local names: ``local_records``, ``hosts_files`` and ``local_zones``, answered authoritatively.

Why a stage of its own, before blocking: the household's own names (the NAS, the
printer) are answered here with AA=1, as unbound's ``local-data`` does, and never
forwarded, so no upstream learns them and a list cannot block them.  A local name
asked for a type it does not have gets NODATA with a synthetic SOA (negative
caching, RFC 2308); an A/AAAA record also answers the PTR of its address; a name
below a ``local_zones`` zone that is not local is NXDOMAIN; anything else passes.

Every answer is built when the pipeline is built (bytes per name and type), so a
local answer costs a dict lookup and the header copy.  Memo-safe: the answers
depend on the question only, and live as long as the pipeline (a base ``Keep``).
"""

from __future__ import annotations

import ipaddress

from ..household_config import LocalNames
from ..memo import Keep
from ..names import in_zones, suffixes
from ..reply import Reply
from ..wire import (
    NOERROR,
    NXDOMAIN,
    T_A,
    T_AAAA,
    T_CNAME,
    T_MX,
    T_PTR,
    T_SOA,
    T_SRV,
    T_TXT,
    Request,
    encode_name,
    opt_record,
    reply_for,
    rr,
)

TYPES = {"A": T_A, "AAAA": T_AAAA, "CNAME": T_CNAME, "MX": T_MX, "PTR": T_PTR, "SRV": T_SRV,
         "TXT": T_TXT}
AA = 0x0400
MAX_ANSWERS = 4096
_MNAME = encode_name("localhost")
_RNAME = encode_name("nobody.invalid")
_ALWAYS = Keep()   # valid as long as the pipeline (and so its memo)


def rdata(rtype: str, text: str) -> bytes:
    """Wire rdata of a record checked by ``household_config.split_record``."""
    if rtype in ("A", "AAAA"):
        return ipaddress.ip_address(text).packed
    if rtype in ("CNAME", "PTR"):
        return encode_name(text)
    f = text.split()
    if rtype == "MX":
        return int(f[0]).to_bytes(2, "big") + encode_name(f[1])
    if rtype == "SRV":
        return b"".join(int(x).to_bytes(2, "big") for x in f[:3]) + encode_name(f[3])
    raw = text[1:-1] if len(text) > 1 and text[0] == text[-1] == '"' else text
    data = raw.encode()
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


class Local:
    per_query = False

    def __init__(self, cfg: LocalNames, udp_size: int = 1232) -> None:
        self.ttl = cfg.ttl
        self.zones = set(cfg.zones)
        # name -> type -> [(rdata, where)]
        self.data: dict[str, dict[int, list[tuple[bytes, str]]]] = {}
        for rec in cfg.records:
            self._add(rec.name, TYPES[rec.rtype], rdata(rec.rtype, rec.rdata), rec.where)
        written = {n for n, types in self.data.items() if T_PTR in types}
        for rec in cfg.records:   # PTR from A/AAAA, unless written out
            if rec.rtype in ("A", "AAAA"):
                rev = ipaddress.ip_address(rec.rdata).reverse_pointer
                ptr = encode_name(rec.name)
                have = self.data.get(rev, {}).get(T_PTR, [])
                if rev not in written and all(r != ptr for r, _ in have):
                    self._add(rev, T_PTR, ptr, rec.where)
        # Names above local names inside a local zone exist (empty non-terminals): NODATA.
        self.between = {p for name in self.data for p in suffixes(name)
                        if p not in self.data and in_zones(p, self.zones)}
        self.opt = {do: opt_record(udp_size, do) for do in (False, True)}
        self.answers: dict[tuple[str, int], tuple[int, bytes, int, int, str]] = {}

    def _add(self, name: str, qtype: int, data: bytes, where: str) -> None:
        self.data.setdefault(name, {}).setdefault(qtype, []).append((data, where))

    def on_query(self, q: Request) -> Reply | None:
        name = q.qname
        key = (name, q.qtype)
        a = self.answers.get(key)
        if a is None:
            if name not in self.data and name not in self.between and \
                    (not self.zones or in_zones(name, self.zones) is None):
                return None
            a = self._answer(name, q.qtype)
            if len(self.answers) < MAX_ANSWERS:   # random names in a local zone: bounded
                self.answers[key] = a
        rcode, body, an, ns, note = a
        wire = reply_for(q.data, q.qend, q.flags, rcode, body, an, ns,
                         self.opt[q.do] if q.edns else None)
        wire = wire[:2] + (wire[2] | AA >> 8).to_bytes(1, "big") + wire[3:]
        return Reply("local", wire, note=note, keep=_ALWAYS)

    def _answer(self, name: str, qtype: int) -> tuple[int, bytes, int, int, str]:
        types = self.data.get(name)
        if types is None:
            zone = in_zones(name, self.zones) or name
            if name in self.between:
                return NOERROR, self._soa(zone), 0, 1, f"local NODATA (a name above local names in zone {zone})"
            return NXDOMAIN, self._soa(zone), 0, 1, f"local NXDOMAIN (not a local name in zone {zone})"
        cname = types.get(T_CNAME)
        if cname and qtype != T_CNAME:
            body = rr(T_CNAME, self.ttl, cname[0][0])
            an = 1
            target = self._target(cname[0][0])
            for data, _ in self.data.get(target, {}).get(qtype, []):
                body += rr(qtype, self.ttl, data, owner=encode_name(target))
                an += 1
            return NOERROR, body, an, 0, f"local CNAME {target} ({cname[0][1]}), authoritative"
        recs = types.get(qtype)
        if recs:
            body = b"".join(rr(qtype, self.ttl, d) for d, _ in recs)
            where = ", ".join(sorted({w for _, w in recs}))
            return NOERROR, body, len(recs), 0, f"local record ({where}), authoritative"
        zone = in_zones(name, self.zones) or name
        have = ", ".join(sorted(_type_name(t) for t in types))
        return NOERROR, self._soa(zone), 0, 1, f"local NODATA (the local name has {have} only)"

    @staticmethod
    def _target(wire_name: bytes) -> str:
        labels, i = [], 0
        while wire_name[i]:
            n = wire_name[i]
            labels.append(wire_name[i + 1:i + 1 + n].decode())
            i += n + 1
        return ".".join(labels).lower()

    def _soa(self, zone: str) -> bytes:
        t = self.ttl
        body = _MNAME + _RNAME + b"".join(v.to_bytes(4, "big") for v in (1, 3600, 600, 86400, t))
        return rr(T_SOA, t, body, owner=encode_name(zone))


def _type_name(t: int) -> str:
    return next(k for k, v in TYPES.items() if v == t)


"""YAML configuration -> frozen dataclasses.  ALL validation lives here.

Why strict: people keep this file in git and other tools write it, so a typo
must fail loudly with the key path and the line, never be ignored.  Errors are
collected, not stopped at the first, so ``hushdns check`` shows them all.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import bundled, config_limits, config_load
from .encrypted_endpoints import ListenURL, is_encrypted_url, parse_listen_url, parse_upstream_url
from .household_config import HOUSEHOLD_KEYS, Household, Schedule, read_household, read_schedules

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]

DEFAULT_ALLOW = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10",
)
# Used when neither the config nor /etc/resolv.conf names a usable upstream.
FALLBACK_UPSTREAMS = ("9.9.9.9:53", "1.1.1.1:53", "[2620:fe::fe]:53", "[2606:4700:4700::1111]:53")
BLOCK_MODES = ("nxdomain", "refused", "null", "nodata")


class ConfigError(Exception):
    """One or more problems, each naming the key path and the file line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- the model -----------------------------------------------------------------


@dataclass(frozen=True)
class ListSpec:
    """One block or allow list: where it comes from and how it is treated."""

    name: str
    source: str            # absolute path, or http(s) URL
    kind: str              # "file" | "dir" | "url"
    track_domains: bool = False
    refresh: float = 86400.0
    allow: bool = False
    line: int = 0          # config line, for messages
    max_size: int = 64 * 1024 * 1024   # bytes a local file (or directory) may hold
    allow_empty: bool = False          # else an emptied file keeps the last good version


@dataclass(frozen=True)
class Group:
    """Which lists apply to which clients."""

    name: str
    clients: tuple[IPNetwork, ...]
    lists: tuple[str, ...]
    allow: tuple[str, ...]
    schedules: tuple[Schedule, ...] = ()    # weekly windows that switch lists (household_config)


@dataclass(frozen=True)
class Blocking:
    mode: str = "nxdomain"
    sinkhole: tuple[str, ...] = ()          # custom sinkhole addresses
    ttl: int = 300
    lists: dict[str, ListSpec] = field(default_factory=dict)
    allow: dict[str, ListSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Cache:
    max_entries: int = 100_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_ttl: int = 3_600
    servfail_ttl: int = 5
    serve_stale: float = 86_400.0   # seconds past expiry an answer may be served when upstreams fail


@dataclass(frozen=True)
class Metrics:
    listen: Endpoint | None = ("127.0.0.1", 9153)
    max_clients: int = 512
    client_idle: float = 86_400.0   # seconds without a query before a label is released


@dataclass(frozen=True)
class ServerOptions:
    udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    tcp_max_pipelined: int = 32
    tcp_max_per_client: int = 32     # connections one client address may hold
    upstream_timeout: float = 1.0
    upstream_total_timeout: float = 4.0
    max_inflight: int = 4096
    max_waiters: int = 256
    minimal_responses: bool = True
    reply_memo: bool = True
    # Sources that put a PROXY protocol v2 header before each query (dnsdist, HAProxy):
    # only they may, and from them it is required (resolver/proxy_protocol.py).
    proxy_protocol_from: tuple[IPNetwork, ...] = ()
    # DoT/DoH listeners (listen: tls://..., https://...): PEM paths, reloaded on SIGHUP.
    tls_certificate: str | None = None
    tls_key: str | None = None
    tls_handshake_timeout: float = 5.0
    # Persistent DoT/DoH upstream connections close after this long without a query.
    upstream_idle_timeout: float = 30.0


@dataclass(frozen=True)
class RateLimit:
    qps: float = 0.0        # 0 = off
    burst: float = 0.0
    action: str = "drop"    # drop | refused | tc


@dataclass(frozen=True)
class RebindProtection:
    """Strip private/loopback addresses from answers for public names (off by default).

    ``allow_zones`` may hold private addresses (a LAN's own zones); forward
    zones and ``localhost`` are always allowed.
    """

    enabled: bool = False
    allow_zones: tuple[str, ...] = ()


QUERY_LOG_PRIVACY = ("full", "blocked-only", "no-addresses", "off")


@dataclass(frozen=True)
class QueryLog:
    """``query_log:``: the SQLite log of answered queries (resolver/querylog)."""

    enabled: bool = True
    path: str = ""               # the config sets <state_dir>/querylog.sqlite
    retention: float = 7 * 86_400.0
    max_size: int = 256 * 1024 * 1024
    privacy: str = "full"        # full | blocked-only | no-addresses | off

    @property
    def on(self) -> bool:
        return self.enabled and self.privacy != "off"


@dataclass(frozen=True)
class Dnstap:
    """Where dnstap messages go (resolver/dnstap/); ``socket`` or ``tcp``, never both."""

    socket: str | None = None          # a unix socket path (fstrm_capture -u, a collector)
    tcp: Endpoint | None = None        # or a TCP collector
    identity: str = ""
    queries: bool = True               # CLIENT_QUERY messages
    responses: bool = True             # CLIENT_RESPONSE messages
    queue: int = 10_000                # messages waiting for the writer; beyond: dropped, counted


@dataclass(frozen=True)
class Devices:
    """Where device names come from besides ``clients:`` (resolver/devices/).

    ``enabled`` is whether the config has a ``devices:`` section at all: without
    one nothing is read in the background, as before devices existed.
    """

    enabled: bool = False
    leases: tuple[str, ...] = ()
    neighbours: bool = True
    reverse_dns: Endpoint | None = None
    refresh: float = 60.0


@dataclass(frozen=True)
class Config:
    path: str
    listen: tuple[Endpoint, ...]
    upstreams: tuple[Endpoint, ...]
    forward_zones: dict[str, tuple[Endpoint, ...]]
    access_allow: tuple[IPNetwork, ...]
    blocking: Blocking
    clients: dict[str, tuple[IPNetwork, ...]]
    groups: dict[str, Group]
    cache: Cache
    metrics: Metrics
    server: ServerOptions
    rate_limit: RateLimit
    state_dir: str
    log_level: str = "info"
    log_queries: bool = False
    workers: int = 1
    rebind_protection: RebindProtection = field(default_factory=RebindProtection)
    # Control API, time zone, local names, bypass answers (resolver/household_config.py).
    household: Household = field(default_factory=Household)
    query_log: QueryLog = field(default_factory=QueryLog)
    # DoT (tls://) and DoH (https://.../path) listeners; ``listen`` keeps the plain UDP+TCP ones.
    listen_encrypted: tuple[ListenURL, ...] = ()
    devices: Devices = field(default_factory=Devices)
    # Not errors, but worth saying (check prints them, serve logs them): e.g. an empty file.
    warnings: tuple[str, ...] = ()
    # Clients whose RD=0 queries are answered (from the cache only); the rest get REFUSED.
    access_allow_snoop: tuple[IPNetwork, ...] = ()
    dnstap: Dnstap | None = None       # None: off

    def all_lists(self) -> list[ListSpec]:
        return [*self.blocking.lists.values(), *self.blocking.allow.values()]


# --- YAML with line numbers ------------------------------------------------------------


class _Doc:
    """Plain Python values plus the line of every key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self.problem_lines: list[int] = []   # line of each problem (0: none), for sorting
        self._loader = yaml.SafeLoader("")

    def err(self, path: str, msg: str) -> None:
        line = self.lines.get(path)
        if line is None:
            # Fall back to the nearest parent that has a line.
            p = path
            while line is None and p:
                p = p.rsplit(".", 1)[0] if "." in p else (p.split("[")[0] if "[" in p else "")
                line = self.lines.get(p)
        where = f" ({self.filename}:{line})" if line else f" ({self.filename})"
        self.problems.append(f"{path or '<top>'}: {msg}{where}")
        self.problem_lines.append(line or 0)

    def sorted_problems(self) -> list[str]:
        """In file order, the way an editor walks them (stable for problems on one line)."""
        order = sorted(range(len(self.problems)), key=lambda i: self.problem_lines[i])
        return [self.problems[i] for i in order]

    def convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                key = knode.value if isinstance(knode, yaml.ScalarNode) else None
                if not isinstance(key, str) or key == "":
                    self.lines[path] = knode.start_mark.line + 1
                    self.err(path, "keys must be plain strings")
                    continue
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.lines[sub] = knode.start_mark.line + 1
                    self.err(sub, "duplicate key")
                    continue
                out[key] = self.convert(vnode, sub)
                self.lines[sub] = knode.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, TypeError) as exc:
            # e.g. !!python/object (not in the safe schema) or an integer of 5000 digits.
            problem = getattr(exc, "problem", None) or str(exc)
            self.err(path, f"cannot read this value: {_short(problem)}")
            return None


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- field readers -----------------------------------------------------------------------


_MISSING = object()


class _Reader:
    def __init__(self, doc: _Doc, base: Path) -> None:
        self.doc = doc
        self.base = base
        self.declared: set[str] = set()

    def section(self, data: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.doc.err(path, f"must be a mapping, not {_tname(data)}")
            return {}
        for key in data:
            if key not in allowed:
                sub = f"{path}.{key}" if path else key
                self.doc.err(sub, f"unknown key (expected one of: {', '.join(allowed)})")
        return data

    def typed(self, data: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...],
              default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
        value = data.get(key, _MISSING)
        sub = f"{path}.{key}" if path else key
        if value is _MISSING or value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.doc.err(sub, f"must be {_kname(kinds)}, not a boolean")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                self.doc.err(sub, "is too large a number")
                return default
        if not isinstance(value, kinds):
            self.doc.err(sub, f"must be {_kname(kinds)}, not {_tname(value)}")
            return default
        out_of_range = config_limits.check_number(sub, value)
        if out_of_range:
            self.doc.err(sub, out_of_range)
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.doc.err(sub, problem)
                return default
        return value

    def str_list(self, data: Any, path: str) -> list[str]:
        if data is None:
            return []
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list):
            self.doc.err(path, f"must be a list of strings, not {_tname(data)}")
            return []
        out = []
        for i, item in enumerate(data):
            if not isinstance(item, str):
                self.doc.err(f"{path}[{i}]", f"must be a string, not {_tname(item)}")
                continue
            out.append(item)
        return out

    def endpoints(self, data: Any, path: str, default_port: int,
                  encrypted: bool = False) -> tuple[Endpoint, ...]:
        """Plain ``IP[:port]`` addresses; with ``encrypted``, ``tls://`` and ``https://`` upstreams too."""
        out: list[Endpoint] = []
        raw = data if isinstance(data, list) else [data]
        if data is not None and not isinstance(data, list | str):
            self.doc.err(path, f"must be a list of addresses, not {_tname(data)}")
            return ()
        for i, item in enumerate(raw):
            sub = f"{path}[{i}]" if isinstance(data, list) else path
            if not isinstance(item, str):
                self.doc.err(sub, f"must be an address string like '192.0.2.1:53', not {_tname(item)}")
                continue
            try:
                if encrypted and is_encrypted_url(item):
                    out.extend(parse_upstream_url(item, str(self.base)))
                else:
                    out.append(parse_endpoint(item, default_port))
            except ValueError as exc:
                self.doc.err(sub, str(exc))
        return tuple(out)

    def listen(self, data: Any) -> tuple[tuple[Endpoint, ...], tuple[ListenURL, ...]]:
        """``listen``: plain addresses (UDP+TCP) and ``tls://``/``https://`` listeners, apart."""
        raw = data if isinstance(data, list) else [data]
        if not isinstance(data, list | str):
            return self.endpoints(data, "listen", 53), ()
        plain: list[Any] = []
        enc: list[ListenURL] = []
        for i, item in enumerate(raw):
            sub = f"listen[{i}]" if isinstance(data, list) else "listen"
            if isinstance(item, str) and is_encrypted_url(item):
                try:
                    enc.append(parse_listen_url(item))
                except ValueError as exc:
                    self.doc.err(sub, str(exc))
            else:
                plain.append((sub, item))
        eps: list[Endpoint] = []
        for sub, item in plain:
            eps.extend(self.endpoints(item, sub, 53))
        return tuple(eps), tuple(enc)

    def networks(self, data: Any, path: str) -> tuple[IPNetwork, ...]:
        out = []
        for i, item in enumerate(self.str_list(data, path)):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.doc.err(f"{path}[{i}]", f"not an IP address or network: {item!r}")
        return tuple(out)


def parse_endpoint(text: str, default_port: int = 53) -> Endpoint:
    """'192.0.2.1', '192.0.2.1:53', '[2001:db8::1]:53' or '2001:db8::1' -> (host, port)."""
    t = text.strip()
    host, port = t, default_port
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = t[1:end], t[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = _port(rest[1:], text)
    elif t.count(":") == 1:
        host, p = t.split(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address {text!r}: not an IP address (names are not resolved)") from None
    return host, port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return int(p)


def format_endpoint(ep: Endpoint) -> str:
    text = getattr(ep, "text", None)
    if text is not None:   # a tls:// or https:// upstream: its URL
        return text
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_upstreams(resolv_conf: str = "/etc/resolv.conf") -> tuple[Endpoint, ...]:
    """Nameservers from resolv.conf minus loopback (that would be ourselves or a local stub)."""
    out: list[Endpoint] = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%")[0]
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                continue
            if not ip.is_loopback and not ip.is_unspecified:
                out.append((str(ip), 53))
    if not out:
        out = [parse_endpoint(u) for u in FALLBACK_UPSTREAMS]
    return tuple(out)


def _tname(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _kname(kinds: tuple[type, ...]) -> str:
    return " or ".join(_tname(k()) if k is not type(None) else "null" for k in kinds)


_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)?")
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXAMPLES = "30, '500ms', '5s', '2m', '1h', '1d'"


def parse_duration(v: Any) -> float | None:
    """Seconds from a number or '500ms', '5s', '2m', '1h', '1d'; None when it is not one.

    The one parser for every duration key (timeouts, TTLs, refresh, serve-stale), so
    what the docs say about durations holds for all of them.
    """
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v) if math.isfinite(v) and v >= 0 else None
    if isinstance(v, str):
        m = _DURATION.fullmatch(v.strip())
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return None


# --- the loader ------------------------------------------------------------------------


TOP_KEYS = ("listen", "upstreams", "forward_zones", "access", "blocking", "clients", "groups",
            "cache", "metrics", "server", "rate_limit", "rebind_protection", "state_dir", "log",
            "workers", "devices", "query_log", "dnstap", *HOUSEHOLD_KEYS)


def load_config(path: str | os.PathLike[str] | None = None, text: str | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file (or the embedded default when ``path`` is None)."""
    if path is None:
        filename = "<embedded default>"
        base = bundled.lists_dir()
        text = bundled.default_config_text() if text is None else text
    else:
        p = Path(path)
        filename = str(p)
        base = p.resolve().parent
        if text is None:
            try:
                text = config_load.read_text(p)
            except OSError as exc:
                raise ConfigError([f"{filename}: cannot read: {exc.strerror or exc}"]) from None
            except config_load.ConfigFileError as exc:
                raise ConfigError([str(exc)]) from None
    doc = _Doc(filename)
    try:
        config_load.check_structure(text, filename)
    except config_load.ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        if "'\\t'" in problem:   # PyYAML's words for a tab in the indentation
            problem += "; use spaces to indent, YAML does not allow tabs"
        raise ConfigError([f"<yaml>: {problem} ({where})"]) from None
    data = doc.convert(node, "") if node is not None else {}
    empty = path is not None and data in ({}, None)
    if overrides:
        data = {**data, **overrides} if isinstance(data, dict) else overrides
    try:
        cfg = _build(doc, data, base, filename)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError) as exc:
        # A shape no check above foresaw: still one clean line, never a traceback.
        raise ConfigError([*doc.problems, f"<top>: cannot read this configuration: "
                           f"{_short(repr(exc))} ({filename})"]) from None
    if doc.problems:
        raise ConfigError(doc.sorted_problems())
    assert cfg is not None
    if empty:
        from dataclasses import replace

        cfg = replace(cfg, warnings=(
            f"{filename} is empty: built-in defaults apply (listen "
            f"{', '.join(map(format_endpoint, cfg.listen))}, {len(cfg.all_lists())} lists); "
            "`hushdns config --default` prints a config to start from",))
    return cfg


def _build(doc: _Doc, data: Any, base: Path, filename: str) -> Config | None:
    r = _Reader(doc, base)
    top = r.section(data, "", TOP_KEYS)

    listen, listen_enc = r.listen(top.get("listen", ["0.0.0.0:53", "[::]:53"]))
    if top.get("listen", None) == []:
        doc.err("listen", "needs at least one address")
    ups_raw = top.get("upstreams", "auto")
    upstreams = system_upstreams() if ups_raw in ("auto", None) else r.endpoints(ups_raw, "upstreams", 53, encrypted=True)
    if ups_raw == []:
        doc.err("upstreams", "needs at least one upstream (or 'auto')")

    zones: dict[str, tuple[Endpoint, ...]] = {}
    fz = top.get("forward_zones") or {}
    if not isinstance(fz, dict):
        doc.err("forward_zones", "must be a mapping of zone -> list of servers")
        fz = {}
    for zone, servers in fz.items():
        name = zone.strip(".").lower()
        eps = r.endpoints(servers, f"forward_zones.{zone}", 53, encrypted=True)
        if not eps:
            doc.err(f"forward_zones.{zone}", "needs at least one server")
        zones[name] = eps

    access = r.section(top.get("access"), "access", ("allow", "allow_snoop"))
    allow_nets = r.networks(access.get("allow", list(DEFAULT_ALLOW)), "access.allow")
    snoop_nets = r.networks(access.get("allow_snoop") or [], "access.allow_snoop")

    blocking = _blocking(r, top.get("blocking"), base)

    clients: dict[str, tuple[IPNetwork, ...]] = {}
    cl = top.get("clients") or {}
    if not isinstance(cl, dict):
        doc.err("clients", "must be a mapping of name -> list of addresses/networks")
        cl = {}
    for name, nets in cl.items():
        clients[name] = r.networks(nets, f"clients.{name}")

    groups = _groups(r, top.get("groups"), blocking, clients)

    c = r.section(top.get("cache"), "cache", (
        "max_entries", "min_ttl", "max_ttl", "negative_ttl", "servfail_ttl", "serve_stale"))
    nonneg = _at_least(0)
    cache = Cache(
        max_entries=r.typed(c, "max_entries", "cache", int, 100_000, _at_least(1)),
        min_ttl=_dur(r, c, "min_ttl", "cache", 0, nonneg, whole=True),
        max_ttl=_dur(r, c, "max_ttl", "cache", 86_400, nonneg, whole=True),
        negative_ttl=_dur(r, c, "negative_ttl", "cache", 3_600, nonneg, whole=True),
        servfail_ttl=_dur(r, c, "servfail_ttl", "cache", 5, _between(0, 300), whole=True),
        serve_stale=_dur(r, c, "serve_stale", "cache", 86_400.0),
    )
    if cache.min_ttl > cache.max_ttl:
        doc.err("cache.min_ttl", "is larger than cache.max_ttl")

    m = r.section(top.get("metrics"), "metrics", ("listen", "max_clients", "client_idle"))
    mlisten: Endpoint | None = ("127.0.0.1", 9153)
    if "listen" in m:
        if m["listen"] is None:
            mlisten = None
        else:
            eps = r.endpoints(m["listen"], "metrics.listen", 9153)
            mlisten = eps[0] if eps else None
    metrics = Metrics(mlisten, r.typed(m, "max_clients", "metrics", int, 512, _at_least(1)),
                      _dur(r, m, "client_idle", "metrics", Metrics.client_idle))

    s = r.section(top.get("server"), "server", tuple(ServerOptions.__dataclass_fields__))
    d = ServerOptions()
    server = ServerOptions(
        udp_size=r.typed(s, "udp_size", "server", int, d.udp_size, _between(512, 4096)),
        tcp_idle_timeout=_dur(r, s, "tcp_idle_timeout", "server", d.tcp_idle_timeout, _positive),
        tcp_max_connections=r.typed(s, "tcp_max_connections", "server", int, d.tcp_max_connections, _at_least(1)),
        tcp_max_pipelined=r.typed(s, "tcp_max_pipelined", "server", int, d.tcp_max_pipelined, _at_least(1)),
        tcp_max_per_client=r.typed(s, "tcp_max_per_client", "server", int, d.tcp_max_per_client,
                                   _at_least(1)),
        upstream_timeout=_dur(r, s, "upstream_timeout", "server", d.upstream_timeout, _positive),
        upstream_total_timeout=_dur(r, s, "upstream_total_timeout", "server", d.upstream_total_timeout, _positive),
        max_inflight=r.typed(s, "max_inflight", "server", int, d.max_inflight, _at_least(1)),
        max_waiters=r.typed(s, "max_waiters", "server", int, d.max_waiters, _at_least(1)),
        minimal_responses=r.typed(s, "minimal_responses", "server", bool, d.minimal_responses),
        reply_memo=r.typed(s, "reply_memo", "server", bool, d.reply_memo),
        proxy_protocol_from=r.networks(s.get("proxy_protocol_from"), "server.proxy_protocol_from"),
        tls_certificate=_pem_path(r, s, "tls_certificate"),
        tls_key=_pem_path(r, s, "tls_key"),
        tls_handshake_timeout=_dur(r, s, "tls_handshake_timeout", "server", d.tls_handshake_timeout,
                                   _positive),
        upstream_idle_timeout=_dur(r, s, "upstream_idle_timeout", "server", d.upstream_idle_timeout,
                                   _positive),
    )
    _check_tls_pair(r, s, server, listen_enc)

    rl = r.section(top.get("rate_limit"), "rate_limit", ("qps", "burst", "action"))
    qps = r.typed(rl, "qps", "rate_limit", float, 0.0, _at_least(0))
    rate = RateLimit(qps, r.typed(rl, "burst", "rate_limit", float, qps * 2, _at_least(0)),
                     r.typed(rl, "action", "rate_limit", str, "drop", _one_of("drop", "refused", "tc")))
    if rate.qps > 0 and rate.burst < 1:
        doc.err("rate_limit.burst", "must be at least 1 when rate_limit.qps is set")

    rebind = _rebind(r, top.get("rebind_protection"))
    devices = _devices(r, top, base)

    state_default = os.environ.get("STATE_DIRECTORY") or str(
        Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "hushdns")
    state_dir = r.typed(top, "state_dir", "", str, state_default)
    if "state_dir" in top and isinstance(top["state_dir"], str):
        state_dir = str((base / top["state_dir"]).resolve())

    workers = r.typed(top, "workers", "", int, 1, _between(1, 64))
    if workers > 1 and any(ep[1] == 0 for ep in (*listen, *listen_enc)):
        doc.err("workers", "several workers share fixed ports (SO_REUSEPORT); listen on port 0 needs workers: 1")

    lg = r.section(top.get("log"), "log", ("level", "queries"))
    household = read_household(r, top, state_dir)
    query_log = _query_log(r, top.get("query_log"), base, state_dir)
    return Config(
        path=filename,
        listen=listen,
        upstreams=upstreams,
        forward_zones=zones,
        access_allow=allow_nets,
        blocking=blocking,
        clients=clients,
        groups=groups,
        cache=cache,
        metrics=metrics,
        server=server,
        rate_limit=rate,
        state_dir=state_dir,
        log_level=r.typed(lg, "level", "log", str, "info",
                          _one_of("debug", "info", "warning", "error")),
        log_queries=r.typed(lg, "queries", "log", bool, False),
        workers=workers,
        rebind_protection=rebind,
        query_log=query_log,
        listen_encrypted=listen_enc,
        access_allow_snoop=snoop_nets,
        household=household,
        devices=devices,
        dnstap=_dnstap(r, top.get("dnstap"), base),
    )


def _devices(r: _Reader, top: dict[str, Any], base: Path) -> Devices:
    """``devices: {leases: [paths], neighbours: true, reverse_dns: IP:port | null, refresh: 60s}``.

    A lease file need not exist yet (the DHCP server creates it); a missing one is
    logged by the refresh, not rejected here.
    """
    if "devices" not in top:
        return Devices()
    d = r.section(top.get("devices"), "devices", ("leases", "neighbours", "reverse_dns", "refresh"))
    leases = tuple(str((base / os.path.expanduser(p)).resolve()) if p else ""
                   for p in r.str_list(d.get("leases"), "devices.leases"))
    for i, p in enumerate(leases):
        if not p:
            r.doc.err(f"devices.leases[{i}]", "must be a file path, not an empty string")
    reverse: Endpoint | None = None
    if d.get("reverse_dns") is not None:
        if isinstance(d["reverse_dns"], str):
            eps = r.endpoints(d["reverse_dns"], "devices.reverse_dns", 53)
            reverse = eps[0] if eps else None
        else:
            r.doc.err("devices.reverse_dns", f"must be the router's address like '192.168.1.1' "
                      f"or '192.168.1.1:53', or null, not {_tname(d['reverse_dns'])}")
    return Devices(
        enabled=True,
        leases=tuple(p for p in leases if p),
        neighbours=r.typed(d, "neighbours", "devices", bool, True),
        reverse_dns=reverse,
        refresh=_dur(r, d, "refresh", "devices", 60.0, _at_least(1)),
    )


def _dnstap(r: _Reader, data: Any, base: Path) -> Dnstap | None:
    """``dnstap: {socket: PATH | tcp: IP:PORT, identity, queries, responses, queue}``."""
    if data is None:
        return None
    d = r.section(data, "dnstap", tuple(Dnstap.__dataclass_fields__))
    if not d:
        return None
    sock = r.typed(d, "socket", "dnstap", str, None)
    tcp = None
    if d.get("tcp") is not None:
        eps = r.endpoints(d["tcp"], "dnstap.tcp", 6000)
        tcp = eps[0] if eps else None
    if ("socket" in d) == ("tcp" in d):
        r.doc.err("dnstap", "needs exactly one of socket (a unix socket path) or tcp (IP:PORT)")
    if sock is not None:
        sock = str(base / sock)
    return Dnstap(sock, tcp, r.typed(d, "identity", "dnstap", str, ""),
                  r.typed(d, "queries", "dnstap", bool, True),
                  r.typed(d, "responses", "dnstap", bool, True),
                  r.typed(d, "queue", "dnstap", int, Dnstap.queue, _at_least(1)))


def _rebind(r: _Reader, data: Any) -> RebindProtection:
    """``rebind_protection: true`` or ``{enabled: true, allow_zones: [lan, home.arpa]}``."""
    if data is None or isinstance(data, bool):
        return RebindProtection(bool(data))
    if not isinstance(data, dict):
        r.doc.err("rebind_protection", f"must be true, false or a mapping with enabled and "
                  f"allow_zones, not {_tname(data)}")
        return RebindProtection()
    rb = r.section(data, "rebind_protection", ("enabled", "allow_zones"))
    zones = []
    for i, z in enumerate(r.str_list(rb.get("allow_zones"), "rebind_protection.allow_zones")):
        name = z.strip().strip(".").lower()
        labels = name.split(".")
        if not name or len(name) > 253 or any(not 0 < len(lb) < 64 or " " in lb for lb in labels):
            r.doc.err(f"rebind_protection.allow_zones[{i}]", f"not a domain name: {z!r}")
            continue
        zones.append(name)
    return RebindProtection(r.typed(rb, "enabled", "rebind_protection", bool, True), tuple(zones))


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
SIZE_EXAMPLES = "268435456, '256MB', '1GiB'"


def parse_size(v: Any) -> int | None:
    """Bytes from a number or '500KB', '256MB', '1GiB' (KB = 1000, KiB = 1024); None if not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, str):
        m = _SIZE.fullmatch(v.strip())
        if m:
            unit = (m.group(2) or "").lower().removesuffix("b")
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    return None


def _query_log(r: _Reader, data: Any, base: Path, state_dir: str) -> QueryLog:
    """``query_log: false`` or ``{enabled, path, retention, max_size, privacy}``."""
    default_path = str(Path(state_dir) / "querylog.sqlite")
    if data is None or isinstance(data, bool):
        return QueryLog(enabled=data is not False, path=default_path)
    if not isinstance(data, dict):
        r.doc.err("query_log", f"must be true, false or a mapping with enabled, path, retention, "
                  f"max_size and privacy, not {_tname(data)}")
        return QueryLog(path=default_path)
    q = r.section(data, "query_log", ("enabled", "path", "retention", "max_size", "privacy"))
    if q.get("privacy") is False:   # YAML 1.1 reads a bare `off` as false: the "off" it meant
        q = {**q, "privacy": "off"}
    d = QueryLog()
    path = r.typed(q, "path", "query_log", str, "")
    if path:
        path = str((base / os.path.expanduser(path)).resolve())
    size = d.max_size
    if q.get("max_size") is not None:
        got = parse_size(q["max_size"])
        if got is None:
            r.doc.err("query_log.max_size", f"must be a size like {SIZE_EXAMPLES}, not {q['max_size']!r}")
        elif got < 1024**2:
            r.doc.err("query_log.max_size", "must be at least 1MiB")
        else:
            size = got
    return QueryLog(
        enabled=r.typed(q, "enabled", "query_log", bool, True),
        path=path or default_path,
        retention=_dur(r, q, "retention", "query_log", d.retention,
                       lambda v: None if 3600 <= v <= 3650 * 86_400 else "must be between 1h and 3650d"),
        max_size=size,
        privacy=r.typed(q, "privacy", "query_log", str, "full", _one_of(*QUERY_LOG_PRIVACY)),
    )


def _blocking(r: _Reader, data: Any, base: Path) -> Blocking:
    b = r.section(data, "blocking", ("mode", "ttl", "lists", "allow"))
    # `mode: null` is YAML's null: read it as the "null" mode it was meant to be.
    mode_raw = "null" if "mode" in b and b["mode"] is None else b.get("mode", "nxdomain")
    mode, sinkhole = "nxdomain", ()
    if isinstance(mode_raw, list):
        ips = []
        for i, v in enumerate(mode_raw):
            try:
                ips.append(str(ipaddress.ip_address(str(v))))
            except ValueError:
                r.doc.err(f"blocking.mode[{i}]", f"not an IP address: {v!r}")
        if not ips:
            r.doc.err("blocking.mode", "a custom sinkhole needs at least one address")
        mode, sinkhole = "custom", tuple(ips)
    elif mode_raw in BLOCK_MODES:
        mode = mode_raw
    else:
        r.doc.err("blocking.mode", f"must be one of {', '.join(BLOCK_MODES)} or a list of IPs, not {mode_raw!r}")
    ttl = _dur(r, b, "ttl", "blocking", 300, _at_least(0), whole=True)
    lists = _lists(r, b.get("lists"), "blocking.lists", base, allow=False)
    allow = _lists(r, b.get("allow"), "blocking.allow", base, allow=True)
    for name in set(lists) & set(allow):
        r.doc.err(f"blocking.allow.{name}", "a block list has the same name")
    return Blocking(mode, sinkhole, ttl, lists, allow)


def _lists(r: _Reader, data: Any, path: str, base: Path, allow: bool) -> dict[str, ListSpec]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        r.doc.err(path, "must be a mapping of list name -> file, directory or URL")
        return {}
    out = {}
    for name, value in data.items():
        sub = f"{path}.{name}"
        r.declared.add(name)   # known to groups even if broken: report one problem, not three
        line = r.doc.lines.get(sub, 0)
        track, refresh = False, 86400.0
        max_size, allow_empty = ListSpec.max_size, False
        if isinstance(value, dict):
            v = r.section(value, sub, ("source", "track_domains", "refresh", "max_size",
                                       "allow_empty"))
            source = v.get("source")
            track = r.typed(v, "track_domains", sub, bool, False)
            refresh = _dur(r, v, "refresh", sub, 86400.0)
            max_size = r.typed(v, "max_size", sub, int, max_size)
            allow_empty = r.typed(v, "allow_empty", sub, bool, False)
            src_path = f"{sub}.source"
        else:
            source, src_path = value, sub
        if not isinstance(source, str) or not source:
            r.doc.err(src_path, "must be a file, directory or http(s) URL")
            continue
        spec = _source(r, source, src_path, base)
        if spec is None:
            continue
        kind, resolved = spec
        out[name] = ListSpec(name, resolved, kind, track, refresh, allow, line,
                             max_size=max_size, allow_empty=allow_empty)
    return out


def _source(r: _Reader, source: str, path: str, base: Path) -> tuple[str, str] | None:
    if source.startswith(("http://", "https://")):
        return "url", source
    if source.startswith("bundled:"):
        p = bundled.lists_dir() / source[len("bundled:"):]
    else:
        p = Path(os.path.expanduser(source))
        if not p.is_absolute():
            p = base / p
    if p.is_dir():
        return "dir", str(p)
    if p.is_file():
        return "file", str(p)
    if p.exists():
        r.doc.err(path, f"{source!r} is not a regular file or directory")
        return None
    r.doc.err(path, f"no such file {source!r}")
    return None


def _groups(r: _Reader, data: Any, blocking: Blocking,
            clients: dict[str, tuple[IPNetwork, ...]]) -> dict[str, Group]:
    all_lists = tuple(blocking.lists)
    all_allow = tuple(blocking.allow)
    if data is None:
        return {"default": Group("default", (), all_lists, all_allow)}
    if not isinstance(data, dict):
        r.doc.err("groups", "must be a mapping of group name -> {clients, lists, allow}")
        return {"default": Group("default", (), all_lists, all_allow)}
    out = {}
    for name, g in data.items():
        sub = f"groups.{name}"
        gd = r.section(g, sub, ("clients", "lists", "allow", "schedules"))
        nets: list[IPNetwork] = []
        named = r.str_list(gd.get("clients"), f"{sub}.clients")
        for i, c in enumerate(named):
            if c in clients:
                nets.extend(clients[c])
                continue
            try:
                nets.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                r.doc.err(f"{sub}.clients[{i}]", f"{c!r} is neither a name in clients: nor an address")
        if name == "default" and named:
            r.doc.err(f"{sub}.clients", "the default group applies to every other client; it takes no clients")
        elif name != "default" and not named:   # an unknown name was reported above, once
            r.doc.err(f"{sub}.clients", "a group needs clients")
        lists = r.str_list(gd.get("lists"), f"{sub}.lists") if "lists" in gd else list(all_lists)
        for i, ln in enumerate(lists):
            if ln not in blocking.lists and (ln not in r.declared or ln in blocking.allow):
                r.doc.err(f"{sub}.lists[{i}]", f"no list named {ln!r} in blocking.lists")
        allow = r.str_list(gd.get("allow"), f"{sub}.allow") if "allow" in gd else list(all_allow)
        for i, ln in enumerate(allow):
            if ln not in blocking.allow and (ln not in r.declared or ln in blocking.lists):
                r.doc.err(f"{sub}.allow[{i}]", f"no list named {ln!r} in blocking.allow")
        schedules = read_schedules(r, gd.get("schedules"), f"{sub}.schedules", blocking.lists)
        out[name] = Group(name, tuple(nets), tuple(lists), tuple(allow), schedules)
    if "default" not in out:
        out["default"] = Group("default", (), all_lists, all_allow)
    return out


def _dur(r: _Reader, data: dict[str, Any], key: str, path: str, default: Any,
         check: Callable[[Any], str | None] | None = None, whole: bool = False) -> Any:
    """A duration key in seconds; ``whole``: a TTL, rounded to whole seconds."""
    if key not in data or data[key] is None:
        return default
    try:
        v = parse_duration(data[key])
    except OverflowError:   # an integer too large for a float
        v = None
    if v is None:
        r.doc.err(f"{path}.{key}", f"must be a duration like {DURATION_EXAMPLES}, not {data[key]!r}")
        return default
    out_of_range = config_limits.check_number(f"{path}.{key}", v)
    if out_of_range:
        r.doc.err(f"{path}.{key}", out_of_range)
        return default
    if whole:
        if v != int(v):
            r.doc.err(f"{path}.{key}", f"must be whole seconds, not {data[key]!r}")
            return default
        v = int(v)
    problem = check(v) if check is not None else None
    if problem:
        r.doc.err(f"{path}.{key}", problem)
        return default
    return v


def _pem_path(r: _Reader, s: dict[str, Any], key: str) -> str | None:
    value = r.typed(s, key, "server", str, None)
    return None if value is None else str((r.base / value).resolve())


def _check_tls_pair(r: _Reader, s: dict[str, Any], server: ServerOptions,
                    listen_enc: tuple[ListenURL, ...]) -> None:
    """DoT/DoH listeners need a certificate and its key, readable and matching."""
    cert, key = server.tls_certificate, server.tls_key
    if listen_enc and (cert is None or key is None):
        missing = "server.tls_certificate" if cert is None else "server.tls_key"
        r.doc.err(missing, f"needed by listen {listen_enc[0].url()} (a PEM file path)")
        return
    if cert is None and key is None:
        return
    if cert is None or key is None:
        r.doc.err("server.tls_key" if key is None else "server.tls_certificate",
                  "server.tls_certificate and server.tls_key go together")
        return
    problem = tls_pair_problem(cert, key)
    if problem:
        r.doc.err(problem[0], problem[1])


def tls_pair_problem(cert: str, key: str) -> tuple[str, str] | None:
    """(key path, what is wrong) when ``cert``/``key`` cannot serve TLS, else None."""
    import ssl

    for name, path in (("server.tls_certificate", cert), ("server.tls_key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return name, f"{path}: {(exc.strerror or str(exc)).lower()}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) \
            else f"not a usable PEM certificate and key ({exc.reason or exc})"
        return "server.tls_key", why
    return None


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be at least {lo:g}"


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"

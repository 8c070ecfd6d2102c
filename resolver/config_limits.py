"""Range limits for every number in the config.

Why a table: a value that parses but is absurd breaks serving, not loading
(a TTL above 2^31-1 cannot be put on the wire, so every answer became
SERVFAIL; ``tcp_idle_timeout: 1e-300`` spun the sweeper at 100% CPU; a NaN
timeout never fires).  One table, read by ``config._Reader.typed`` and
``config._dur``, keeps every key's bounds in one place that ``check`` enforces
with the key path and line.  Keys not listed still get the generic bound
(finite, and within a signed 32-bit range).
"""

from __future__ import annotations

import math

TTL_MAX = 2**31 - 1            # RFC 2181 section 8: TTLs are 31-bit
GENERIC_MAX = 2**31 - 1
DAY = 86_400.0

# key path (list names replaced by *) -> (minimum, maximum), inclusive.
LIMITS: dict[str, tuple[float, float]] = {
    "blocking.ttl": (0, TTL_MAX),
    "cache.max_entries": (1, 50_000_000),
    "cache.min_ttl": (0, TTL_MAX),
    "cache.max_ttl": (0, TTL_MAX),
    "cache.negative_ttl": (0, TTL_MAX),
    "cache.servfail_ttl": (0, 300),
    "cache.serve_stale": (0, 365 * DAY),
    "metrics.max_clients": (1, 1_000_000),
    "metrics.client_idle": (0.1, 365 * DAY),
    "server.udp_size": (512, 4096),
    "server.tcp_idle_timeout": (0.1, 3600),
    "server.tcp_max_connections": (1, 65_535),
    "server.tcp_max_pipelined": (1, 65_535),
    "server.tcp_max_per_client": (1, 65_535),
    "server.upstream_timeout": (0.01, 60),
    "server.upstream_total_timeout": (0.01, 600),
    "server.max_inflight": (1, 1_000_000),
    "server.max_waiters": (1, 1_000_000),
    "rate_limit.qps": (0, 10_000_000),
    "rate_limit.burst": (0, 100_000_000),
    "blocking.lists.*.refresh": (1, 365 * DAY),
    "blocking.allow.*.refresh": (1, 365 * DAY),
    "blocking.lists.*.max_size": (1, 2**40),
    "blocking.allow.*.max_size": (1, 2**40),
    "workers": (1, 64),
}


def pattern(path: str) -> str:
    """``blocking.lists.xiaomi.refresh`` -> ``blocking.lists.*.refresh``."""
    parts = path.split(".")
    if len(parts) >= 4 and parts[0] == "blocking" and parts[1] in ("lists", "allow"):
        return ".".join([parts[0], parts[1], "*", *parts[3:]])
    return path


def check_number(path: str, value: float) -> str | None:
    """A problem with the number at ``path``, or None when it is in range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value!r}"
    lo, hi = LIMITS.get(pattern(path), (-GENERIC_MAX, GENERIC_MAX))
    if not lo <= value <= hi:
        return f"must be between {_num(lo)} and {_num(hi)}, not {_show(value)}"
    return None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _show(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."

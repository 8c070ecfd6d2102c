"""What ``hushdns check`` says about encrypted DNS: upstream trust, listeners, the certificate's dates.

Why beyond the config loader: the loader rejects what cannot work (no auth
name, an unreadable or mismatched pair); check also shows what each DoT/DoH
upstream will be trusted by, and fails on a served certificate that has
expired (phones refuse it) or warns when it expires within two weeks.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from .config import Config, format_endpoint

WARN_DAYS = 14


def _decode_cert(path: str) -> dict[str, Any] | None:
    try:
        return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ssl.SSLError):
        return None


def report(config: Config) -> tuple[list[str], int, list[str]]:
    """(lines to print, warnings, failures)."""
    lines: list[str] = []
    warnings = 0
    failures: list[str] = []
    seen: set[str] = set()
    eps = list(config.upstreams) + [e for z in config.forward_zones.values() for e in z]
    for ep in eps:
        scheme = getattr(ep, "scheme", None)
        label = format_endpoint(ep)
        if scheme is None or label in seen:
            continue
        seen.add(label)
        trust = f"CA file {ep.ca_file}" if ep.ca_file else "the system trust store"
        pins = f", {len(ep.pins)} pin-sha256" if ep.pins else ""
        kind = "DNS over TLS" if scheme == "tls" else "DNS over HTTPS (HTTP/2 POST)"
        lines.append(f"upstream {label}: {kind} to {ep[0]} port {ep[1]}, certificate must name "
                     f"{ep.auth_name}, trusted via {trust}{pins}")
    if not config.listen_encrypted:
        return lines, warnings, failures
    for u in config.listen_encrypted:
        lines.append(f"listen {u.url()}: " + ("DNS over TLS" if u.scheme == "tls" else
                                              "DNS over HTTPS (HTTP/2, GET and POST)"))
    cert = config.server.tls_certificate or ""
    info = _decode_cert(cert)
    if info is None:
        lines.append(f"certificate {cert}: loads with its key (dates not readable here)")
        return lines, warnings, failures
    names = [v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    not_after = ssl.cert_time_to_seconds(info["notAfter"])
    days = (not_after - time.time()) / 86400
    lines.append(f"certificate {cert}: names {', '.join(names) or '(none)'}; "
                 f"valid until {info['notAfter']}")
    if days < 0:
        lines.append("  FAILED: the certificate has expired; phones and browsers will refuse it")
        failures.append("the TLS certificate has expired")
    elif days < WARN_DAYS:
        lines.append(f"  warning: the certificate expires in {days:.0f} days")
        warnings += 1
    return lines, warnings, failures

"""The encrypted-DNS addresses of the config: ``tls://`` and ``https://`` upstreams and listeners.

Why a tuple subclass: everything that handles an upstream address (the forward
stage's pool, reload comparisons, labels) already takes an ``(ip, port)``
tuple.  An ``EncryptedEndpoint`` still is one -- the address to connect to --
and carries what the transport needs beside it (scheme, the name the
certificate must show, pins, a CA file, the DoH path).  Equality and hashing
include those, so ``tls://`` and plain ``:853`` to the same address differ.

Syntax (docs/configuration.md): the URL, then options as ``key=value`` words::

    tls://9.9.9.9#dns.quad9.net
    tls://192.0.2.53:853#dns.example pin-sha256=BASE64 ca_file=/etc/hushdns/ca.pem
    https://9.9.9.9/dns-query#dns.quad9.net
    https://dns.quad9.net/dns-query bootstrap=9.9.9.9,149.112.112.112
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

SCHEMES = {"tls": 853, "https": 443}
OPTIONS = ("pin-sha256", "ca_file", "bootstrap")


class EncryptedEndpoint(tuple):  # type: ignore[type-arg]
    """``(ip, port)`` of a DoT/DoH upstream, with the rest of its URL as attributes."""

    scheme: str
    auth_name: str
    pins: tuple[bytes, ...]
    ca_file: str | None
    path: str
    text: str

    def __new__(cls, host: str, port: int, scheme: str, auth_name: str,
                pins: tuple[bytes, ...] = (), ca_file: str | None = None,
                path: str = "/dns-query", text: str = "") -> EncryptedEndpoint:
        self = super().__new__(cls, (host, port))
        self.scheme, self.auth_name, self.pins = scheme, auth_name, pins
        self.ca_file, self.path = ca_file, path
        self.text = text or self.url()
        return self

    def url(self) -> str:
        host, port = self
        h = f"[{host}]" if ":" in host else host
        p = "" if port == SCHEMES[self.scheme] else f":{port}"
        path = self.path if self.scheme == "https" else ""
        return f"{self.scheme}://{h}{p}{path}#{self.auth_name}"

    def _key(self) -> tuple[Any, ...]:
        return (tuple(self), self.scheme, self.auth_name, self.pins, self.ca_file, self.path)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncryptedEndpoint):
            return self._key() == other._key()
        return False

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> Any:   # worker processes get the config pickled
        return (EncryptedEndpoint, (self[0], self[1], self.scheme, self.auth_name, self.pins,
                                    self.ca_file, self.path, self.text))


def is_encrypted_url(text: str) -> bool:
    return text.strip().lower().startswith(("tls://", "https://"))


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_upstream_url(text: str, base: str = ".") -> list[EncryptedEndpoint]:
    """One config string -> the upstream(s) it names (one per bootstrap address); ValueError says why."""
    words = text.split()
    if not words:
        raise ValueError("empty upstream")
    url, opts = words[0], words[1:]
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"bad upstream {text!r}: use tls://IP#name or https://IP/dns-query#name")
    try:
        port = u.port or SCHEMES[scheme]
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    host = u.hostname or ""
    if not host:
        raise ValueError(f"bad upstream {url!r}: no address")
    if scheme == "tls" and u.path not in ("", "/"):
        raise ValueError(f"bad upstream {url!r}: a tls:// upstream has no path")
    path = u.path or "/dns-query"
    if scheme == "https" and u.query:
        raise ValueError(f"bad upstream {url!r}: no query string (hushdns POSTs to the path)")
    pins: list[bytes] = []
    ca_file: str | None = None
    bootstrap: list[str] = []
    for w in opts:
        key, sep, value = w.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise ValueError(f"bad option {w!r} in {text!r}: options are "
                             + ", ".join(f"{o}=..." for o in OPTIONS))
        if key == "pin-sha256":
            try:
                pin = base64.b64decode(value, validate=True)
            except binascii.Error:
                pin = b""
            if len(pin) != 32:
                raise ValueError(f"bad pin-sha256 in {text!r}: not the base64 of a SHA-256 digest")
            pins.append(pin)
        elif key == "ca_file":
            ca_file = os.path.normpath(os.path.join(base, value))
            if not os.path.isfile(ca_file):
                raise ValueError(f"ca_file {value!r}: no such file")
        else:
            for b in value.split(","):
                ip = _ip(b.strip("[]"))
                if ip is None:
                    raise ValueError(f"bad bootstrap address {b!r} in {text!r}: not an IP address")
                bootstrap.append(ip)
    ip = _ip(host)
    if ip is not None:
        if bootstrap:
            raise ValueError(f"bootstrap= in {text!r}: only for a host name URL")
        auth = u.fragment.strip(".")
        if not auth:
            raise ValueError(f"bad upstream {url!r}: needs '#auth-name', the name its "
                             "certificate must show (e.g. tls://9.9.9.9#dns.quad9.net)")
        addrs = [ip]
    else:
        if u.fragment and u.fragment.strip(".").lower() != host.lower():
            raise ValueError(f"bad upstream {url!r}: the host name is the auth name; drop '#'")
        if not bootstrap:
            raise ValueError(f"bad upstream {url!r}: a host name needs bootstrap=IP[,IP] "
                             "(hushdns does not resolve names to reach its upstreams)")
        auth, addrs = host.lower(), bootstrap
    out = []
    for a in addrs:
        ep = EncryptedEndpoint(a, port, scheme, auth.lower(), tuple(pins), ca_file, path)
        if bootstrap:
            ep.text = f"{scheme}://{host}{'' if port == SCHEMES[scheme] else f':{port}'}" \
                f"{path if scheme == 'https' else ''}@{a}"
        out.append(ep)
    return out


class ListenURL(tuple):  # type: ignore[type-arg]
    """``(ip, port)`` of a DoT (``tls://``) or DoH (``https://.../path``) listener."""

    scheme: str
    path: str

    def __new__(cls, host: str, port: int, scheme: str, path: str = "/dns-query") -> ListenURL:
        self = super().__new__(cls, (host, port))
        self.scheme, self.path = scheme, path
        return self

    def _key(self) -> tuple[Any, ...]:
        return (tuple(self), self.scheme, self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListenURL) and self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> Any:
        return (ListenURL, (self[0], self[1], self.scheme, self.path))

    def url(self) -> str:
        host, port = self
        h = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{h}:{port}{self.path if self.scheme == 'https' else ''}"


def parse_listen_url(text: str) -> ListenURL:
    u = urlsplit(text.strip())
    scheme = u.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"bad listen address {text!r}")
    try:
        port = u.port if u.port is not None else SCHEMES[scheme]
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    ip = _ip(u.hostname or "")
    if ip is None:
        raise ValueError(f"bad listen address {text!r}: not an IP address")
    if scheme == "tls" and u.path not in ("", "/"):
        raise ValueError(f"bad listen address {text!r}: a tls:// listener has no path")
    if u.query or u.fragment:
        raise ValueError(f"bad listen address {text!r}: no query or '#' here")
    return ListenURL(ip, port, scheme, u.path or "/dns-query")

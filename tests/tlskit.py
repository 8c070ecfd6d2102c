"""Certificates and a real unbound DoT/DoH server for the encrypted-DNS tests (127.0.0.1 only).

``make_pki`` writes a throw-away CA and a server certificate for a name
(optionally expired, or for another name) with the ``cryptography`` package.
``Unbound`` runs the Debian unbound with ``tls-port`` and ``https-port`` and a
``redirect`` zone, so every name under ``test.`` answers 192.0.2.1 from
unbound itself: no recursion, nothing leaves the machine.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes import free_port


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    pin: str          # base64 SHA-256 of the server key's SubjectPublicKeyInfo


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path, name: str = "dns.test", expired: bool = False, tag: str = "srv",
             ip: str | None = None) -> Pki:
    """A CA and a certificate for ``name`` (and the address ``ip``, for clients that check it)."""
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("hushdns test CA")).issuer_name(_name("hushdns test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name)] + ([x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    p = Pki(d / f"{tag}-ca.pem", d / f"{tag}.pem", d / f"{tag}.key", "")
    p.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    p.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    p.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    p.pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return p


def unbound_has_doh() -> bool:
    exe = shutil.which("unbound")
    if exe is None:
        return False
    out = subprocess.run([exe, "-V"], capture_output=True, text=True).stdout
    return "nghttp2" in out


def _answers(port: int) -> bool:
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04ping\x04test\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(q, ("127.0.0.1", port))
            return s.recv(512)[:2] == q[:2]
        except OSError:
            return False


class Unbound:
    """unbound serving plain DNS, DoT and DoH on 127.0.0.1 from a redirect zone."""

    def __init__(self, d: Path, pki: Pki, threads: int = 1, verbosity: int = 0,
                 max_tcp: int = 100) -> None:
        self.port, self.tls_port, self.https_port = free_port(), free_port(), free_port()
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "unbound.conf"
        conf.write_text(f"""server:
  interface: 127.0.0.1@{self.port}
  interface: 127.0.0.1@{self.tls_port}
  interface: 127.0.0.1@{self.https_port}
  port: {self.port}
  tls-port: {self.tls_port}
  https-port: {self.https_port}
  tls-service-key: "{pki.key}"
  tls-service-pem: "{pki.cert}"
  http-endpoint: "/dns-query"
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: {verbosity}
  num-threads: {threads}
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  incoming-num-tcp: {max_tcp}
  local-zone: "test." redirect
  local-data: "test. 300 IN A 192.0.2.1"
remote-control:
  control-enable: no
""")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            # Ready when it answers plain DNS (a bare TCP probe of the TLS ports would
            # leave unbound a failed handshake, which upset the next DoH connection).
            if _answers(self.port):
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("unbound did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

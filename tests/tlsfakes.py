"""Misbehaving DoT and DoH servers on 127.0.0.1 for the fault tests (a thread each).

``FakeDot(mode)``: ``reverse`` answers queries two at a time in reverse order
(pipelining, replies matched by ID); ``reset`` answers the first query of a
connection and then resets it (RST) when the next arrives; ``hang`` accepts TCP
and never starts TLS.  ``FakeDoh(mode)``: an HTTP/2 server answering every
request with ``500``, a wrong content type (``ctype``) or a body that is not DNS
(``garbage``).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading

import dnslib
import h2.config
import h2.connection
import h2.events

from tests.fakes import default_answer
from tests.tlskit import Pki


def _answer(data: bytes) -> bytes:
    return default_answer(dnslib.DNSRecord.parse(data)).pack()


class _Fake:
    def __init__(self, pki: Pki | None, mode: str, alpn: list[str] | None = None) -> None:
        self.mode = mode
        self.ctx: ssl.SSLContext | None = None
        if pki is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(pki.cert, pki.key)
            if alpn:
                self.ctx.set_alpn_protocols(alpn)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.queries = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "hang":
                self.held.append(conn)   # never a byte of TLS
                continue
            threading.Thread(target=self._serve_tls, args=(conn,), daemon=True).start()

    def _serve_tls(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.ctx.wrap_socket(conn, server_side=True)  # type: ignore[union-attr]
            self.serve(tls)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def serve(self, tls: ssl.SSLSocket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def _read_frame(tls: ssl.SSLSocket) -> bytes | None:
    head = b""
    while len(head) < 2:
        chunk = tls.recv(2 - len(head))
        if not chunk:
            return None
        head += chunk
    n = struct.unpack("!H", head)[0]
    body = b""
    while len(body) < n:
        chunk = tls.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return body


class FakeDot(_Fake):
    def serve(self, tls: ssl.SSLSocket) -> None:
        got: list[bytes] = []
        while True:
            q = _read_frame(tls)
            if q is None:
                return
            self.queries += 1
            if self.mode == "reset":
                if got:
                    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return   # closed with linger 0: a TCP RST mid-stream
                got.append(q)
                a = _answer(q)
                tls.sendall(struct.pack("!H", len(a)) + a)
                continue
            got.append(q)
            if len(got) == 2:   # reverse: the second question is answered first
                for q in reversed(got):
                    a = _answer(q)
                    tls.sendall(struct.pack("!H", len(a)) + a)
                got.clear()


class FakeDoh(_Fake):
    def __init__(self, pki: Pki, mode: str) -> None:
        super().__init__(pki, mode, ["h2"])

    def serve(self, tls: ssl.SSLSocket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        while True:
            data = tls.recv(65535)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamEnded):
                    self.queries += 1
                    status, ctype, body = "200", "application/dns-message", b"\x00" * 20
                    if self.mode == "500":
                        status, body = "500", b"oops"
                    elif self.mode == "ctype":
                        ctype, body = "text/html", b"<html>hello</html>"
                    conn.send_headers(ev.stream_id, [(":status", status), ("content-type", ctype),
                                                     ("content-length", str(len(body)))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
            tls.sendall(conn.data_to_send())

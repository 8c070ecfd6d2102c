"""Test helpers for dnstap: read a Frame Streams capture file and decode its protobufs.

An independent reader of the bytes (dnstap-ldns does not print the ``extra``
field), plus a fake collector that does the handshake and then reads, or stalls.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

from resolver.dnstap import framestream


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def decode(b: bytes) -> dict[int, list]:
    """field number -> values (ints or bytes) of one protobuf message."""
    out: dict[int, list] = {}
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = struct.unpack_from("<I", b, i)[0], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(field, []).append(v)
    return out


def frames(path: Path) -> list[bytes]:
    """The data frames of an fstrm_capture output file (control frames skipped)."""
    b = path.read_bytes()
    out, i = [], 0
    while i + 4 <= len(b):
        n = struct.unpack_from("!I", b, i)[0]
        i += 4
        if n == 0:          # control frame: its length, then its body
            clen = struct.unpack_from("!I", b, i)[0]
            i += 4 + clen
            continue
        out.append(b[i:i + n])
        i += n
    return out


class FakeCollector:
    """A unix-socket Frame Streams reader: handshakes, then reads (or, ``stall``, never does)."""

    def __init__(self, path: str, stall: bool = False) -> None:
        self.path, self.stall = path, stall
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.received = 0
        self.connections = 0
        self.closed = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            framestream.read_control(conn)                       # READY
            conn.sendall(framestream.control(framestream.ACCEPT))
            framestream.read_control(conn)                       # START
            if self.stall:
                return
            while True:
                d = conn.recv(65536)
                if not d:
                    return
                self.received += len(d)
        except OSError:
            return

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for c in self.conns:
            c.close()

"""Frame Streams (the transport of dnstap): control frames and data frames.

A data frame is a 32-bit big-endian length and the payload; a control frame is
an "escape" length of zero, its own length, a type, and fields (here only the
content type).  Bidirectional handshake, writer side: send READY, read ACCEPT,
send START, then data frames; at the end STOP, and read FINISH.
"""

from __future__ import annotations

import contextlib
import socket
import struct

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
ACCEPT, START, STOP, READY, FINISH = 1, 2, 3, 4, 5
FIELD_CONTENT_TYPE = 1
MAX_CONTROL = 512

_U32 = struct.Struct("!I")


class FrameStreamError(OSError):
    """The collector answered the handshake with something we cannot use."""


def control(kind: int, content_type: bytes | None = CONTENT_TYPE) -> bytes:
    body = _U32.pack(kind)
    if content_type is not None:
        body += _U32.pack(FIELD_CONTENT_TYPE) + _U32.pack(len(content_type)) + content_type
    return _U32.pack(0) + _U32.pack(len(body)) + body


def data(payload: bytes) -> bytes:
    return _U32.pack(len(payload)) + payload


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FrameStreamError("collector closed the connection during the handshake")
        buf += chunk
    return buf


def read_control(sock: socket.socket) -> tuple[int, list[bytes]]:
    """(control type, content types) of the next control frame."""
    escape, length = struct.unpack("!II", _read_exact(sock, 8))
    if escape != 0 or not 4 <= length <= MAX_CONTROL:
        raise FrameStreamError("expected a control frame")
    body = _read_exact(sock, length)
    kind = _U32.unpack_from(body)[0]
    types, i = [], 4
    while i + 8 <= len(body):
        field, n = struct.unpack_from("!II", body, i)
        i += 8
        if field == FIELD_CONTENT_TYPE:
            types.append(body[i:i + n])
        i += n
    return kind, types


def handshake(sock: socket.socket) -> None:
    """READY -> ACCEPT (which must list our content type) -> START."""
    sock.sendall(control(READY))
    kind, types = read_control(sock)
    if kind != ACCEPT or (types and CONTENT_TYPE not in types):
        raise FrameStreamError(f"collector did not accept {CONTENT_TYPE.decode()}")
    sock.sendall(control(START))


def finish(sock: socket.socket) -> None:
    """STOP, then wait (briefly) for the collector's FINISH."""
    sock.sendall(control(STOP, None))
    with contextlib.suppress(OSError):
        read_control(sock)

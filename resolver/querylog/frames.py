"""The pipe protocol between the server and its query-log writer process.

Server to writer: frames of ``kind`` (one byte), payload length (4 bytes, little
endian), payload.  ``R``: a batch of rows, ``marshal.dumps((offset, rows))``;
``F``: a flush token (8 bytes), answered once every row before it is written.
Why marshal of the rows as they were queued: a row is a small tuple of objects
that already exist (the memo entry's ``what`` tuple, the device string), and
marshal writes an object met twice in a batch as a back-reference, in C, with
no per-row Python code (measured: about half the cost of a pickle of the same
list, a third of ``struct`` packing in a Python loop).  Both ends are the same
``sys.executable``, so marshal's version-bound format is no concern.

Writer to server: one JSON object per line, ``{"token": n|null, "written": n,
"dropped": {...}, "new_names": {...}}`` (counter changes since the last line).

A row: ``(t0, took, device, address, what)``; ``t0`` is ``time.perf_counter()``
when the query arrived (wall time is ``t0 + offset``), ``took`` the seconds to the
answer, and ``what`` is ``(name, qtype, list, rule, result, rcode, upstream)``.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

HEADER = struct.Struct("<cI")
ROWS = b"R"
FLUSH = b"F"
TOKEN = struct.Struct("<Q")

Row = tuple[float, float, str, str, tuple[Any, ...]]


def rows_frame(offset: float, rows: list[Any]) -> tuple[bytes, bytes]:
    """The header and payload of one batch (two buffers: written with one ``writev``)."""
    payload = marshal.dumps((offset, rows))
    return HEADER.pack(ROWS, len(payload)), payload


def flush_frame(token: int) -> bytes:
    return HEADER.pack(FLUSH, TOKEN.size) + TOKEN.pack(token)


class FrameReader:
    """Cuts a byte stream into frames, whatever sizes the reads come in."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, Any]]:
        """The complete frames in what has arrived: (ROWS, (offset, rows)) or (FLUSH, token)."""
        buf = self.buf
        buf += data
        out: list[tuple[bytes, Any]] = []
        pos, end, size = 0, len(buf), HEADER.size
        while end - pos >= size:
            kind, n = HEADER.unpack_from(buf, pos)
            if end - pos - size < n:
                break
            body = bytes(buf[pos + size:pos + size + n])
            pos += size + n
            if kind == ROWS:
                out.append((ROWS, marshal.loads(body)))
            elif kind == FLUSH:
                out.append((FLUSH, TOKEN.unpack(body)[0]))
        del buf[:pos]
        return out

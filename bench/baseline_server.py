"""The Python floor of per-packet work: a bare asyncio(+uvloop) UDP loop answering from a template.

Why it exists: it does the least per-packet work a Python DNS server can do (read the
question straight from the bytes, copy it into a prebuilt answer), so its queries/s on
this machine was the upper bound for a callback-per-datagram server (hushdns' batched edge,
which reads many datagrams before sending, now passes it on cache hits).  No cache, no
lists, no metrics: the gap between this and hushdns is hushdns' own per-packet cost.

    python bench/baseline_server.py --port 5300 [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct

# Answer RR: pointer to the question name, A IN, TTL 300, 192.0.2.1.
_ANSWER_A = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
_COUNTS_A = struct.pack("!HHHH", 1, 1, 0, 0)
_COUNTS_NODATA = struct.pack("!HHHH", 1, 0, 0, 0)


def answer(data: bytes) -> bytes | None:
    """The reply to `data`, or None for anything that is not a one-question query."""
    if len(data) < 17 or data[2] & 0x80 or data[4:6] != b"\x00\x01":
        return None
    i = 12
    end = len(data)
    while True:  # walk the labels of the question name
        if i >= end:
            return None
        n = data[i]
        if n == 0:
            break
        if n & 0xC0:
            return None
        i += n + 1
    qend = i + 5
    if qend > end:
        return None
    qtype = (data[i + 1] << 8) | data[i + 2]
    flags = bytes([0x80 | (data[2] & 0x01), 0x80])  # QR, echo RD; RA; NOERROR
    question = data[12:qend]
    if qtype == 1:
        return data[:2] + flags + _COUNTS_A + question + _ANSWER_A
    return data[:2] + flags + _COUNTS_NODATA + question


class Protocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def _reader(sock: socket.socket) -> None:
    """Drain the socket on each readiness event: several datagrams per wakeup."""
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        try:
            data, addr = recvfrom(4096)
        except (BlockingIOError, InterruptedError):
            return
        reply = answer(data)
        if reply is not None:
            try:
                sendto(reply, addr)
            except (BlockingIOError, InterruptedError):
                continue  # the client's buffer is full: a lost answer, as with UDP anyway


async def serve(port: int, mode: str = "transport") -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    if mode == "reader":
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), _reader, sock)
    else:
        await loop.create_datagram_endpoint(Protocol, sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    ap.add_argument("--mode", choices=("transport", "reader"), default="transport",
                    help="transport: a DatagramProtocol (one callback per datagram); reader: "
                         "add_reader + recvfrom/sendto on the raw socket until it is empty")
    args = ap.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(args.port, args.mode))
            return
    asyncio.run(serve(args.port, args.mode))


if __name__ == "__main__":
    main()

"""Per-query Python cost of each piece of hushdns' hot paths, without sockets.

    python bench/micro.py [--list-size 100000] [--number 200000]

Why in-process: on a shared 2-core machine dnsperf numbers move by 30% between runs, and
a sampling profiler attributes the sendmsg syscall (and the wakeup of the client it
delivers to) to whichever Python line called it.  Here the real Server, with its real
pipeline and a 100k-name list, is driven through the UDP edge's path (``ReplyMemo.answer``,
else ``Server.handle``: what UDP clients of the benchmark get) and ``Server.handle`` alone
(the pipeline without the memo: TCP, and whatever the memo leaves) with a sink that drops
the reply, so what is timed is exactly the Python work
per query; each step is then timed alone.  The sum is compared with the template answer of bench/baseline_server.py.
The cache is warmed through nsd, like the benchmark (needs nsd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import sys
import tempfile
import time
import timeit
from pathlib import Path

import data
import servers

sys.path.insert(0, str(servers.REPO_ROOT))


class NullSink:
    """Stands in for the UDP transport: counts replies, sends nothing."""

    def __init__(self) -> None:
        self.n = 0
        self.last: bytes | None = None
        self.event: asyncio.Event | None = None

    def sendto(self, wire: bytes | None, addr: object = None) -> None:
        self.n += 1
        self.last = wire
        if self.event is not None:
            self.event.set()


def per_call_us(fn, number: int) -> float:
    """Best of 5 repeats, in µs of this thread's CPU time per call.

    CPU time, not wall time: on a shared machine the wall clock also counts the time the
    process sat descheduled; the best of 5 drops the repeats other processes disturbed.
    """
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.thread_time)) / number * 1e6


async def measure(args: argparse.Namespace, work: Path) -> list[tuple[str, float, str]]:
    import baseline_server

    from resolver.config import load_config
    from resolver.server import Server
    from resolver.wire import parse_query

    names = data.blocklist_names(args.list_size)
    blist = data.write_blocklist(work / "blocklist.txt", names)
    nsd = servers.nsd(work, data.zone_file(work / "bench.zone")).start()
    try:
        cfg = work / "hushdns.yaml"
        cfg.write_text(
            'listen: ["127.0.0.1:0"]\n'
            f'upstreams: ["127.0.0.1:{nsd.port}"]\n'
            f"blocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n"
            "cache: {max_entries: 100000}\n"
            f"state_dir: {work / 'state'}\n")   # its own query log, not the user's
        server = Server(load_config(cfg))
        await server.start()
        try:
            return await _measure(server, names, args.number, parse_query, baseline_server)
        finally:
            await server.stop()
    finally:
        nsd.stop()


async def _measure(server, names, number, parse_query, baseline_server):
    addr = ("127.0.0.1", 40000)
    blocked_pkt = servers.dns_query(names[12345])[1]
    hit_pkt = servers.dns_query(f"hit7.{data.ZONE}")[1]
    sink = NullSink()
    # Warm the cache for the hit name through the real forward path.
    sink.event = asyncio.Event()
    server.handle(hit_pkt, addr, "udp", sink)
    await asyncio.wait_for(sink.event.wait(), 5)
    sink.event = None
    assert sink.last is not None and sink.last[3] & 0xF == 0, "hit name did not resolve"
    server.handle(blocked_pkt, addr, "udp", sink)
    assert sink.last is not None and sink.last[3] & 0xF == 3, "blocked name not NXDOMAIN"

    rows: list[tuple[str, float, str]] = []

    def row(label: str, fn, note: str = "") -> None:
        rows.append((label, per_call_us(fn, number), note))

    # 100k different listed names, as in the benchmark's blocked mix (memos cannot help).
    many = itertools.cycle([servers.dns_query(n)[1] for n in names[:100_000]])
    row("baseline_server.answer (template reply, the floor)",
        lambda: baseline_server.answer(blocked_pkt), "parse question + reply bytes")
    handle = server.handle
    row("Server.handle, blocked query, 100k names in turn (whole Python path)",
        lambda: handle(next(many), addr, "udp", sink), "reply to a null sink")
    row("Server.handle, the same blocked query again and again",
        lambda: handle(blocked_pkt, addr, "udp", sink), "reply to a null sink")
    row("Server.handle, cache-hit query (whole Python path)",
        lambda: handle(hit_pkt, addr, "udp", sink), "reply to a null sink")
    memo = server.memo

    def udp(pkt: bytes) -> None:
        if memo.answer(pkt, addr, sink) is None:
            handle(pkt, addr, "udp", sink)

    udp_many = itertools.cycle([servers.dns_query(n)[1] for n in names[:100_000]])
    row("UDP edge, blocked, 100k names in turn (what UDP clients get)",
        lambda: udp(next(udp_many)), "first sight: the memo misses, the pipeline answers")
    row("UDP edge, the same blocked query again (reply memo)", lambda: udp(blocked_pkt))
    row("UDP edge, cache hit (reply memo)", lambda: udp(hit_pkt))

    def hit_unremembered():
        for t in memo.tables.values():
            t.clear()
        return udp(hit_pkt)

    row("UDP edge, cache hit, nothing remembered", hit_unremembered, "parse + pipeline + render")

    req_b = parse_query(blocked_pkt)
    req_h = parse_query(hit_pkt)
    info = server.clients.lookup(addr[0])
    for r in (req_b, req_h):
        r.client, r.proto, r.info, r.addr, r.sink, r.t0 = addr[0], "udp", info, addr, sink, 0.0
    row("  parse_query, a name seen before", lambda: parse_query(blocked_pkt))
    row("  parse_query, 100k names in turn", lambda: parse_query(next(many)))
    row("  ClientTable.lookup", lambda: server.clients.lookup(addr[0]))
    pipeline = server.pipeline
    row("  Pipeline.run, blocked (access, blocking, finish)", lambda: pipeline.run(req_b))
    row("  Pipeline.run, cache hit (access, blocking, cache, finish)", lambda: pipeline.run(req_h))
    from resolver.stages.blocking import Blocking
    from resolver.stages.cache import Cache

    blocking = pipeline.find(Blocking)
    cache = pipeline.find(Cache)
    idx = server.lists.index
    row("    DomainIndex.match (listed name)",
        lambda: idx.match(req_b.qname, info.block, info.allow))
    row("    DomainIndex.match (unlisted name)",
        lambda: idx.match(req_h.qname, info.block, info.allow))
    row("    Blocking.on_query (match, stats, template reply)", lambda: blocking.on_query(req_b))
    row("    Cache.on_query (hit)", lambda: cache.on_query(req_h))
    resp_b = blocking.on_query(req_b)
    resp_h = cache.on_query(req_h)
    now = time.monotonic()
    row("    Answer.render (cache hit reply bytes)",
        lambda: resp_h.answer.render(req_h, now, 1232))
    pipeline.memo = None   # finish alone, without remembering
    row("  Pipeline.finish, blocked (stats + send)", lambda: pipeline.finish(req_b, resp_b, 1))
    row("  Pipeline.finish, cache hit (render + stats + send)",
        lambda: pipeline.finish(req_h, resp_h, 2))
    pipeline.memo = memo
    stats = server.stats
    row("    Stats.query (dict + histogram)",
        lambda: stats.query(info.label, "A", "blocked", 0.00002))
    await _miss_pieces(row, req_h, server)
    one, two = _coroutines()
    row("  a coroutine: create + send + StopIteration", one)
    row("  the same with one more awaiting stage", two, "one stage hop = the difference")
    return rows


async def _miss_pieces(row, req, server) -> None:
    """The building blocks of one forwarded query, each timed alone."""
    import socket

    from resolver.wire import make_query, parse_answer

    loop = asyncio.get_running_loop()
    up = server.config.upstreams[0]
    query = make_query(req, 4242)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(up)
        s.send(query)
        answer = s.recv(4096)
    c = server.config.cache
    row("miss path: parse_answer (nsd's answer)",
        lambda: parse_answer(answer, req, c.min_ttl, c.max_ttl, c.negative_ttl))
    row("miss path: make_query", lambda: make_query(req, 4242))

    def sock_cycle():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(up)
        s.close()

    row("miss path: socket() + setblocking + connect + close", sock_cycle,
        "per upstream query today")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect(up)
    fd = s.fileno()

    def reader_cycle():
        loop.add_reader(fd, _noop)
        loop.remove_reader(fd)

    row("miss path: loop.add_reader + remove_reader", reader_cycle, "epoll_ctl x2 + handle")
    s.close()
    done = loop.create_future()
    done.set_result(b"")

    async def with_wait():
        await asyncio.wait([done], timeout=2.0, return_when=asyncio.FIRST_COMPLETED)

    async def with_timer():
        h = loop.call_later(2.0, _noop)
        await done
        h.cancel()

    row("miss path: asyncio.wait([fut], timeout, FIRST_COMPLETED)", _drive(with_wait),
        "a done future: the bookkeeping only")
    row("miss path: await fut + call_later/cancel (the alternative)", _drive(with_timer))

    async def nothing():
        return None

    def task_cycle():
        loop.create_task(nothing())

    row("miss path: loop.create_task (what a Task per forwarded query would cost)", task_cycle,
        "creation only; it runs later")
    await asyncio.sleep(0)


def _noop() -> None:
    pass


def _drive(make):
    def run():
        c = make()
        with contextlib.suppress(StopIteration):
            c.send(None)
    return run


def _coroutines():
    """What a stage would cost as a coroutine: one level vs two levels of await."""
    async def leaf():
        return 1

    async def level():
        return await leaf()

    return _drive(leaf), _drive(level)


def render(rows: list[tuple[str, float, str]], number: int) -> str:
    out = ["| step | µs per call | note |", "|---|---:|---|"]
    out += [f"| {label} | {us:.2f} | {note} |" for label, us, note in rows]
    return "\n".join(out) + f"\n\n(thread CPU time, best of 5 x {number:,} calls each)\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list-size", type=int, default=100_000)
    ap.add_argument("--number", type=int, default=100_000)
    args = ap.parse_args()
    if servers.require("nsd"):
        print("needs nsd (apt-get install nsd)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hushdns-micro-"))
    try:
        try:
            import uvloop
            rows = uvloop.run(measure(args, work))
        except ImportError:
            rows = asyncio.run(measure(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows, args.number))
    return 0


if __name__ == "__main__":
    sys.exit(main())

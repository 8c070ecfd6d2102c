"""A/B of the Python per query at the UDP edge: this checkout against another, same run.

    python bench/ab_edge.py --against /tmp/old-checkout [--rounds 3] [--number 50000]

Why: on a shared 2-core machine absolute numbers move by 30% between runs, so two
builds are measured in alternating subprocesses, several rounds, and compared as
ratios per round.  Each subprocess builds a real ``Server`` (no sockets: the edge
is called with a sink that drops the reply) with a 100k-name list and a cache
filled directly (no upstream needed), and times, in thread CPU µs per query
(best of 5), what a UDP datagram costs from the edge to the reply bytes:

- blocked-exact: one listed name, asked again and again (the memo's best case);
- blocked-first-sight: 100k different subdomains of listed names, in turn;
- hit-1k: 1,000 cached names in turn (the memo answers most);
- hit-wide: 90,000 cached names in turn (the memo rarely answers);
- tcp-blocked / tcp-hit: ``Server.handle`` as TCP (no memo), the pipeline alone.

It works with the chain + fast path API (``Server.fast``) and the pipeline + memo
API (``Server.memo``), so it can compare across that change.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Sink:
    def sendto(self, wire: object, addr: object = None) -> None:
        pass


def measure(repo: Path, number: int, list_size: int) -> dict[str, float]:
    sys.path.insert(0, str(repo))
    sys.path.insert(1, str(HERE))
    import data
    import dnslib
    import servers

    from resolver.config import load_config
    from resolver.lists.loader import load_all
    from resolver.server import Server
    from resolver.wire import parse_answer, parse_query

    work = Path(tempfile.mkdtemp(prefix="hushdns-ab-"))
    names = data.blocklist_names(list_size)
    blist = data.write_blocklist(work / "blocklist.txt", names)
    cfg_path = work / "c.yaml"
    cfg_path.write_text('listen: ["127.0.0.1:0"]\nupstreams: ["127.0.0.1:1"]\n'
                        f"blocking: {{mode: nxdomain, lists: {{bench: {blist}}}}}\n"
                        "cache: {max_entries: 100000}\n")
    try:   # the SQLite query log off (its writer is a process of its own), where it exists
        cfg_path.write_text(cfg_path.read_text() + "query_log: false\n")
        cfg = load_config(cfg_path)
    except Exception:
        cfg_path.write_text(cfg_path.read_text().replace("query_log: false\n", ""))
        cfg = load_config(cfg_path)
    server = Server(cfg)
    server.lists = load_all(cfg)
    server._install(cfg, server.lists)
    if hasattr(server, "pipeline"):
        from resolver.stages.cache import Cache

        entries = server.pipeline.find(Cache).entries
    else:
        entries = server.cache.entries
    now = time.monotonic()

    def cache(name: str) -> bytes:
        pkt = servers.dns_query(name)[1]
        q = parse_query(pkt)
        rep = dnslib.DNSRecord.parse(pkt).reply()
        rep.add_answer(dnslib.RR(name, 1, ttl=3600, rdata=dnslib.A("192.0.2.1")))
        a = parse_answer(rep.pack(), q, 0, 86400, 3600)
        a.stored = now
        entries[q.key] = a
        return pkt

    hot = [cache(f"hit{i}.{data.ZONE}") for i in range(1000)]
    wide = [cache(f"w{i}.{data.ZONE}") for i in range(90_000)]
    first = [servers.dns_query(f"x{i}.{n}")[1] for i, n in enumerate(names[:100_000])]
    exact = servers.dns_query(names[len(names) // 2])[1]
    addr = ("127.0.0.1", 40000)
    sink = Sink()
    handle = server.handle
    server.clients.lookup(addr[0])
    if hasattr(server, "memo"):
        memo = server.memo

        def udp(pkt: bytes) -> None:
            w = memo.answer(pkt, addr, sink)
            if w is None:
                handle(pkt, addr, "udp", sink)
    else:
        fast = server.fast

        def udp(pkt: bytes) -> None:
            w = fast(pkt, addr)
            if w is None:
                handle(pkt, addr, "udp", sink)
            elif type(w) is not bytes:
                server.handle_parsed(w, addr, sink)

    try:   # what a serving process does once listening (bigger young generation, frozen start-up heap)
        from resolver.lifecycle import tune_gc

        tune_gc()
    except ImportError:
        pass

    def per_call(fn) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5, timer=time.thread_time)) / number * 1e6

    out = {}
    cyc = itertools.cycle
    for label, pkts in (("blocked-exact", [exact]), ("blocked-first-sight", first),
                        ("hit-1k", hot), ("hit-wide", wide)):
        it = cyc(pkts)
        out[label] = per_call(lambda it=it: udp(next(it)))
    it_b, it_h = cyc(first), cyc(hot)
    out["tcp-blocked"] = per_call(lambda: handle(next(it_b), addr, "tcp", sink))
    out["tcp-hit"] = per_call(lambda: handle(next(it_h), addr, "tcp", sink))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", type=Path, help="the other checkout (A); this one is B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=50_000)
    ap.add_argument("--list-size", type=int, default=100_000)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)   # internal: measure one repo
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.number, args.list_size)))
        return 0
    if args.against is None:
        ap.error("--against is required")
    this = HERE.parent
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for tag, repo in (("A", args.against), ("B", this))[:: 1 if r % 2 == 0 else -1]:
            got = subprocess.run([sys.executable, __file__, "--one", str(repo), "--number",
                                  str(args.number), "--list-size", str(args.list_size)],
                                 capture_output=True, text=True, check=True, cwd=repo)
            runs[tag].append(json.loads(got.stdout.strip().splitlines()[-1]))
    print(f"| µs per query (thread CPU) | A {args.against} | B this | B/A (median of {args.rounds} rounds) |")
    print("|---|---:|---:|---:|")
    for k in runs["A"][0]:
        a = statistics.median(x[k] for x in runs["A"])
        b = statistics.median(x[k] for x in runs["B"])
        ratio = statistics.median(y[k] / x[k] for x, y in zip(runs["A"], runs["B"], strict=True))
        print(f"| {k} | {a:.2f} | {b:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

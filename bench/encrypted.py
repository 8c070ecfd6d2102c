"""Encrypted DNS, same run: cache misses through hushdns over UDP, DoT and DoH to one unbound,
and the memory an idle upstream connection and a served TLS client cost.

    /work/venv/bin/python bench/encrypted.py [--seconds 6] [--rounds 2] [--conns 200]

Why this shape: the question is what the transport costs hushdns, so the upstream
is the same unbound (one thread, answering every name under ``test.`` from a
redirect zone: no recursion) for all three, every query is a name hushdns has
not seen (a miss that must go upstream), and the transports take turns
(udp, tls, https, udp, ...) so drift on a shared machine hits them alike.
Reported: dnsperf qps, the ratio to UDP of the same round, and queries per
hushdns CPU-second.  Memory: RSS growth of this process per idle DoT / DoH
upstream connection, and of the hushdns process per connected DoT / DoH client.
Everything is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import dnsperf  # noqa: E402
import servers  # noqa: E402

from tests.tlskit import Unbound, make_pki  # noqa: E402


def rss_self_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hushdns(wd: Path, name: str, upstream: str, extra: str = "") -> servers.Proc:
    d = wd / name
    d.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    conf = d / "hushdns.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{port}"{extra and ", " + extra}]\n'
                    f'upstreams: ["{upstream}"]\nmetrics: {{listen: null}}\n'
                    "blocking: {lists: {}}\ncache: {max_entries: 200000}\n"
                    "server: {reply_memo: false%s}\n" % wd.joinpath("server-extra").read_text())
    env = dict(os.environ, PYTHONPATH=str(servers.REPO_ROOT))
    return servers.Proc(name, port, [sys.executable, "-m", "resolver", "serve", "-c", str(conf)], wd,
                        cwd=servers.REPO_ROOT, env=env)


def misses(wd: Path, tag: str, n: int) -> Path:
    p = wd / f"names-{tag}.txt"
    p.write_text("".join(f"m{i}.{tag}.test A\n" for i in range(n)))
    return p


def throughput(wd: Path, ub: Unbound, ca: Path, seconds: float, rounds: int) -> dict[str, list]:
    urls = {"udp": f"127.0.0.1:{ub.port}",
            "tls": f"tls://127.0.0.1:{ub.tls_port}#dns.test ca_file={ca}",
            "https": f"https://127.0.0.1:{ub.https_port}/dns-query#dns.test ca_file={ca}"}
    out: dict[str, list] = {t: [] for t in urls}
    for r in range(rounds):
        for t, url in urls.items():
            proc = hushdns(wd, f"{t}{r}", url).start(probe_name="probe.test")
            try:
                names = misses(wd, f"{t}{r}", int(seconds * 30000))
                cpu0 = proc.cpu_seconds()
                res = dnsperf.run(proc.port, names, duration=seconds, clients=4, outstanding=200,
                                  once=True)
                cpu = proc.cpu_seconds() - cpu0
                out[t].append((res.qps, res.completed / cpu if cpu else 0.0, res.lost))
                print(f"round {r} {t:5s}: {res.qps:8.0f} qps, {res.completed / max(cpu, 1e-9):8.0f} "
                      f"q/CPU-s, lost {res.lost}", flush=True)
            finally:
                proc.stop()
    return out


async def _upstream_conns(ub: Unbound | argparse.Namespace, ca: Path, scheme: str, n: int) -> float:
    from resolver.config import ServerOptions
    from resolver.encrypted_endpoints import parse_upstream_url
    from resolver.stats import Stats
    from resolver.upstream import Upstream, Upstreams
    from resolver.wire import parse_query

    url = f"tls://127.0.0.1:{ub.tls_port}#dns.test ca_file={ca}" if scheme == "tls" else \
        f"https://127.0.0.1:{ub.https_port}/dns-query#dns.test ca_file={ca}"
    ups = Upstreams(ServerOptions(upstream_idle_timeout=600), Stats())

    def q(i: int) -> object:
        qn = b"".join(bytes([len(p)]) + p.encode() for p in f"c{i}.test".split(".")) + b"\0"
        return parse_query(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qn + b"\x00\x01\x00\x01")

    warm = Upstream.of(parse_upstream_url(url)[0])
    await ups.query(q(0), [warm])       # code paths and the SSL context loaded
    gc.collect()
    before = rss_self_kib()
    conns = [Upstream.of(parse_upstream_url(url)[0]) for _ in range(n)]
    await asyncio.gather(*(ups.query(q(i), [u]) for i, u in enumerate(conns)))
    gc.collect()
    per = (rss_self_kib() - before) / n
    for u in [warm, *conns]:
        u.close()
    return per


def _served_clients(wd: Path, ub: Unbound, n: int) -> dict[str, float]:
    import h2.connection

    srv = make_pki(wd / "srvpki", "hushdns.lan", ip="127.0.0.1")
    tls_port, https_port = servers.free_port(), servers.free_port()
    wd.joinpath("server-extra").write_text(
        f", tls_certificate: {srv.cert}, tls_key: {srv.key}, tcp_max_connections: {2 * n + 10}")
    proc = hushdns(wd, "served", f"127.0.0.1:{ub.port}",
                   f'"tls://127.0.0.1:{tls_port}", "https://127.0.0.1:{https_port}/dns-query"')
    proc.start(probe_name="probe.test")
    wd.joinpath("server-extra").write_text("")
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    ctx.set_alpn_protocols(["h2"])
    qwire = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04test\x00\x00\x01\x00\x01"
    out: dict[str, float] = {}
    held: list[ssl.SSLSocket] = []
    try:
        for kind, port in (("tls", tls_port), ("https", https_port)):
            def connect(kind: str = kind, port: int = port) -> ssl.SSLSocket:
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 5),
                                    server_hostname="hushdns.lan")
                if kind == "tls":
                    s.sendall(len(qwire).to_bytes(2, "big") + qwire)
                else:
                    c = h2.connection.H2Connection()
                    c.initiate_connection()
                    c.send_headers(1, [(":method", "POST"), (":scheme", "https"),
                                       (":authority", "hushdns.lan"), (":path", "/dns-query"),
                                       ("content-type", "application/dns-message")])
                    c.send_data(1, qwire, end_stream=True)
                    s.sendall(c.data_to_send())
                s.settimeout(5)
                s.recv(4096)
                return s
            held.append(connect())   # warm-up: first connection of the kind
            time.sleep(0.3)
            before = proc.rss_kib()
            held += [connect() for _ in range(n)]
            time.sleep(0.5)
            out[kind] = (proc.rss_kib() - before) / n
    finally:
        for s in held:
            s.close()
        proc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--upstream-memory", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.upstream_memory:
        scheme, tls_port, https_port, ca, n = a.upstream_memory
        ports = argparse.Namespace(tls_port=int(tls_port), https_port=int(https_port))
        runner = asyncio.run
        try:
            import uvloop  # type: ignore[import-not-found]

            runner = uvloop.run
        except ImportError:
            pass
        print(runner(_upstream_conns(ports, Path(ca), scheme, int(n))))  # type: ignore[arg-type]
        return 0
    missing = servers.require("unbound", "dnsperf")
    if missing:
        print(f"needs {', '.join(missing)}", file=sys.stderr)
        return 2
    wd = Path(tempfile.mkdtemp(prefix="hushdns-enc-"))
    pki = make_pki(wd / "pki", "dns.test")
    ub = Unbound(wd / "unbound", pki, threads=1, max_tcp=4 * a.conns)
    try:
        wd.joinpath("server-extra").write_text("")
        res = throughput(wd, ub, pki.ca, a.seconds, a.rounds)
        udp = [q for q, _, _ in res["udp"]]
        print("\ncache misses, median of rounds:")
        for t, rows in res.items():
            qps = statistics.median(q for q, _, _ in rows)
            cpu = statistics.median(c for _, c, _ in rows)
            ratio = statistics.median(q / u for (q, _, _), u in zip(rows, udp, strict=True))
            print(f"  {t:5s}: {qps:8.0f} qps ({ratio:.2f}x UDP), {cpu:8.0f} q/CPU-s")
        print("\nmemory:")
        for scheme in ("tls", "https"):
            # A fresh process each (under uvloop, as serve runs): freed memory of one
            # kind would otherwise be reused by the next and hide its cost.
            out = subprocess.run([sys.executable, __file__, "--upstream-memory", scheme,
                                  str(ub.tls_port), str(ub.https_port), str(pki.ca), str(a.conns)],
                                 capture_output=True, text=True, timeout=120)
            per = float(out.stdout.strip() or "nan")
            print(f"  idle {scheme} upstream connection: {per:.1f} KiB each ({a.conns} connections)")
        for kind, per in _served_clients(wd, ub, a.conns).items():
            print(f"  served {kind} client: {per:.1f} KiB each in hushdns ({a.conns} clients)")
    finally:
        ub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak: mixed traffic at a fixed rate from several loopback clients, with faults injected.

The fake upstream misbehaves per name (silence, garbage first, a forged
wrong-ID answer first, TC) and, for a while in the middle, goes silent
altogether.  One client floods past the rate limit.  Asserted at the end: the
server is alive, every query was answered or counted as dropped, no forged
address ever reached a client, the counters agree with what was sent, and
the process RSS stayed flat once the cache was full.

The default run takes ~15 s; ``pytest --soak`` adds a 60 s run.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rcode
import dnslib
import pytest

from resolver.stages.cache import Cache
from tests.fakes import FakeUpstream, default_answer, start_server

POISON = "6.6.6.6"
FORWARDED = {"ok", "garbage", "wrongid", "tc", "cname", "nx", "silent"}
# category -> expected rcode when the upstream is not in its outage window
EXPECT = {"ok": 0, "hot": 0, "garbage": 0, "wrongid": 0, "tc": 0, "cname": 0, "nx": 3,
          "silent": 2, "blocked": 3, "any": 0, "malformed": 1}
MIX = (["hot"] * 30 + ["ok"] * 15 + ["garbage"] * 8 + ["wrongid"] * 8 + ["tc"] * 5
       + ["cname"] * 6 + ["nx"] * 6 + ["silent"] * 4 + ["blocked"] * 10 + ["any"] * 4
       + ["malformed"] * 4)


def vm_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak_upstream() -> FakeUpstream:
    def answer(q: dnslib.DNSRecord):
        name = str(q.q.qname)
        if name.startswith("silent-"):
            return None
        return default_answer(q)

    def forge(data: bytes) -> bytes | None:
        q = dnslib.DNSRecord.parse(data)
        name = str(q.q.qname)
        if name.startswith("garbage-"):
            return b"\xff" * 7 + data[:2] + b"garbage"
        if name.startswith("wrongid-"):
            r = dnslib.DNSRecord(dnslib.DNSHeader(id=q.header.id ^ 0x5A5A, qr=1, ra=1), q=q.q)
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=86400, rdata=dnslib.A(POISON)))
            return r.pack()
        return None

    return FakeUpstream(answer=answer, before=[forge],
                        truncate_udp=lambda q: str(q.q.qname).startswith("tc-"))


@dataclass(slots=True)
class Sent:
    category: str
    name: str
    at: float


@dataclass
class Client:
    """One loopback client sending at a fixed rate and checking each reply as it arrives.

    Only outstanding queries and counters are kept (a parsed reply costs ~3 KB): the
    test's own memory must not grow with the number of queries, or it would hide (or
    fake) a leak in the RSS check.
    """

    source: str
    rate: float
    mix: list[str]
    seed: int
    lenient: tuple[float, float] = (0.0, 0.0)   # forwarded queries sent then may SERVFAIL
    track: bool = True       # False: only count replies (a flooder's drops never come back)
    outstanding: dict[int, Sent] = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)        # category -> queries sent
    answered: int = 0
    wrong: int = 0
    poisoned: int = 0
    problems: list[str] = field(default_factory=list)    # the first few, for the message

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def run(self, srv, duration: float, stop: threading.Event) -> None:
        rnd = random.Random(self.seed)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.source, 0))
        reader = threading.Thread(target=self._read, args=(s, stop), daemon=True)
        reader.start()
        t0 = time.monotonic()
        i = 0
        while (now := time.monotonic()) - t0 < duration:
            due = t0 + i / self.rate
            if due > now:
                time.sleep(due - now)
            cat = rnd.choice(self.mix)
            qid = i & 0xFFFF
            name, wire = self._query(cat, i, qid, rnd)
            if self.track:
                self.outstanding[qid] = Sent(cat, name, time.monotonic())
            self.sent[cat] += 1
            s.sendto(wire, (srv.host, srv.port))
            i += 1
        reader.join()
        s.close()

    def _query(self, cat: str, i: int, qid: int, rnd: random.Random) -> tuple[str, bytes]:
        tag = f"{self.source.replace('.', '-')}-{i}"
        name = {"hot": f"hot{rnd.randrange(20)}.soak.test",
                "blocked": f"t{i}.ads.blocked.test",
                "any": "any.soak.test",
                "cname": f"cname-target{i}--soak--test.soak.test",
                "nx": f"nx.{tag}.soak.test"}.get(cat, f"{cat}-{tag}.soak.test")
        q = dns.message.make_query(name, "ANY" if cat == "any" else "A")
        q.id = qid
        wire = q.to_wire()
        if cat == "malformed":
            wire = wire[:12 + 5]           # the question cut short: FORMERR
        return name, wire

    def _problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    def _read(self, s: socket.socket, stop: threading.Event) -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                data = s.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                msg = dns.message.from_wire(data)
            except Exception as exc:
                self._problem(f"unparseable reply: {exc}")
                continue
            if not self.track:
                self.answered += 1
                if msg.rcode() != 0:
                    self.wrong += 1
                    self._problem(f"flooder got {dns.rcode.to_text(msg.rcode())}")
                continue
            sent = self.outstanding.pop(msg.id, None)
            if sent is None:
                self._problem(f"unexpected or second reply for id {msg.id}")
                continue
            self.answered += 1
            self._check(sent, msg)

    def _check(self, sent: Sent, msg: dns.message.Message) -> None:
        if sent.category != "malformed" and (
                not msg.question or msg.question[0].name.to_text().rstrip(".") != sent.name):
            self._problem(f"reply for another question: {sent} {msg.question}")
        if any(rd.to_text() == POISON for rrset in msg.answer for rd in rrset):
            self.poisoned += 1
            self._problem(f"poisoned: {sent}")
        lenient = sent.category in FORWARDED and self.lenient[0] <= sent.at <= self.lenient[1]
        if msg.rcode() != EXPECT[sent.category] and not lenient:
            self.wrong += 1
            self._problem(f"{sent}: {dns.rcode.to_text(msg.rcode())}")


def tcp_client(srv, source: str, duration: float, rate: float, out: Counter) -> None:
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < duration:
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        q = dns.message.make_query(f"tcp{i % 50}.soak.test", "A")
        try:
            r = dns.query.tcp(q, srv.host, port=srv.port, timeout=5, source=source)
            out[dns.rcode.to_text(r.rcode())] += 1
        except Exception as exc:   # counted, asserted on below
            out[f"error {type(exc).__name__}"] += 1
        out["sent"] += 1
        i += 1


def run_soak(tmp_path, duration: float) -> None:
    up = soak_upstream()
    srv = start_server(
        tmp_path, up,
        "server: {upstream_timeout: 0.3, upstream_total_timeout: 1.0}\n"
        "cache: {max_entries: 1000, servfail_ttl: 1}\n"
        "rate_limit: {qps: 100, burst: 100}\n",
        lists={"vendor": "ads.blocked.test\n"})
    try:
        normal = [Client(f"127.0.0.{i}", 40.0, MIX, seed=i) for i in range(2, 6)]
        flooder = Client("127.0.0.6", 150.0, ["hot"], seed=6, track=False)
        clients = [*normal, flooder]
        stop = threading.Event()
        threads = [threading.Thread(target=c.run, args=(srv, duration, stop)) for c in clients]
        tcp_out: Counter = Counter()
        threads.append(threading.Thread(target=tcp_client,
                                        args=(srv, "127.0.0.7", duration, 10.0, tcp_out)))
        # The upstream goes silent for a while in the middle of the run; forwarded
        # queries sent around then may get SERVFAIL (or a stale answer).
        outage = (duration * 0.5, duration * 0.5 + 2.0)
        t0 = time.monotonic()
        for c in clients:
            c.lenient = (t0 + outage[0] - 1.5, t0 + outage[1] + 1.5)
        for t in threads:
            t.start()
        rss: list[tuple[float, int]] = []
        health: list[tuple[float, int | None]] = []
        in_outage = False
        while any(t.is_alive() for t in threads[:len(clients)]):
            now = time.monotonic() - t0
            up.seen.clear()                 # the fake's query log is not the server's memory
            rss.append((now, vm_rss_kb()))
            health.append((now, srv.stats.upstream_state.get(up.address)))
            if not in_outage and outage[0] <= now < outage[1]:
                up.silent = in_outage = True
            elif in_outage and now >= outage[1]:
                up.silent = in_outage = False
            if now > duration:
                time.sleep(2.0)             # let the last (silent: 1 s) queries finish
                stop.set()
            time.sleep(0.25)
        for t in threads:
            t.join(10)
        assert srv.thread.is_alive()

        # Every query from a well-behaved client was answered, as expected, never poisoned.
        for c in normal:
            assert not c.outstanding, \
                f"{c.source}: {len(c.outstanding)} unanswered, e.g. {list(c.outstanding.values())[:3]}"
            assert c.answered == c.total
            assert c.wrong == 0 and c.poisoned == 0 and not c.problems, c.problems

        # The flooder: what was not answered was dropped by the rate limit, and counted.
        label = flooder.source
        dropped = sum(n for (cl, _, res), n in srv.stats.queries.items()
                      if cl == label and res == "dropped")
        assert dropped > 0
        assert flooder.answered + dropped == flooder.total
        assert srv.stats.limited[(label, "ratelimit")] == dropped
        assert flooder.wrong == 0 and not flooder.problems, flooder.problems

        # The counters agree with what each client sent.
        per_client: Counter = Counter()
        for (cl, _, _), n in srv.stats.queries.items():
            per_client[cl] += n
        for c in clients:
            assert per_client[c.source] == c.total, c.source
        assert tcp_out["sent"] == per_client["127.0.0.7"] > 0
        assert tcp_out["NOERROR"] >= tcp_out["sent"] - 25, tcp_out   # SERVFAIL only in the outage
        # Forged replies were seen and rejected; truncation was followed over TCP.
        forged = sum(c.sent["garbage"] + c.sent["wrongid"] for c in normal)
        rejected = srv.stats.upstream_requests.get((up.address, "spoof_rejected"), 0)
        assert rejected >= forged * 0.9
        assert srv.stats.upstream_requests.get((up.address, "truncated"), 0) > 0
        assert len(srv.server.pipeline.find(Cache).entries) <= 1000
        # Marked down during the outage, back in service soon after it (while traffic flows;
        # at the very end only timeouts of silent-* names arrive, which may mark it down again).
        assert any(u == 0 for t, u in health if outage[0] <= t <= outage[1] + 1)
        assert any(u == 1 for t, u in health if outage[1] + 1 <= t <= duration)

        # RSS flat once warm: the cache (1,000 entries) and the parsed-question memo fill
        # in the first seconds; after that a leak of even 1 KB per query would show.
        settled = [kb for t, kb in rss if t >= duration * 0.3]
        assert settled
        growth_mb = (max(settled[len(settled) // 2:]) - settled[0]) / 1024
        assert growth_mb < 8, f"RSS grew {growth_mb:.1f} MB after warm-up: {rss[::8]}"
    finally:
        srv.stop()
        up.close()


def test_soak_mixed_traffic_with_faults(tmp_path):
    run_soak(tmp_path, 15.0)


@pytest.mark.soak
@pytest.mark.timeout(180)
def test_soak_long(tmp_path):
    run_soak(tmp_path, 60.0)

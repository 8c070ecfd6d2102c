"""The documented scale-out (docs/scale-out.md), for real: dnsdist in front of two hushdns
processes, PROXY protocol v2 between them, dnstap from one of them to fstrm_capture.

- per-client counts are exact through dnsdist (summed over both instances' /metrics);
- every query one instance answered is in its dnstap stream exactly once, with the
  client's address (read back with dnstap-ldns -r);
- one instance killed: dnsdist marks it down, and the queries lost at a fixed rate are
  bounded by its health-check window; restarted on the same port: it gets queries again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeUpstream, free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(shutil.which("dnsdist") is None,
                       reason="dnsdist not installed (Debian package dnsdist; .ci/run installs it)"),
    pytest.mark.skipif(shutil.which("fstrm_capture") is None or shutil.which("dnstap-ldns") is None,
                       reason="fstrm_capture / dnstap-ldns not installed (Debian packages fstrm-bin, "
                              "dnstap-ldns; .ci/run installs them)"),
]

CHECK_INTERVAL = 1        # dnsdist checkInterval (s), maxCheckFailures=1, checkTimeout below
CHECK_TIMEOUT_MS = 300
RATE = 50                 # queries per second during the kill


def _metrics(port: int) -> dict[str, int]:
    """client -> hushdns_queries_total summed over qtype and result."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "hushdns_queries_total":
                c = s.labels["client"]
                out[c] = out.get(c, 0) + int(s.value)
    return out


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _query(port: int, name: str, source: str, timeout: float = 1.0) -> dns.message.Message | None:
    import dns.query
    try:
        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                             source=source, timeout=timeout)
    except dns.exception.Timeout:
        return None


class Instance:
    """One hushdns process (python -m resolver serve) on fixed ports."""

    def __init__(self, tmp: Path, name: str, upstream: str, extra: str = "") -> None:
        self.dns, self.metrics = free_port(), free_port()
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(
            f'listen: ["127.0.0.1:{self.dns}"]\nupstreams: ["{upstream}"]\n'
            f'metrics: {{listen: "127.0.0.1:{self.metrics}"}}\n'
            "server: {proxy_protocol_from: [127.0.0.1/32]}\n"
            "access: {allow: [127.0.0.0/8]}\n"
            f"blocking:\n  lists:\n    ads: {tmp / 'ads.txt'}\n" + extra)
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(self.config)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("a"), env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait(lambda: _metrics(self.metrics) is not None, 20, f"{self.config.name} to serve")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class Rate:
    """Send one query every 1/RATE s from one socket; count the ones never answered."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(0.2)
        self.port = port
        self.sent: dict[int, float] = {}
        self.answered: set[int] = set()
        self.running = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.answered.add(data[0] << 8 | data[1])

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        n = int(seconds * RATE)
        for i in range(n):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            qid = (len(self.sent) + 1) & 0xFFFF
            q = dns.message.make_query(f"r{qid}.ok.example", "A")
            q.id = qid
            self.sent[qid] = time.monotonic()
            self.sock.sendto(q.to_wire(), ("127.0.0.1", self.port))

    def lost(self) -> set[int]:
        time.sleep(1.0)   # late answers
        self.running = False
        self.reader.join(2)
        self.sock.close()
        return set(self.sent) - self.answered


def test_dnsdist_two_instances_proxy_v2_dnstap_and_failover(tmp_path: Path) -> None:
    up = FakeUpstream()
    (tmp_path / "ads.txt").write_text("ads.example\n")
    tap_sock, tap_out = tmp_path / "h1.tap", tmp_path / "h1.fstrm"
    capture = subprocess.Popen(["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u", str(tap_sock),
                                "-w", str(tap_out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h1 = Instance(tmp_path, "h1", up.address, f"dnstap: {{socket: {tap_sock}, identity: h1}}\n")
    h2 = Instance(tmp_path, "h2", up.address)
    front = free_port()
    conf = tmp_path / "dnsdist.conf"
    servers = "".join(
        f'newServer{{address="127.0.0.1:{h.dns}", name="{n}", useProxyProtocol=true, '
        f"checkInterval={CHECK_INTERVAL}, maxCheckFailures=1, rise=1, "
        f"checkTimeout={CHECK_TIMEOUT_MS}}}\n" for n, h in (("h1", h1), ("h2", h2)))
    conf.write_text('setSecurityPollSuffix("")\n'   # no security-poll query leaves the machine
                    f'setLocal("127.0.0.1:{front}")\n' + servers + "setServerPolicy(roundrobin)\n")
    dnsdist: subprocess.Popen | None = None
    try:
        _wait(tap_sock.exists, 10, "fstrm_capture's socket")
        h1.start()
        h2.start()
        dnsdist = subprocess.Popen(["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def both_answer() -> bool:
            _query(front, "warm.ok.example", "127.0.0.9", 0.5)
            return _metrics(h1.metrics).get("127.0.0.9", 0) > 0 and \
                _metrics(h2.metrics).get("127.0.0.9", 0) > 0
        _wait(both_answer, 20, "dnsdist to use both instances")

        # 1. Per-client counts exact through dnsdist; unique names so dnstap can be matched.
        sent = {"127.0.0.2": 30, "127.0.0.3": 20}
        for src, n in sent.items():
            for i in range(n):
                name = f"c{src[-1]}-{i}.{'ads' if i % 2 else 'ok'}.example"
                assert _query(front, name, src) is not None, name
        m1, m2 = _metrics(h1.metrics), _metrics(h2.metrics)
        for src, n in sent.items():
            assert m1.get(src, 0) + m2.get(src, 0) == n, (src, m1, m2)
            assert m1.get(src, 0) > 0 and m2.get(src, 0) > 0   # round robin used both
        assert "127.0.0.1" not in {k for k, v in m1.items() if k in sent}

        # 2. h1's dnstap stream: each of its answers exactly once, with the client's address.
        time.sleep(0.5)                      # the writer thread polls every 5 ms
        capture.send_signal(signal.SIGINT)
        capture.wait(10)
        text = subprocess.run(["dnstap-ldns", "-r", str(tap_out)], capture_output=True, text=True,
                              check=True).stdout.splitlines()
        cq = [(ln.split()[3], ln.split()[6].strip('"').rstrip(".")) for ln in text
              if ln.split()[2] == "CQ"]
        ours = [(addr, name) for addr, name in cq if name.startswith("c")]
        assert len(ours) == len(set(ours))                                   # exactly once
        assert all(name.startswith(f"c{addr[-1]}-") for addr, name in ours)  # right client
        for src in sent:
            assert sum(a == src for a, _ in ours) == m1[src]

        # 3. Kill h2: dnsdist marks it down; loss bounded by the health-check window.
        rate = Rate(front, "127.0.0.4")
        rate.run(1.0)
        h2.kill()
        killed = time.monotonic()
        rate.run(4.0)
        lost = rate.lost()
        window = CHECK_INTERVAL * 1 + CHECK_TIMEOUT_MS / 1000 + 1.0   # + a scheduling margin
        assert len(lost) <= RATE * window, f"{len(lost)} of {len(rate.sent)} lost; window {window}s"
        late = [qid for qid in lost if rate.sent[qid] > killed + window]
        assert not late, f"{len(late)} queries lost after the health-check window: not marked down"

        # 4. Restart h2 on its port: dnsdist marks it up and sends it queries again.
        h2.start()

        def h2_back() -> bool:
            _query(front, "back.ok.example", "127.0.0.5", 0.5)
            return _metrics(h2.metrics).get("127.0.0.5", 0) > 0
        _wait(h2_back, 15, "dnsdist to use the restarted instance")
    finally:
        if dnsdist is not None:
            dnsdist.terminate()
            dnsdist.wait(5)
        if capture.poll() is None:
            capture.kill()
            capture.wait(5)
        h1.stop()
        h2.stop()
        up.close()

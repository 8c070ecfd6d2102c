"""workers: N — several processes on one port (SO_REUSEPORT), one exact /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from resolver.stats import Stats
from resolver.workers import merge, plain_stats
from tests.fakes import FakeUpstream, free_port


def test_merge_adds_counters_and_histograms_and_keeps_list_facts() -> None:
    a, b = Stats(), Stats()
    for s, n in ((a, 3), (b, 4)):
        for _ in range(n):
            s.query("tv", "A", "blocked", 0.0002)
            s.block("tv", "xiaomi", "tracking.miui.com")
        s.cache_hits = n
        s.list_entries = {"xiaomi": 40}
        s.upstream_transport = {"tls://192.0.2.1#dns.example": "tls", "192.0.2.2:53": "udp"}
    b.config_reload_success = 0
    total = merge([plain_stats(a), plain_stats(b)])
    assert total.queries[("tv", "A", "blocked")] == 7
    assert total.blocked[("tv", "xiaomi")] == 7
    assert total.blocked_domains[("xiaomi", "tracking.miui.com")] == 7
    assert total.request_duration["blocked"].n == 7 and sum(total.request_duration["blocked"].counts) == 7
    assert total.cache_hits == 7 and total.list_entries == {"xiaomi": 40}
    assert total.config_reload_success == 0
    assert total.upstream_transport == {"tls://192.0.2.1#dns.example": "tls", "192.0.2.2:53": "udp"}


def _metric(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_two_workers_share_the_port_and_metrics_are_exact(tmp_path: Path) -> None:
    up = FakeUpstream()
    port, mport = free_port(), free_port()
    (tmp_path / "bl.txt").write_text("tracker.example\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{up.address}"]\nworkers: 2\n'
                   f'blocking: {{lists: {{bl: bl.txt}}}}\nmetrics: {{listen: "127.0.0.1:{mport}"}}\n')
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "supervisor did not come up"
                time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 2
        # Each query from a fresh socket (fresh source port): the kernel spreads them.
        for i in range(200):
            r = dns.query.udp(dns.message.make_query(f"n{i}.tracker.example", "A"),
                              "127.0.0.1", port=port, timeout=3)
            assert r.rcode() == dns.rcode.NXDOMAIN
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert _metric(text, "hushdns_blocked_total", client="127.0.0.1", list="bl") == 200
        # A reload reaches every worker.
        (tmp_path / "bl.txt").write_text("tracker.example\nnew.example\n")
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(1.5)
        for _ in range(10):
            r = dns.query.udp(dns.message.make_query("new.example", "A"), "127.0.0.1",
                              port=port, timeout=3)
            assert r.rcode() == dns.rcode.NXDOMAIN
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        up.close()
    assert proc.returncode == 0, out
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(p) for p in out)


def _up(mport: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=1)
    except OSError:
        return False
    return True


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_dead_workers_are_logged_restarted_from_the_served_config_and_keep_their_counts(
        tmp_path: Path) -> None:
    up = FakeUpstream()
    port, mport = free_port(), free_port()
    (tmp_path / "bl.txt").write_text("tracker.example\n")
    cfg = tmp_path / "c.yaml"
    good = (f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{up.address}"]\nworkers: 2\n'
            f'blocking: {{lists: {{bl: bl.txt}}}}\nmetrics: {{listen: "127.0.0.1:{mport}"}}\n')
    cfg.write_text(good)
    log_path = tmp_path / "supervisor.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)],
                            stdout=log_file, stderr=subprocess.STDOUT, text=True)

    def scrape() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        return _metric(text, "hushdns_blocked_total", client="127.0.0.1", list="bl")

    def blocked(i: int) -> None:
        r = dns.query.udp(dns.message.make_query(f"n{i}.tracker.example", "A"), "127.0.0.1",
                          port=port, timeout=3)
        assert r.rcode() == dns.rcode.NXDOMAIN

    try:
        def up_and_scraping() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=1)
                return len(_children(proc.pid)) == 2
            except OSError:
                return False

        _wait(up_and_scraping, 30, "supervisor did not come up")
        for i in range(200):
            blocked(i)
        assert scrape() == 200
        # The file on disk breaks; a worker dies hard.  Its replacement must not read the file.
        cfg.write_text(good + "no_such_key: 1\n")
        before = _children(proc.pid)
        os.kill(before[0], signal.SIGKILL)
        _wait(lambda: log_path.read_text().count("started again") == 1, 15,
              "the killed worker was not started again")
        assert scrape() >= 200, "merged counters went down when a worker died"
        for i in range(200, 260):
            blocked(i)
        total = scrape()
        assert total >= 260
        # A worker that exits 0 (asked to stop by someone else) is logged and restarted too.
        os.kill(before[1], signal.SIGTERM)
        _wait(lambda: log_path.read_text().count("started again") == 2, 15,
              "the worker that exited 0 was not started again")
        assert scrape() >= total
        time.sleep(1.5)   # no restart loop: the replacements stay up
        stable = _children(proc.pid)
        time.sleep(1.0)
        assert _children(proc.pid) == stable
        # A reload of the broken file is refused by the supervisor; the workers keep serving.
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert _metric(text, "hushdns_config_reload_success") == 1
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        blocked(999)
        assert _children(proc.pid) == stable
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert _metric(text, "hushdns_config_reload_success") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log_file.close()
        up.close()
    text = log_path.read_text()
    assert "exited killed by SIGKILL" in text, text
    assert "exited with code 0" in text, text
    assert "reload failed" in text and "no_such_key" in text, text
    assert text.count("Traceback") == 0, text


def test_two_workers_keep_one_query_log_whole(tmp_path: Path) -> None:
    """Every worker runs its own log writer on the one file.  The same names reach both
    workers (a fresh source port per query): before, the first inventory of a name both had
    stored failed on the seen row's key, was read as a corrupt file, and the whole log was
    moved aside within seconds of starting."""
    import sqlite3

    up = FakeUpstream()
    port, mport = free_port(), free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{up.address}"]\nworkers: 2\n'
                   f'metrics: {{listen: "127.0.0.1:{mport}"}}\nstate_dir: "{state}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    names, asks = 150, 4
    db_path = state / "querylog.sqlite"

    def metrics() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()

    def inventory() -> tuple[int, int]:
        if not db_path.exists():
            return 0, 0
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            n, total = db.execute("SELECT count(*), coalesce(sum(count), 0) FROM seen").fetchone()
        except sqlite3.OperationalError:   # not created yet
            return 0, 0
        finally:
            db.close()
        return n, total

    try:
        _wait(lambda: _up(mport), 30, "supervisor did not come up")
        for _ in range(asks):
            for i in range(names):
                got = dns.query.udp(dns.message.make_query(f"n{i}.example.test", "A"),
                                    "127.0.0.1", port=port, timeout=3)
                assert got.rcode() == dns.rcode.NOERROR
        # Rows are shipped every 50 ms, the inventory written every 5 s.
        _wait(lambda: _metric(metrics(), "hushdns_querylog_written_total") == names * asks,
              20, "rows not written")
        _wait(lambda: inventory() == (names, names * asks), 20, f"inventory {inventory()}")
        text = metrics()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        up.close()
    assert "corrupt" not in out and "ERROR" not in out, out
    assert not list(state.glob("*corrupt*"))
    assert _metric(text, "hushdns_querylog_dropped_total") == 0
    # Each name new for the device once, over both workers' writers.
    assert _metric(text, "hushdns_device_new_names_total", client="127.0.0.1") == names

"""dnstap: encoding, the real fstrm_capture/dnstap-ldns reading our stream, and a collector
that is stalled or gone costing drops, not latency."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import pytest

from resolver.config import ConfigError, load_config
from resolver.dnstap.message import CLIENT_QUERY, encode
from tests.conftest import ask
from tests.dnstap_read import FakeCollector, decode, frames
from tests.fakes import write_config

needs_fstrm = pytest.mark.skipif(
    shutil.which("fstrm_capture") is None or shutil.which("dnstap-ldns") is None,
    reason="fstrm_capture / dnstap-ldns not installed (Debian packages fstrm-bin, dnstap-ldns; "
           ".ci/run installs them)")


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _dropped(srv) -> int:
    """What hushdns_dnstap_dropped_total says: the server's drops and its sender process's."""
    return srv.stats.dnstap_dropped + srv.stats.dnstap_lost()


def test_encode_has_the_schema_fields() -> None:
    b = encode(b"id1", b"v", CLIENT_QUERY, 1, 1, b"\xc0\x00\x02\x05", 4242,
               1_700_000_000_123_456_789, b"QUERY", extra=b"blocked list=x rule=y")
    top = decode(b)
    assert top[1] == [b"id1"] and top[2] == [b"v"] and top[3] == [b"blocked list=x rule=y"]
    assert top[15] == [1]
    m = decode(top[14][0])
    assert m[1] == [5] and m[2] == [1] and m[3] == [1] and m[4] == [b"\xc0\x00\x02\x05"]
    assert m[6] == [4242] and m[8] == [1_700_000_000] and m[9] == [123_456_789]
    assert m[10] == [b"QUERY"] and 14 not in m


def test_config_errors_name_the_key(tmp_path) -> None:
    p = write_config(tmp_path, 'dnstap: {identity: x}\n')
    with pytest.raises(ConfigError, match="dnstap: needs exactly one of socket"):
        load_config(p)
    p = write_config(tmp_path, 'dnstap: {socket: t.sock, quueries: false}\n')
    with pytest.raises(ConfigError, match="dnstap.quueries: unknown key"):
        load_config(p)
    c = load_config(write_config(tmp_path, 'dnstap: {tcp: "127.0.0.1:6000", responses: false}\n'))
    assert c.dnstap.tcp == ("127.0.0.1", 6000) and not c.dnstap.responses


@needs_fstrm
def test_fstrm_capture_sees_every_query_once_with_its_client(serve, tmp_path: Path) -> None:
    sock, out = tmp_path / "tap.sock", tmp_path / "tap.fstrm"
    cap = subprocess.Popen(["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u", str(sock),
                            "-w", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait(sock.exists), "fstrm_capture did not open its socket"
        srv = serve(f"dnstap: {{socket: {sock}, identity: tap-test}}\n",
                    lists={"ads": "ads.example\n"})
        assert _wait(lambda: srv.server.tap.connected)
        sent = []
        for src in ("127.0.0.2", "127.0.0.3"):
            for name in ("ads.example", "ads.example", "ok.example"):   # the repeat: reply memo
                ask(srv, name, source=src)
                sent.append((src, name))
        ask(srv, "ads.example", tcp=True, source="127.0.0.3")
        sent.append(("127.0.0.3", "ads.example"))
        srv.stop()                             # STOP frame, then the thread ends
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    text = subprocess.run(["dnstap-ldns", "-r", str(out)], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    queries = sorted((ln.split()[3], ln.split()[6].strip('"').rstrip(".")) for ln in text
                     if ln.split()[2] == "CQ")
    responses = [ln for ln in text if ln.split()[2] == "CR"]
    assert queries == sorted(sent)
    assert len(responses) == len(sent)
    assert sum(" TCP " in ln for ln in text) == 2
    extras = [decode(f)[3][0].decode() for f in frames(out)]
    assert extras.count("blocked list=ads rule=ads.example") == 2 * 5   # CQ and CR of each block
    assert extras.count("forwarded") + extras.count("cached") == 2 * 2
    assert decode(frames(out)[0])[1] == [b"tap-test"]


def test_stalled_collector_costs_drops_not_latency(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "stall.sock")
    coll = FakeCollector(path, stall=True)
    try:
        srv = serve(f"dnstap: {{socket: {path}, queue: 50}}\nserver: {{reply_memo: false}}\n",
                    lists={"ads": "ads.example\n"})
        assert _wait(lambda: coll.connections == 1)
        q = dns.message.make_query("ads.example", "A")
        worst = 0.0
        for _ in range(3000):   # far more than the socket buffers and the queue hold
            t = time.perf_counter()
            ask(srv, "ads.example", timeout=2)
            worst = max(worst, time.perf_counter() - t)
        assert _wait(lambda: _dropped(srv) > 0)
        assert worst < 0.5, f"a query waited {worst:.3f}s behind the stalled collector"
        del q
    finally:
        coll.close()


def test_collector_gone_then_back_reconnects(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    srv = serve(f"dnstap: {{socket: {path}, queue: 5}}\n", lists={"ads": "ads.example\n"})
    for _ in range(20):
        ask(srv, "ads.example")
    assert _wait(lambda: _dropped(srv) >= 15)      # nobody listening: the queue filled
    coll = FakeCollector(path)
    try:
        assert _wait(lambda: srv.server.tap.connected, 10), "the writer did not reconnect"
        ask(srv, "ads.example")
        assert _wait(lambda: coll.received > 0)
    finally:
        coll.close()


def test_encoder_matches_encode_byte_for_byte() -> None:
    from resolver.dnstap.message import CLIENT_RESPONSE, Encoder
    enc = Encoder(b"id", b"v1")
    for port, extra, q, r in ((53, b"", b"Q" * 40, None), (40000, b"blocked list=a rule=b", None,
                                                          b"R" * 300), (200, b"x", b"q", b"r" * 20000)):
        kind = CLIENT_QUERY if r is None else CLIENT_RESPONSE
        for _ in range(2):   # built, then from the tables
            got = enc.message(kind, 2, 1, b"\x20\x01" + bytes(14), port, 1_700_000_001_000_000_007,
                              q, 1_700_000_002_5 * 10 ** 8, r, extra)
            assert got == encode(b"id", b"v1", kind, 2, 1, b"\x20\x01" + bytes(14), port,
                                 1_700_000_001_000_000_007, q, 1_700_000_002_5 * 10 ** 8, r, extra)


def test_pair_is_two_frames_of_encode() -> None:
    from resolver.dnstap import framestream
    from resolver.dnstap.message import CLIENT_RESPONSE, Encoder
    enc = Encoder(b"id", b"")
    addr = b"\x0a\x00\x00\x05"
    for _ in range(2):
        got = enc.pair(1, 1, addr, 40000, 1_700_000_000_5 * 10 ** 8, b"Q" * 30,
                       1_700_000_001_000_000_001, b"R" * 200, b"blocked list=a rule=None")
        want = framestream.data(encode(b"id", b"", CLIENT_QUERY, 1, 1, addr, 40000,
                                       1_700_000_000_5 * 10 ** 8, b"Q" * 30,
                                       extra=b"blocked list=a rule=None")) + \
            framestream.data(encode(b"id", b"", CLIENT_RESPONSE, 1, 1, addr, 40000,
                                    1_700_000_000_5 * 10 ** 8, None, 1_700_000_001_000_000_001,
                                    b"R" * 200, b"blocked list=a rule=None"))
        assert got == want
    assert enc.pair(1, 1, addr, 1, 0, None, 0, b"R", b"") == framestream.data(
        encode(b"id", b"", CLIENT_RESPONSE, 1, 1, addr, 1, 0, None, 0, b"R"))


def test_reload_restarts_the_writer_only_when_dnstap_changed(serve, tmp_path: Path) -> None:
    path = str(tmp_path / "r.sock")
    coll = FakeCollector(path)
    try:
        srv = serve(f"dnstap: {{socket: {path}, identity: one}}\n")
        first = srv.server.tap
        assert _wait(lambda: coll.connections == 1)
        assert srv.reload() and srv.server.tap is first            # unchanged: kept
        conf = tmp_path / "config.yaml"
        conf.write_text(conf.read_text().replace("identity: one", "identity: two"))
        assert srv.reload()
        assert srv.server.tap is not first and srv.server.tap.identity == b"two"
        assert _wait(lambda: coll.connections == 2)
        conf.write_text(conf.read_text().replace(f"dnstap: {{socket: {path}, identity: two}}\n", ""))
        assert srv.reload() and srv.server.tap is None and srv.server.pipeline.tap is None
    finally:
        coll.close()


def test_encode_batch_is_frames_of_pair() -> None:
    from resolver.dnstap.message import Encoder, encode_batch
    off = 1_700_000_000_000_000_000      # the wall clock minus the server's perf_counter
    items = [("10.0.0.5", 40000, "udp", b"Q" * 30, b"R" * 50, "blocked", "ads", "ads.example",
              1001.0, 1000.75),
             ("2001:db8::1", 53, "tcp", b"q" * 200, b"r" * 20000, "forwarded", None, None,
              1002.0, 1001.999),
             ("10.0.0.5", 40001, "udp", b"Q", None, "servfail", None, None, 1003.0, 1003.0)]
    for queries, responses in ((True, True), (True, False), (False, True)):
        enc, ref = Encoder(b"h", b"v"), Encoder(b"h", b"v")
        want = b""
        for c, port, proto, q, r, res, lst, rule, t_reply, t_query in items:
            fam, packed = (2, bytes.fromhex("20010db8" + "0" * 23 + "1")) if ":" in c else \
                (1, bytes(int(p) for p in c.split(".")))
            extra = (f"{res} list={lst} rule={rule}" if lst else res).encode()
            want += ref.pair(fam, 1 if proto == "udp" else 2, packed, port,
                             off + int(t_query * 1e9), q if queries else None,
                             off + int(t_reply * 1e9), r if responses else None, extra)
        for _ in range(2):   # built, then from the tables
            assert encode_batch(enc, items, queries, responses, {}, {}, off) == want


def test_sender_process_killed_is_counted_then_started_again(serve, tmp_path: Path) -> None:
    import os

    path = str(tmp_path / "k.sock")
    coll = FakeCollector(path)
    try:
        srv = serve(f"dnstap: {{socket: {path}}}\n", lists={"ads": "ads.example\n"})
        tap = srv.server.tap
        assert _wait(lambda: tap.connected)
        ask(srv, "ads.example")
        assert _wait(lambda: tap.sent == 1)
        first = tap._proc.pid
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: not tap.connected and tap._proc is None), \
            "the server did not notice its sender died"
        for _ in range(5):   # within the respawn back-off: dropped and counted, no error
            ask(srv, "ads.example")
        assert _wait(lambda: _dropped(srv) >= 5)
        time.sleep(1.1)      # RESPAWN_FIRST
        ask(srv, "ads.example")
        assert _wait(lambda: tap._proc is not None and tap.connected, 10)
        assert tap._proc.pid != first and coll.connections == 2
        before = coll.received
        ask(srv, "ok.example")
        assert _wait(lambda: coll.received > before and tap.sent >= 2)
    finally:
        coll.close()

"""URL list sources against a local HTTP server: download, disk copy, 304, and keep-last-good.

The HTTP server runs on 127.0.0.1 in a thread and is told per request what to
do (serve, 304, 404, hang, send too much, send an HTML page, drip the body).
Each failure is checked twice: by ``remote.fetch`` (the disk copy survives)
and by a running server (a name blocked before stays blocked).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.rcode
import pytest

import resolver.server
from resolver.cli import main
from resolver.config import ListSpec, load_config
from resolver.lists import loader, remote
from resolver.lists.loader import LoadError
from resolver.metrics import render
from tests.conftest import ask
from tests.fakes import ServerThread

V1 = "# a list\nblocked.example  # v1\n||ads.blocked-too.example^\n"
V2 = "# the next version\nother.example  # v2\n"
HTML = "<!DOCTYPE html>\n<html>\n<head><title>Rate limited</title></head>\n<body>\n<p>Try later</p>\n</body>\n</html>\n"
Handler = Callable[[BaseHTTPRequestHandler], None]


class ListServer:
    """An HTTP server on 127.0.0.1 whose next responses the test chooses."""

    def __init__(self) -> None:
        self.behaviour: Handler = serve(V1)
        self.queue: list[Handler] = []      # one-shot behaviours, used before ``behaviour``
        self.requests: list[dict[str, str]] = []
        self.stop = threading.Event()
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests.append({k.lower(): v for k, v in self.headers.items()})
                act = owner.queue.pop(0) if owner.queue else owner.behaviour
                with contextlib.suppress(OSError):   # the client gave up (timeouts, caps)
                    act(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/native.example.txt"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(h: BaseHTTPRequestHandler, code: int, body: bytes = b"", **headers: str) -> None:
    h.send_response(code)
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    if "Content_Length" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def serve(text: str, etag: str = '"v1"', modified: str = "Thu, 26 Nov 2026 10:00:00 GMT") -> Handler:
    """200 with an ETag, or 304 when the client already has this version."""
    def act(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("If-None-Match") == etag:
            _send(h, 304, ETag=etag)
        else:
            _send(h, 200, text.encode(), ETag=etag, Last_Modified=modified,
                  Content_Type="text/plain; charset=utf-8")
    return act


def status(code: int) -> Handler:
    return lambda h: _send(h, code, b"no such list\n", Content_Type="text/plain")


def hang(h: BaseHTTPRequestHandler) -> None:
    """Accept the request and never answer (until the test ends)."""
    h.server.owner_stop.wait(30)  # type: ignore[attr-defined]


def oversized_declared(h: BaseHTTPRequestHandler) -> None:
    _send(h, 200, b"big.example\n", Content_Length=str(10**9))


def oversized_streamed(h: BaseHTTPRequestHandler) -> None:
    """No Content-Length: the cap must apply while reading."""
    h.send_response(200)
    h.send_header("Connection", "close")
    h.end_headers()
    line = b"filler.example  # x\n" * 1000
    for _ in range(100):
        h.wfile.write(line)


def slow_body(h: BaseHTTPRequestHandler) -> None:
    """Headers at once, then a few bytes at a time: no single read times out."""
    body = V2.encode() * 50
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    for i in range(0, len(body), 8):
        if h.server.owner_stop.wait(0.05):  # type: ignore[attr-defined]
            return
        h.wfile.write(body[i:i + 8])
        h.wfile.flush()


def truncated(h: BaseHTTPRequestHandler) -> None:
    body = V2.encode()
    h.send_response(200)
    h.send_header("Content-Length", str(len(body) + 100))
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(body)
    h.close_connection = True


def redirect_to_ftp(h: BaseHTTPRequestHandler) -> None:
    _send(h, 302, Location="ftp://127.0.0.1/list.txt")


# name, behaviour, what the error says
FAILURES: list[tuple[str, Handler, str]] = [
    ("404", status(404), "HTTP 404"),
    ("500", status(500), "HTTP 500"),
    ("timeout", hang, "timed out"),
    ("oversized-declared", oversized_declared, "bytes, over the"),
    ("oversized-streamed", oversized_streamed, "body is over the"),
    ("garbage-html", serve(HTML, etag='"html"'), "refused the download"),
    ("empty", serve("", etag='"empty"'), "zero entries"),
    ("slow-body", slow_body, "took longer than"),
    ("truncated", truncated, "closed before the whole body"),
    ("redirect-to-ftp", redirect_to_ftp, "refused a redirect"),
]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of minutes, and never a proxy between us and 127.0.0.1."""
    monkeypatch.setattr(remote, "TIMEOUT", 0.5)
    monkeypatch.setattr(remote, "DEADLINE", 1.0)
    monkeypatch.setattr(remote, "ATTEMPTS", 2)
    monkeypatch.setattr(remote, "BACKOFF", 0.01)
    monkeypatch.setattr(remote, "MAX_BYTES", 64 * 1024)
    monkeypatch.setattr(remote, "RETRY_AFTER_FAILURE", 0.2)
    monkeypatch.setattr(resolver.lists.upkeep, "URL_REFRESH_TICK", 0.1)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def web() -> Iterator[ListServer]:
    s = ListServer()
    s.httpd.owner_stop = s.stop  # type: ignore[attr-defined]
    yield s
    s.close()


def spec_for(url: str, refresh: float = 86400.0) -> ListSpec:
    return ListSpec("remote", url, "url", refresh=refresh)


def copy_bytes(url: str, state: Path) -> tuple[bytes, bytes]:
    body, meta = remote.copy_paths(url, str(state))
    return body.read_bytes(), meta.read_bytes()


# --- fetch ---------------------------------------------------------------------------------


def test_download_stores_the_copy_and_its_metadata(web: ListServer, tmp_path: Path) -> None:
    got = remote.fetch(spec_for(web.url), str(tmp_path))
    assert (got.status, got.changed, got.error, got.text) == ("downloaded", True, None, V1)
    key = hashlib.sha256(web.url.encode()).hexdigest()[:16]
    assert (tmp_path / "lists" / f"{key}.txt").read_text() == V1
    meta = json.loads((tmp_path / "lists" / f"{key}.meta.json").read_text())
    assert meta["etag"] == '"v1"' and meta["last_modified"].startswith("Thu, 26 Nov 2026")
    assert meta["sha256"] == hashlib.sha256(V1.encode()).hexdigest()
    assert web.requests[0]["user-agent"].startswith("hushdns/")
    assert "if-none-match" not in web.requests[0]
    assert remote.disk_text(spec_for(web.url), str(tmp_path)) == V1


def test_304_keeps_the_disk_copy(web: ListServer, tmp_path: Path) -> None:
    spec = spec_for(web.url)
    remote.fetch(spec, str(tmp_path))
    before = remote.checked_at(web.url, str(tmp_path))
    time.sleep(0.01)
    got = remote.fetch(spec, str(tmp_path))
    assert (got.status, got.changed, got.text) == ("not-modified", False, V1)
    assert web.requests[-1]["if-none-match"] == '"v1"'
    assert web.requests[-1]["if-modified-since"] == "Thu, 26 Nov 2026 10:00:00 GMT"
    assert remote.checked_at(web.url, str(tmp_path)) > before


def test_a_new_version_replaces_the_copy(web: ListServer, tmp_path: Path) -> None:
    spec = spec_for(web.url)
    remote.fetch(spec, str(tmp_path))
    web.behaviour = serve(V2, etag='"v2"')
    got = remote.fetch(spec, str(tmp_path))
    assert (got.status, got.changed, got.text) == ("downloaded", True, V2)
    assert remote.disk_text(spec, str(tmp_path)) == V2
    web.behaviour = serve(V2, etag='"v2b"')        # same bytes, new ETag
    assert remote.fetch(spec, str(tmp_path)).changed is False


def test_metadata_of_another_body_is_not_trusted(web: ListServer, tmp_path: Path) -> None:
    """A crash between writing the body and its metadata must not let a 304 bless the wrong body."""
    spec = spec_for(web.url)
    remote.fetch(spec, str(tmp_path))
    body, _ = remote.copy_paths(web.url, str(tmp_path))
    body.write_text(V2)
    remote.fetch(spec, str(tmp_path))
    assert "if-none-match" not in web.requests[-1]
    assert remote.disk_text(spec, str(tmp_path)) == V1


@pytest.mark.parametrize("name, behaviour, needle", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_keep_the_last_good_copy(web: ListServer, tmp_path: Path, name: str,
                                          behaviour: Handler, needle: str) -> None:
    spec = spec_for(web.url)
    remote.fetch(spec, str(tmp_path))
    saved = copy_bytes(web.url, tmp_path)
    web.behaviour = behaviour
    got = remote.fetch(spec, str(tmp_path))
    assert (got.status, got.changed, got.text) == ("disk-copy", False, V1)
    assert needle in got.error and "serving the copy downloaded" in got.error
    assert copy_bytes(web.url, tmp_path) == saved
    assert remote.fetch_text(spec, str(tmp_path)) == V1


@pytest.mark.parametrize("name, behaviour, needle", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_without_a_copy_raise(web: ListServer, tmp_path: Path, name: str,
                                       behaviour: Handler, needle: str) -> None:
    web.behaviour = behaviour
    with pytest.raises(LoadError, match="never loaded") as err:
        remote.fetch(spec_for(web.url), str(tmp_path))
    assert needle in str(err.value)
    assert not (tmp_path / "lists").exists() or not any((tmp_path / "lists").glob("*.txt"))


def test_transient_errors_are_retried_permanent_ones_not(web: ListServer, tmp_path: Path) -> None:
    spec = spec_for(web.url)
    web.queue = [status(503)]
    assert remote.fetch(spec, str(tmp_path)).status == "downloaded"
    assert len(web.requests) == 2
    web.requests.clear()
    web.behaviour = status(404)
    assert remote.fetch(spec, str(tmp_path)).status == "disk-copy"
    assert len(web.requests) == 1


def test_gzip_bodies_are_decoded(web: ListServer, tmp_path: Path) -> None:
    def gz(h: BaseHTTPRequestHandler) -> None:
        assert "gzip" in h.headers.get("Accept-Encoding", "")
        _send(h, 200, gzip.compress(V2.encode()), Content_Encoding="gzip", ETag='"gz"')
    web.behaviour = gz
    assert remote.fetch(spec_for(web.url), str(tmp_path)).text == V2


def test_only_http_and_https(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="only http and https"):
        remote.fetch(ListSpec("x", "ftp://127.0.0.1/list.txt", "url"), str(tmp_path))


def test_refresh_schedule(tmp_path: Path, web: ListServer) -> None:
    spec = spec_for(web.url, refresh=3600)
    sched = remote.RefreshSchedule()
    assert sched.due([spec], str(tmp_path), now=1000.0) == [spec]        # no copy: at once
    remote.fetch(spec, str(tmp_path))
    fresh = remote.RefreshSchedule()
    now = time.time()
    assert fresh.due([spec], str(tmp_path), now=now) == []              # fresh copy: later
    assert fresh.due([spec], str(tmp_path), now=now + 3601) == [spec]
    assert sched.done(spec, ok=True, now=now) == now + 3600
    assert sched.done(spec, ok=False, now=now) == now + 0.2
    assert sched.done(spec, ok=False, now=now) == now + 0.4
    for _ in range(30):
        last = sched.done(spec, ok=False, now=now)
    assert last == now + 3600                                             # capped at refresh
    assert sched.done(spec, ok=True, now=now) == now + 3600


# --- a running server ---------------------------------------------------------------------------


def url_config(tmp_path: Path, upstream_address: str, url: str, refresh: str = "1") -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(f'listen: ["127.0.0.1:0"]\nupstreams: ["{upstream_address}"]\n'
                 f"metrics: {{listen: null}}\nstate_dir: {tmp_path / 'state'}\n"
                 f"blocking:\n  lists:\n    remote: {{source: \"{url}\", refresh: {refresh}}}\n")
    return p


def start(path: Path) -> ServerThread:
    return ServerThread(load_config(path), reload_config=lambda: load_config(path))


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def blocked(srv: ServerThread, name: str) -> bool:
    return ask(srv, name).rcode() == dns.rcode.NXDOMAIN


def failures(srv: ServerThread) -> int:
    return srv.stats.list_load_failures.get("remote", 0)


def test_server_downloads_refreshes_and_keeps_serving_through_failures(
        tmp_path: Path, upstream, web: ListServer) -> None:
    cfg = url_config(tmp_path, upstream.address, web.url)
    srv = start(cfg)
    try:
        # No copy yet: the refresher downloads right after start-up.
        wait_for(lambda: blocked(srv, "x.blocked.example"), what="first download")
        assert blocked(srv, "ads.blocked-too.example")
        assert not blocked(srv, "fine.example")
        wait_for(lambda: any("if-none-match" in r for r in web.requests), what="a 304 round")
        for name, behaviour, needle in FAILURES:
            web.behaviour = behaviour
            n = failures(srv)
            wait_for(lambda needle=needle: needle in (srv.server.lists.lists["remote"].error or ""),
                     what=f"a failed refresh ({name})")
            assert failures(srv) > n
            assert blocked(srv, "x.blocked.example"), name
            assert not blocked(srv, "fine.example"), name
        previous = srv.server.lists
        config = load_config(cfg)
        # The loader reads the untouched disk copy ...
        snap = loader.load_all(config, previous)
        assert snap.index.match("x.blocked.example", snap.mask(("remote",)), 0) is not None
        # ... and keeps the previous rules even when the copy is gone.
        remote.copy_paths(web.url, config.state_dir)[0].unlink()
        snap = loader.load_all(config, previous)
        assert snap.lists["remote"].error and snap.lists["remote"].entries == 2
        assert snap.index.match("x.blocked.example", snap.mask(("remote",)), 0) is not None
        # A good new version is swapped in.
        web.behaviour = serve(V2, etag='"v2"')
        wait_for(lambda: blocked(srv, "other.example"), what="the new version")
        assert not blocked(srv, "x.blocked.example")
        assert srv.server.lists.lists["remote"].error is None
        assert srv.stats.list_entries["remote"] == 1
    finally:
        srv.stop()


def test_startup_from_the_disk_copy_with_the_web_server_down(
        tmp_path: Path, upstream, web: ListServer) -> None:
    cfg = url_config(tmp_path, upstream.address, web.url)
    remote.fetch(spec_for(web.url), str(tmp_path / "state"))
    web.close()
    srv = start(cfg)
    try:
        assert blocked(srv, "x.blocked.example")         # at once: no download needed
        assert srv.stats.list_entries["remote"] == 2
        wait_for(lambda: failures(srv) > 0, what="the refresher to fail")
        assert blocked(srv, "x.blocked.example")
    finally:
        srv.stop()


def test_a_list_that_never_loaded_is_loud(tmp_path: Path, upstream, web: ListServer,
                                          caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture) -> None:
    web.behaviour = status(404)
    cfg = url_config(tmp_path, upstream.address, web.url)
    srv = start(cfg)
    try:
        wait_for(lambda: failures(srv) >= 2, what="failures counted")
        assert not blocked(srv, "x.blocked.example")
        assert "never loaded" in srv.server.lists.lists["remote"].error
        assert "remote" not in srv.stats.list_last_success
        exposed = render(srv.stats).decode()
        assert re.search(r'^hushdns_list_load_failures_total\{list="remote"\} [1-9]', exposed, re.M)
        assert 'hushdns_list_last_success_timestamp_seconds{list="remote"} 0.0' in exposed
        assert any("never loaded" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    finally:
        srv.stop()
    assert main(["check", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "block list remote: FAILED:" in out and "HTTP 404" in out and "never loaded" in out
    web.behaviour = serve(V1)
    assert main(["check", "-c", str(cfg)]) == 0                 # check downloads now
    assert "block list remote: 2 entries" in capsys.readouterr().out
    assert remote.disk_text(spec_for(web.url), str(tmp_path / "state")) == V1


def test_reload_picks_up_a_new_url_list(tmp_path: Path, upstream, web: ListServer) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:0"]\nupstreams: ["{upstream.address}"]\n'
                   f"metrics: {{listen: null}}\nstate_dir: {tmp_path / 'state'}\n")
    srv = start(cfg)
    try:
        assert not blocked(srv, "x.blocked.example")
        url_config(tmp_path, upstream.address, web.url, refresh="24h")
        assert srv.reload()
        wait_for(lambda: blocked(srv, "x.blocked.example"), what="download after reload")
    finally:
        srv.stop()


# --- subscribed formats and the documented config -------------------------------------------------

WILDCARD = ("# Title: Example vendor tracker list\n# Syntax: Domains Wildcard\n#\n"
            "*.tracking.vendor.example\n*.stat.vendor.example\n")
ADBLOCK = ("[Adblock Plus]\n! Title: Example vendor tracker list\n! Syntax: AdBlock\n!\n"
           "||tracking.vendor.example^\n||stat.vendor.example^\n")
ONLY_DOMAINS = "# Title: Example\n# Syntax: Domains\n#\ntracking.vendor.example\nstat.vendor.example\n"


@pytest.mark.parametrize("body", [WILDCARD, ADBLOCK, ONLY_DOMAINS], ids=["wildcard", "adblock", "domains"])
def test_public_list_formats_download_as_subtrees(web: ListServer, tmp_path: Path, body: str) -> None:
    web.behaviour = serve(body, etag='"fmt"')
    spec = spec_for(web.url)
    remote.fetch(spec, str(tmp_path))
    (tmp_path / "c.yaml").write_text(f"upstreams: [\"127.0.0.1:1\"]\nstate_dir: {tmp_path}\n"
                                     f"blocking:\n  lists:\n    remote: \"{web.url}\"\n")
    snap = loader.load_all(load_config(tmp_path / "c.yaml"))
    assert snap.lists["remote"].entries == 2 and snap.lists["remote"].rejected == 0
    mask = snap.mask(("remote",))
    for name in ("tracking.vendor.example", "a.b.tracking.vendor.example", "x.stat.vendor.example"):
        assert snap.index.match(name, mask, 0) is not None, name
    assert snap.index.match("vendor.example", mask, 0) is None


def test_the_documented_subscription_config_is_valid() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "lists.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:]]
    snippet = next(b for b in blocks if "hagezi" in b and "groups:" in b)
    cfg = load_config(None, text=snippet + "upstreams: [\"127.0.0.1:1\"]\n")
    spec = cfg.blocking.lists["hagezi-xiaomi"]
    assert spec.kind == "url" and spec.refresh == 86400
    assert spec.source.startswith("https://raw.githubusercontent.com/hagezi/dns-blocklists/main/")
    assert cfg.groups["default"].allow == ("essential",)

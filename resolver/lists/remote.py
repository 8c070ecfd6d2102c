"""Lists fetched over http(s): download, disk copy, conditional refresh, keep-last-good.

Why a disk copy: the server loads URL lists from it, so start-up and reloads
never wait on the network (the box may itself be the resolver its downloads
need), and a list that cannot be downloaded keeps its last good version
across restarts.  Downloads happen in the server's background refresher
(``RefreshSchedule``) and in ``hushdns check``.  A download replaces the copy
only after it parsed as a real list (not an HTML error page, not empty), by
writing a temporary file and renaming it over the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import __version__
from ..config import ListSpec
from .parse import LoadError, parse_checked

log = logging.getLogger("hushdns.lists")

# Module constants, read at call time (tests shrink them).
MAX_BYTES = 50 * 1024 * 1024    # body cap, compressed and decompressed
TIMEOUT = 30.0                  # seconds for the connect and for each read
DEADLINE = 300.0                # seconds for one whole attempt: a body that drips forever ends
ATTEMPTS = 3                    # tries per download; network errors and 5xx are retried
BACKOFF = 2.0                   # seconds before the second try, doubled before each next
RETRY_AFTER_FAILURE = 60.0      # refresher: first retry after a failed refresh, doubling up to `refresh`
USER_AGENT = f"hushdns/{__version__} (+list refresh)"


@dataclass
class Fetched:
    """The outcome of one fetch: the text to serve and where it came from."""

    text: str
    status: str                 # "downloaded" | "not-modified" | "disk-copy"
    changed: bool               # differs from the previous disk copy
    error: str | None = None    # set when the download failed and the disk copy is served


class _Failure(Exception):
    """A download that did not produce a body."""


class _Retry(_Failure):
    """Worth another try (network error, timeout, 5xx)."""


class _NoOtherSchemes(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): never to file:// or ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise _Failure(f"refused a redirect to {newurl!r} (only http and https)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def copy_paths(url: str, state_dir: str) -> tuple[Path, Path]:
    """``<state_dir>/lists/<sha256(url)[:16]>.txt`` and its ``.meta.json``."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    base = Path(state_dir) / "lists"
    return base / f"{key}.txt", base / f"{key}.meta.json"


def read_copy(url: str, state_dir: str) -> tuple[str, dict] | None:
    """The last good download and its metadata, or None.

    The ETag and Last-Modified are kept only when the metadata describes this
    very body (a crash between the two writes must not make a server's 304
    bless a stale copy).
    """
    body_path, meta_path = copy_paths(url, state_dir)
    try:
        data = body_path.read_bytes()
    except OSError:
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            meta = {}
    except (OSError, ValueError):
        meta = {}
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        meta = {"fetched": body_path.stat().st_mtime}
    return data.decode("utf-8", errors="replace"), meta


def disk_text(spec: ListSpec, state_dir: str) -> str:
    """The disk copy of a URL list (what the server loads), or LoadError when there is none."""
    copy = read_copy(spec.source, state_dir)
    if copy is None:
        raise LoadError(f"not downloaded yet (no copy in {copy_paths(spec.source, state_dir)[0]}); "
                        "the server downloads it in the background, 'hushdns check' right away")
    return copy[0]


def checked_at(url: str, state_dir: str) -> float | None:
    """Unix time the disk copy was last confirmed current (downloaded or 304), or None."""
    copy = read_copy(url, state_dir)
    if copy is None:
        return None
    meta = copy[1]
    value = meta.get("checked", meta.get("fetched"))
    return float(value) if isinstance(value, int | float) else None


def fetch_text(spec: ListSpec, state_dir: str) -> str:
    """Download (conditionally) and return the list's text; the disk copy when that fails."""
    return fetch(spec, state_dir).text


def fetch(spec: ListSpec, state_dir: str) -> Fetched:
    """Download a URL list, refresh its disk copy, and say what happened.

    Failure (network, HTTP error, too big, too slow, garbage, empty) returns the
    last good disk copy with ``error`` set, or raises LoadError when there is none.
    """
    url = spec.source
    if urlsplit(url).scheme not in ("http", "https"):
        raise LoadError(f"only http and https URLs can be fetched, not {url!r}")
    copy = read_copy(url, state_dir)
    try:
        got = _download(url, copy[1] if copy else {})
    except _Failure as exc:
        return _fallback(spec, copy, str(exc))
    body_path, meta_path = copy_paths(url, state_dir)
    now = time.time()
    if got is None:
        if copy is None:
            return _fallback(spec, copy, "the server answered 304 Not Modified to a plain request")
        meta = {**copy[1], "checked": now}
        try:
            _write(meta_path, json.dumps(meta, indent=1).encode())
        except OSError as exc:
            log.warning("list %s: cannot update %s: %s", spec.name, meta_path, exc)
        log.debug("list %s: not modified", spec.name)
        return Fetched(copy[0], "not-modified", False)
    body, etag, last_modified = got
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = parse_checked(spec, text)
    except LoadError as exc:
        return _fallback(spec, copy, f"refused the download: {exc}")
    data = text.encode("utf-8")
    meta = {"url": url, "etag": etag, "last_modified": last_modified, "fetched": now,
            "checked": now, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        _write(body_path, data)     # the body first: metadata must never describe a body not on disk
        _write(meta_path, json.dumps(meta, indent=1).encode())
    except OSError as exc:
        log.warning("list %s: cannot store the download in %s: %s (serving it from memory)",
                    spec.name, body_path.parent, exc)
    changed = copy is None or copy[0] != text
    log.info("list %s: downloaded %d entries%s", spec.name, len(parsed),
             "" if changed else " (unchanged)")
    return Fetched(text, "downloaded", changed)


def _fallback(spec: ListSpec, copy: tuple[str, dict] | None, error: str) -> Fetched:
    if copy is None:
        raise LoadError(f"{spec.source}: {error}; there is no earlier copy on disk, "
                        "so this list has never loaded and blocks nothing")
    stamp = copy[1].get("fetched")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) \
        if isinstance(stamp, int | float) else "earlier"
    log.warning("list %s: %s: %s; serving the copy downloaded %s", spec.name, spec.source,
                error, when)
    return Fetched(copy[0], "disk-copy", False, f"{error} (serving the copy downloaded {when})")


def _download(url: str, meta: dict) -> tuple[bytes, str | None, str | None] | None:
    """(body, ETag, Last-Modified), or None for 304; retries what is worth retrying."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    opener = urllib.request.build_opener(_NoOtherSchemes)
    last = ""
    for attempt in range(max(1, ATTEMPTS)):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1))
        try:
            return _once(opener, urllib.request.Request(url, headers=headers))
        except _Retry as exc:
            last = str(exc)
        except (OSError, http.client.HTTPException) as exc:
            last = _describe(exc)
    raise _Failure(f"{last} (after {max(1, ATTEMPTS)} attempts)")


def _once(opener: urllib.request.OpenerDirector,
          req: urllib.request.Request) -> tuple[bytes, str | None, str | None] | None:
    start = time.monotonic()
    cap = MAX_BYTES
    try:
        resp = opener.open(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304:
            return None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise _Failure(f"HTTP {exc.code} {exc.reason}") from None
    with resp:
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise _Failure(f"the body is {int(length)} bytes, over the {cap} byte cap")
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() - start > DEADLINE:
                raise _Retry(f"the download took longer than {DEADLINE:g} s")
            chunk = resp.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise _Failure(f"the body is over the {cap} byte cap")
            chunks.append(chunk)
        if getattr(resp, "length", None):
            raise _Retry("the connection closed before the whole body arrived")
        body = b"".join(chunks)
        if resp.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
            body = _gunzip(body, cap)
        return body, resp.headers.get("ETag"), resp.headers.get("Last-Modified")


def _gunzip(body: bytes, cap: int) -> bytes:
    d = zlib.decompressobj(wbits=47)    # gzip or zlib header, detected
    try:
        out = d.decompress(body, cap + 1)
    except zlib.error as exc:
        raise _Failure(f"bad gzip body: {exc}") from None
    if len(out) > cap:
        raise _Failure(f"the body is over the {cap} byte cap once decompressed")
    if not d.eof:
        raise _Retry("the gzip body is truncated")
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason  # type: ignore[assignment]
    if isinstance(exc, TimeoutError):
        return f"timed out after {TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class _Due:
    at: float
    failures: int = 0


class RefreshSchedule:
    """When each URL list is next downloaded.

    A list with no disk copy, or a copy older than its ``refresh``, is due at
    once; after a success it is due ``refresh`` later; after a failure sooner
    (``RETRY_AFTER_FAILURE``, doubling, never later than ``refresh``).
    """

    def __init__(self) -> None:
        self._due: dict[tuple[str, str, float], _Due] = {}

    @staticmethod
    def _key(spec: ListSpec) -> tuple[str, str, float]:
        return spec.name, spec.source, spec.refresh

    def due(self, specs: list[ListSpec], state_dir: str, now: float | None = None) -> list[ListSpec]:
        """The URL lists to download now (new specs are scheduled from their copy's age)."""
        now = time.time() if now is None else now
        out, keys = [], set()
        for spec in specs:
            if spec.kind != "url":
                continue
            key = self._key(spec)
            keys.add(key)
            if key not in self._due:
                checked = checked_at(spec.source, state_dir)
                at = now if checked is None else min(checked + spec.refresh, now + spec.refresh)
                self._due[key] = _Due(at)
            if self._due[key].at <= now:
                out.append(spec)
        for key in set(self._due) - keys:
            del self._due[key]
        return out

    def done(self, spec: ListSpec, ok: bool, now: float | None = None) -> float:
        """Record an attempt; returns the time of the next one."""
        now = time.time() if now is None else now
        d = self._due.setdefault(self._key(spec), _Due(now))
        if ok:
            d.failures = 0
            d.at = now + spec.refresh
        else:
            d.failures += 1
            d.at = now + min(spec.refresh, RETRY_AFTER_FAILURE * 2 ** min(d.failures - 1, 20))
        return d.at

"""Shared fixtures: a fake upstream, a running server, and a dnspython client."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.fakes import FakeUpstream, ServerThread, start_server

# Every `python -m resolver` a test starts imports this tree, as the test itself does
# (pytest runs from here): never a copy installed in the venv, which `pip install .`
# may have compiled. CI's second pass runs the suite in a tree holding the compiled
# modules, and its servers must be compiled too.
_TREE = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_TREE, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _TREE]])


@pytest.fixture(autouse=True)
def _state_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's state (URL list copies, the query log, the household state and the control
    socket) in its own directory, never ~/.local."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.close()


@pytest.fixture
def serve(tmp_path: Path, upstream: FakeUpstream) -> Iterator:
    """serve(extra_yaml="", lists={name: text}) -> a running ServerThread using ``upstream``."""
    started: list[ServerThread] = []

    def _start(extra: str = "", lists: dict[str, str] | None = None, up: FakeUpstream | None = None,
               listen: str = "127.0.0.1:0") -> ServerThread:
        srv = start_server(tmp_path, up or upstream, extra, lists, listen)
        started.append(srv)
        return srv

    yield _start
    for s in started:
        s.stop()


def ask(srv: ServerThread, name: str, qtype: str = "A", *, tcp: bool = False,
        edns: int | bool = False, payload: int = 1232, dnssec: bool = False,
        source: str | None = None, timeout: float = 5.0) -> dns.message.Message:
    """Query the server with dnspython (an independent client)."""
    q = dns.message.make_query(name, qtype, use_edns=(0 if edns is True else edns),
                               payload=payload, want_dnssec=dnssec)
    f = dns.query.tcp if tcp else dns.query.udp
    kw = {"source": source} if source else {}
    return f(q, srv.host, port=srv.port, timeout=timeout, **kw)


kdig_missing = pytest.mark.skipif(shutil.which("kdig") is None,
                                  reason="kdig not installed (Debian package knot-dnsutils; .ci/run installs it)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long soak tests (@pytest.mark.soak, about a minute each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)

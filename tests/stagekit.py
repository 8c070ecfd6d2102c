"""Helpers for the per-stage tests: a config, lists and clients, queries, and upstream answers.

Each stage is tested alone against the contract of ``resolver.stages``:
``on_query(q)`` answers (a Reply) or passes (None); ``on_answer(q, reply)``
returns the reply to pass on.  No event loop is needed: stages are synchronous.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.config import Config, load_config
from resolver.lists.loader import Blocklists, load_all
from resolver.reply import Reply
from resolver.wire import SERVFAIL, Request, parse_answer, parse_query


def setup(tmp_path: Path, extra: str = "", lists: str = "tracker.example\n"
          ) -> tuple[Config, Blocklists, ClientTable]:
    (tmp_path / "l.txt").write_text(lists)
    (tmp_path / "a.txt").write_text("ok.tracker.example\n")
    (tmp_path / "c.yaml").write_text(
        "upstreams: ['127.0.0.1:1']\nblocking:\n  lists: {l: l.txt}\n  allow: {a: a.txt}\n" + extra)
    cfg = load_config(tmp_path / "c.yaml")
    lists_ = load_all(cfg)
    return cfg, lists_, ClientTable(cfg, lists_, LabelBound(512))


def query(name: str, client: str, table: ClientTable, qtype: str = "A",
          proto: str = "udp") -> Request:
    q = parse_query(dnslib.DNSRecord.question(name, qtype).pack())
    q.client = client
    q.proto = proto
    q.info = table.lookup(client)
    return q


def upstream_reply(q: Request, make: Callable[[dnslib.DNSRecord], None] | None = None) -> Reply:
    """What the forwarding terminal hands back: one A record (or what ``make`` builds)."""
    rec = dnslib.DNSRecord.parse(q.data).reply()
    if make:
        make(rec)
    else:
        rec.add_answer(dnslib.RR(rec.q.qname, 1, ttl=60, rdata=dnslib.A("192.0.2.1")))
    answer = parse_answer(rec.pack(), q, 0, 86400, 3600)
    return Reply("servfail" if answer.rcode == SERVFAIL else "forwarded", answer=answer)


def rcode(reply: Reply) -> int:
    assert reply.wire is not None
    return dnslib.DNSRecord.parse(reply.wire).header.rcode

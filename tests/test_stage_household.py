"""The household stages alone (local names, bypass) and the household state's effect on
ClientInfo, against the stage contract: answer or pass, and what the memo may keep."""

from __future__ import annotations

from pathlib import Path

import dnslib

from resolver.clients import ClientTable, LabelBound
from resolver.control.state import HouseholdState
from resolver.household_config import Bypass as BypassConfig
from resolver.stages.bypass import Bypass
from resolver.stages.local import Local
from resolver.stats import Stats
from tests.stagekit import query, setup


def test_local_answers_its_names_only_and_may_be_remembered(tmp_path: Path) -> None:
    cfg, _, table = setup(tmp_path, "local_records: {nas.home: 192.168.1.10}\n")
    stage = Local(cfg.household.local)
    r = stage.on_query(query("nas.home", "127.0.0.1", table))
    assert r is not None and r.result == "local" and r.keep is not None and r.keep.valid(0)
    msg = dnslib.DNSRecord.parse(r.wire)
    assert msg.header.aa == 1 and str(msg.rr[0].rdata) == "192.168.1.10"
    assert stage.on_query(query("other.home", "127.0.0.1", table)) is None   # no zone: passes
    assert stage.per_query is False


def test_bypass_counts_and_keeps_forwarded_doh_names_out_of_the_memo(tmp_path: Path) -> None:
    _, _, table = setup(tmp_path)
    stats = Stats()
    stage = Bypass(BypassConfig(), stats, doh=frozenset({"dns.example"}))
    q = query("a.dns.example", "127.0.0.1", table)
    assert stage.on_query(q) is None                       # opt-in list off: passes
    assert q.remember is False                              # not remembered: every lookup comes here
    canary = stage.on_query(query("use-application-dns.net", "127.0.0.1", table))
    assert canary is not None and canary.result == "blocked"
    canary.keep.replay("127.0.0.1")                         # a memo repeat counts too
    assert stats.bypass_lookups == {("127.0.0.1", "doh_resolver"): 1,
                                    ("127.0.0.1", "firefox_canary"): 2}
    other = query("example.org", "127.0.0.1", table)
    assert stage.on_query(other) is None and other.remember is True


def test_the_state_changes_the_policy_key_with_the_masks(tmp_path: Path) -> None:
    cfg, lists, _ = setup(tmp_path, "groups: {kids: {clients: [127.0.0.1/32]}}\n")
    st = HouseholdState(cfg)
    table = ClientTable(cfg, lists, LabelBound(512), household=st)
    st.on_change.append(table.cache.clear)
    before = table.lookup("127.0.0.1")
    assert before.block and before.policy == "kids"
    st.pause(group="kids")
    paused = table.lookup("127.0.0.1")
    assert paused.block == 0 and paused.policy != before.policy
    assert table.lookup("127.0.0.2").block                  # the default group is not paused
    st.resume()
    st.allow("tracker.example", "127.0.0.1", "1h")
    allowed = table.lookup("127.0.0.1")
    assert allowed.allow_names == {"tracker.example"} and allowed.policy not in ("kids", paused.policy)

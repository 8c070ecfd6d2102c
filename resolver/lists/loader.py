"""Loading every configured list into one immutable snapshot, keeping the last good one.

Why a snapshot: a reload builds a complete new index beside the one serving and
swaps it in with one assignment, so queries never see a half-loaded list.  A
list that fails to load (missing file, failed download, garbage) keeps its
previous rules in the new snapshot; the failure is logged and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ListSpec
from ..stats import Stats
from . import local_file, remote
from .index import DomainIndex
from .parse import LoadError, Parsed, parse_checked

__all__ = ["Blocklists", "ListInfo", "LoadError", "load_all", "parse_checked", "read_source"]

log = logging.getLogger("hushdns.lists")

@dataclass
class ListInfo:
    """What is known about one list in a snapshot."""

    spec: ListSpec
    bit: int
    entries: int = 0
    rejected: int = 0
    loaded_at: float = 0.0        # unix time of the last successful load
    error: str | None = None      # the last failure, if the newest attempt failed
    fingerprint: tuple = ()       # for change detection of local files


@dataclass
class Blocklists:
    """An immutable set of loaded lists and the index over them."""

    index: DomainIndex = field(default_factory=DomainIndex)
    lists: dict[str, ListInfo] = field(default_factory=dict)
    by_bit: dict[int, str] = field(default_factory=dict)
    tracked: int = 0              # bits of lists with track_domains

    def mask(self, names: tuple[str, ...]) -> int:
        m = 0
        for n in names:
            info = self.lists.get(n)
            if info is not None:
                m |= info.bit
        return m

    def failed(self) -> list[ListInfo]:
        return [i for i in self.lists.values() if i.error]


def read_local(spec: ListSpec) -> str:
    """A file's text, or every regular file of a directory joined (sorted, dotfiles skipped)."""
    path = Path(spec.source)
    try:
        if spec.kind == "dir":
            parts, budget = [], spec.max_size
            for p in sorted(path.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    data = local_file.read_bytes(str(p), budget)
                    budget -= len(data)
                    parts.append(data.decode("utf-8", errors="replace"))
            return "\n".join(parts)
        return local_file.read_text(spec.source, spec.max_size)
    except local_file.NotAListFile as exc:
        raise LoadError(str(exc)) from None
    except OSError as exc:
        raise LoadError(f"cannot read {spec.source}: {exc.strerror or exc}") from None


def fingerprint(spec: ListSpec) -> tuple:
    """Cheap change detection for local lists: (name, mtime_ns, size) of each file."""
    if spec.kind == "url":
        return ()
    path = Path(spec.source)
    try:
        if spec.kind == "dir":
            return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                         for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
        st = path.stat()
        return ((path.name, st.st_mtime_ns, st.st_size),)
    except OSError:
        return ("missing",)


def read_source(spec: ListSpec, state_dir: str, fetch: bool = False) -> str:
    """The current text of a list from wherever it lives.

    A URL list is read from its disk copy unless ``fetch``: downloads happen in
    the server's background refresher (and ``hushdns check``), so building a
    snapshot at start-up or on reload never waits on the network.
    """
    if spec.kind == "url":
        return remote.fetch_text(spec, state_dir) if fetch else remote.disk_text(spec, state_dir)
    return read_local(spec)


def load_all(config: Config, previous: Blocklists | None = None,
             stats: Stats | None = None, texts: dict[str, str] | None = None) -> Blocklists:
    """Build a new snapshot of every list in ``config``; failed lists keep their old rules."""
    snap = Blocklists()
    for i, spec in enumerate(config.all_lists()):
        bit = 1 << i
        info = ListInfo(spec, bit, fingerprint=fingerprint(spec))
        snap.lists[spec.name] = info
        snap.by_bit[bit] = spec.name
        if spec.track_domains:
            snap.tracked |= bit
        try:
            text = texts[spec.name] if texts and spec.name in texts else read_source(spec, config.state_dir)
            parsed = parse_checked(spec, text)
            _refuse_emptied(spec, parsed, previous)
        except LoadError as exc:
            info.error = str(exc)
            _keep_old(snap, info, previous)
            if stats is not None:
                stats.list_load_failures[spec.name] = stats.list_load_failures.get(spec.name, 0) + 1
            continue
        snap.index.add(bit, parsed, allow=spec.allow)
        info.entries = len(parsed)
        info.rejected = len(parsed.rejected)
        info.loaded_at = time.time()
        if parsed.rejected:
            log.info("list %s: %d entries, %d lines rejected (run 'hushdns check' for details)",
                     spec.name, info.entries, info.rejected)
    if stats is not None:
        publish(snap, stats)
    return snap


def _refuse_emptied(spec: ListSpec, parsed: Parsed, previous: Blocklists | None) -> None:
    old = previous.lists.get(spec.name) if previous is not None else None
    if old is not None and old.spec.source == spec.source:
        refuse_emptied(spec, parsed, old.entries)


def refuse_emptied(spec: ListSpec, parsed: Parsed, old_entries: int) -> None:
    """A list that had entries and now has none was most likely truncated, not emptied."""
    if old_entries and not len(parsed) and not spec.allow_empty:
        raise LoadError(f"{spec.source} has no entries now (it had {old_entries}); keeping the "
                        f"last good version (set allow_empty: true for this list to allow it)")


def _keep_old(snap: Blocklists, info: ListInfo, previous: Blocklists | None) -> None:
    """Carry a failed list's rules over from the previous snapshot (or serve it empty, loudly)."""
    old = previous.lists.get(info.spec.name) if previous else None
    if old is None or old.spec.source != info.spec.source or not old.loaded_at:
        log.error("list %s has never loaded (%s): it blocks nothing until it does",
                  info.spec.name, info.error)
        return
    log.error("list %s failed to load (%s); keeping the previous version (%d entries)",
              info.spec.name, info.error, old.entries)
    assert previous is not None
    parsed = Parsed()
    parsed.domains = previous.index.domains_of(old.bit)
    for bit, rx in previous.index.regexes:
        if bit == old.bit:
            parsed.regexes = [rx.pattern]
    snap.index.add(info.bit, parsed, allow=info.spec.allow)
    info.entries = old.entries
    info.loaded_at = old.loaded_at


def publish(snap: Blocklists, stats: Stats) -> None:
    """Copy per-list sizes and load times into the metrics counters."""
    stats.list_entries = {n: i.entries for n, i in snap.lists.items()}
    stats.list_last_success = {n: i.loaded_at for n, i in snap.lists.items() if i.loaded_at}
    for n in snap.lists:
        stats.list_load_failures.setdefault(n, 0)


def changed(snap: Blocklists) -> bool:
    """Has any local list file changed since the snapshot was built?"""
    return any(i.spec.kind != "url" and fingerprint(i.spec) != i.fingerprint
               for i in snap.lists.values())

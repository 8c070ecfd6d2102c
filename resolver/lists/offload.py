"""Building a new lists snapshot while the event loop keeps answering.

Why: a reload of a 1.1M-domain list delayed every answer by ~1.2 s, because
parsing in a thread holds the interpreter lock, and even plain set operations
over a million names are one C call of 50-100 ms.  So for big lists:

1. parsing happens in a child process (``build_worker``), on another core;
2. its result arrives as chunks of 8k names, read from a pipe without
   blocking, and the index is assembled one chunk per event-loop iteration;
3. the snapshot that is replaced is freed a slice at a time, later (``dispose``):
   dropping a million-name set at once is itself a 50 ms pause.

Small lists (the common case) keep the simple path, ``loader.load_all`` in a
thread: starting an interpreter costs more than they do.  If the child cannot
be started or fails, the thread path is used, so a reload never fails for it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import pickle
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Config, ListSpec
from ..stats import Stats
from . import loader, remote
from .index import DomainIndex
from .loader import Blocklists, ListInfo

log = logging.getLogger("hushdns.lists")

OFFLOAD_BYTES = 4 * 1024 * 1024   # lists larger than this together are built in a child
SLICE = 8192                     # names handled per event-loop iteration
CHILD_TIMEOUT = 600.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class ChildFailed(Exception):
    """The build child died, timed out or spoke nonsense."""


def _size(spec: ListSpec, state_dir: str, texts: dict[str, str]) -> int:
    if spec.name in texts:
        return len(texts[spec.name])
    try:
        if spec.kind == "url":
            return remote.copy_paths(spec.source, state_dir)[0].stat().st_size
        path = Path(spec.source)
        if spec.kind == "dir":
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


async def build(config: Config, previous: Blocklists | None, stats: Stats | None,
                texts: dict[str, str] | None = None) -> Blocklists:
    """A new snapshot of every list in ``config`` (failed lists keep their old rules)."""
    texts = texts or {}
    total = sum(_size(s, config.state_dir, texts) for s in config.all_lists())
    if total < OFFLOAD_BYTES:
        return await asyncio.to_thread(loader.load_all, config, previous, stats, texts or None)
    try:
        return await _build_in_child(config, previous, stats, texts)
    except (OSError, ChildFailed, EOFError, pickle.UnpicklingError, TimeoutError) as exc:
        log.warning("building lists in a child process failed (%r); building them here", exc)
        return await asyncio.to_thread(loader.load_all, config, previous, stats, texts or None)


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    n = struct.unpack("!I", await reader.readexactly(4))[0]
    return pickle.loads(await reader.readexactly(n))  # noqa: S301 - our own child


async def _build_in_child(config: Config, previous: Blocklists | None, stats: Stats | None,
                          texts: dict[str, str]) -> Blocklists:
    specs = config.all_lists()
    snap = Blocklists()
    for i, spec in enumerate(specs):   # fingerprints before reading, as load_all does
        bit = 1 << i
        snap.lists[spec.name] = ListInfo(spec, bit, fingerprint=loader.fingerprint(spec))
        snap.by_bit[bit] = spec.name
        if spec.track_domains:
            snap.tracked |= bit
    old_meta = {n: (i.spec.source, i.entries) for n, i in (previous.lists.items() if previous else ())}
    request = pickle.dumps({"specs": specs, "state_dir": config.state_dir, "texts": texts,
                            "previous": old_meta}, protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resolver.lists.build_worker", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 20)
    parts: list[tuple[int, list[str], list[str], bool]] = []
    try:
        async with asyncio.timeout(CHILD_TIMEOUT):
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(request)
            await proc.stdin.drain()
            proc.stdin.close()
            del request
            for spec in specs:
                head = await _read_frame(proc.stdout)
                if not (isinstance(head, tuple) and head[:2] == ("list", spec.name)):
                    raise ChildFailed(f"unexpected frame {head!r:.80}")
                _, _, error, entries, rejected, regexes, n_chunks = head
                chunks = [await _read_frame(proc.stdout) for _ in range(n_chunks)]
                info = snap.lists[spec.name]
                if error is not None:
                    info.error = error
                    if stats is not None:
                        stats.list_load_failures[spec.name] = stats.list_load_failures.get(spec.name, 0) + 1
                    parts.append(await _carry_over(info, previous))
                    continue
                info.entries, info.rejected, info.loaded_at = entries, rejected, time.time()
                if rejected:
                    log.info("list %s: %d entries, %d lines rejected (run 'hushdns check' for "
                             "details)", spec.name, entries, rejected)
                parts.append((info.bit, chunks, regexes, spec.allow))
            if await _read_frame(proc.stdout) != ("done",):
                raise ChildFailed("no end frame")
        await proc.wait()
    except asyncio.IncompleteReadError as exc:
        raise ChildFailed(f"the child ended early (exit {proc.returncode})") from exc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    snap.index = await build_index(parts)
    if stats is not None:
        loader.publish(snap, stats)
    return snap


async def _carry_over(info: ListInfo, previous: Blocklists | None
                      ) -> tuple[int, list[str], list[str], bool]:
    """A failed list's previous rules, read from the serving snapshot a slice at a time."""
    old = previous.lists.get(info.spec.name) if previous else None
    if old is None or old.spec.source != info.spec.source or not old.loaded_at:
        log.error("list %s has never loaded (%s): it blocks nothing until it does",
                  info.spec.name, info.error)
        return info.bit, [], [], info.spec.allow
    log.error("list %s failed to load (%s); keeping the previous version (%d entries)",
              info.spec.name, info.error, old.entries)
    assert previous is not None
    idx = previous.index
    chunks: list[str] = []
    it: Iterator[str] = iter(idx.names)   # a snapshot is never changed: safe across awaits
    while batch := list(itertools.islice(it, SLICE)):
        masks, common = idx.masks, idx.common
        chunks.append("\n".join(n for n in batch if masks.get(n, common) & old.bit))
        await asyncio.sleep(0)
    regexes = list(idx.regex_sources.get(old.bit, ()))
    info.entries, info.loaded_at = old.entries, old.loaded_at
    return info.bit, chunks, regexes, info.spec.allow


def _names(chunk: str) -> list[str]:
    return chunk.split("\n") if chunk else []


async def build_index(parts: list[tuple[int, list[str], list[str], bool]]) -> DomainIndex:
    """The same DomainIndex ``DomainIndex.add`` would build, assembled one chunk per iteration."""
    idx = DomainIndex()
    for bit, _chunks, regexes, allow in parts:
        idx.add_regexes(bit, regexes)
        if allow:
            idx.allow_bits |= bit
    with_names = [(bit, chunks) for bit, chunks, _r, _a in parts if any(chunks)]
    if len(with_names) == 1:   # one list: the set is the whole index
        bit, chunks = with_names[0]
        for chunk in chunks:
            idx.names.update(_names(chunk))
            await asyncio.sleep(0)
        idx.common = bit
        return idx
    if not with_names:
        return idx
    masks: dict[str, int] = {}
    intern: dict[int, int] = {}
    for bit, chunks in with_names:
        for chunk in chunks:
            new = dict.fromkeys(_names(chunk), bit)
            for name in new.keys() & masks.keys():
                m = masks[name] | bit
                new[name] = intern.setdefault(m, m)
            masks.update(new)
            await asyncio.sleep(0)
    counts: collections.Counter[int] = collections.Counter()
    values = iter(masks.values())
    while batch := list(itertools.islice(values, SLICE * 4)):
        counts.update(batch)
        await asyncio.sleep(0)
    common = counts.most_common(1)[0][0]
    names: set[str] = set()
    minority: dict[str, int] = {}
    items = iter(masks.items())
    while pairs := list(itertools.islice(items, SLICE)):
        names.update(n for n, _ in pairs)
        minority.update((n, m) for n, m in pairs if m != common)
        await asyncio.sleep(0)
    await dispose_dict(masks)
    idx.names, idx.masks, idx.common, idx._interned = names, minority, common, intern
    return idx


async def dispose_dict(d: dict[Any, Any]) -> None:
    while d:
        for _ in range(min(SLICE, len(d))):
            d.popitem()
        await asyncio.sleep(0)


async def dispose(snap: Blocklists, after: float = 0.0) -> None:
    """Free a replaced snapshot a slice at a time, once in-flight queries are done with it.

    ``after``: seconds to wait first (queries waiting on an upstream may still
    check a CNAME against the old lists).  Only big indexes need this; a small
    one is simply dropped.
    """
    idx = snap.index
    if len(idx.names) < SLICE * 4:
        return
    if after:
        await asyncio.sleep(after)
    await dispose_dict(idx.masks)
    names = idx.names
    while names:
        for _ in range(min(SLICE, len(names))):
            names.pop()
        await asyncio.sleep(0)

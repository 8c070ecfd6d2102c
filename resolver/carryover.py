"""What a reload hands from the old pipeline to the new one: rate-limit buckets, upstream
health and questions in flight.

Why: a reload (SIGHUP, a list refresh, an edited list file) builds a new pipeline.  Before,
it also forgot every client's token bucket (a flood got a fresh burst per reload), every
upstream's health (a dead upstream was asked first again, each query waiting
``upstream_timeout`` for it) and the in-flight table (the same question asked again while
the old query was still out).  The cache table is carried by the caller (``_install``),
under its own conditions, and the in-flight table is one per server.  Functions over the
stages' state, not stage methods, so that a differently built pipeline can use them the
same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .stages.forward import Forward
from .stages.ratelimit import RateLimit
from .stats import Stats


def stages(pipeline: Any) -> Iterator[Any]:
    """The stages of a pipeline in request order, then its terminal."""
    yield from pipeline.stages
    yield pipeline.terminal


def carry_over(old_pipeline: Any, new_pipeline: Any, stats: Stats) -> None:
    """Give the new pipeline's stages the old ones' runtime state (nothing when there was none)."""
    if old_pipeline is None:
        return
    old = {type(s): s for s in stages(old_pipeline)}
    for stage in stages(new_pipeline):
        prev = old.get(type(stage))
        if prev is None:
            continue
        if isinstance(stage, RateLimit):
            # Tokens above a lowered burst are cut on the next take.
            stage.buckets = prev.buckets
        elif isinstance(stage, Forward):
            _forward(prev, stage, stats)


def _forward(prev: Forward, new: Forward, stats: Stats) -> None:
    """The same Upstream objects (failures, back-off, probe in flight) for the same
    endpoints, and the one in-flight table, so new queries join questions already out."""
    pool = {u.addr: u for u in prev.default}
    for ups in prev.zones.values():
        pool.update((u.addr, u) for u in ups)
    new.default = [pool.get(u.addr, u) for u in new.default]
    new.zones = {z: [pool.get(u.addr, u) for u in ups] for z, ups in new.zones.items()}
    new.inflight = prev.inflight
    live = {u.label: u for u in new.default}
    for ups in new.zones.values():
        live.update((u.label, u) for u in ups)
    stats.upstream_state = {label: 0 if u.down else 1 for label, u in live.items()}

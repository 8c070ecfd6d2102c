"""The per-query counting of ``Stats.query``, as a function the compiled build compiles.

Why not a method of Stats: stats.py stays pure Python (Stats is read generically:
vars, copy, pickle for ``workers: N``), and a call from compiled code into a Python
method costs a Python frame per query.  ``Stats.query`` calls this function, so there is
one way of counting a query; it only touches Stats' public dicts.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # stats.py imports this module (Stats.query calls count_query)
    from .stats import Stats


def count_query(stats: Stats, client: str, qtype: str, result: str, duration: float) -> None:
    """``stats.query(client, qtype, result, duration)``, without a Python frame when compiled."""
    key = (client, qtype, result)
    queries = stats.queries
    queries[key] = queries.get(key, 0) + 1
    durations = stats.request_duration
    h = durations.get(result)
    if h is None:
        h = durations[result] = stats.new_histogram()
    bounds = h.bounds
    # Most answers (blocked, cached, from the memo) are under the first bound: no search.
    h.counts[0 if bounds and duration <= bounds[0] else bisect_left(bounds, duration)] += 1
    h.total += duration

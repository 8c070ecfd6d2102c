"""The one place where the chain of stages is assembled, in order.

Disabled features are left out here rather than checked on every query.
"""

from __future__ import annotations

from collections import OrderedDict

from .config import Config
from .lists.loader import Blocklists
from .stages import Stage
from .stages.access import Access
from .stages.blocking import Blocking
from .stages.cache import Cache
from .stages.forward import Forward
from .stages.ratelimit import RateLimit
from .stages.rebind import Rebind
from .stats import Stats
from .wire import Answer


def build_chain(config: Config, lists: Blocklists, stats: Stats,
                cache_entries: OrderedDict[bytes, Answer] | None = None) -> tuple[Stage, Cache]:
    """access (+ minimal ANY) -> rate limit -> blocking -> cache -> rebind -> forward.

    Returns the head and the cache.
    """
    udp = config.server.udp_size
    # 6. forward: ask upstreams / forward zones; shares identical in-flight questions.
    upstream: Stage = Forward(config, stats)
    # 5. rebind protection (optional): strips private addresses from public answers,
    #    after forward and before the cache, so it runs once per upstream answer.
    if config.rebind_protection.enabled:
        upstream = Rebind(upstream, config, stats)
    # 4. cache: answers as bytes; serve-stale and SERVFAIL caching live here.
    cache = Cache(upstream, config.cache, stats, cache_entries)
    # 3. blocking: before the cache, so per-client groups and CNAME cloaking see every answer.
    head: Stage = cache
    if lists.lists:
        head = Blocking(head, lists, config.blocking, stats, udp)
    # 2. rate limit (optional): a token bucket per client, right after access so
    #    refused outsiders do not use up buckets and a flood costs no other work.
    if config.rate_limit.qps > 0:
        head = RateLimit(head, config.rate_limit, stats)
    # 1. access: REFUSED for clients outside access.allow, and the minimal answer to
    #    ANY over UDP (RFC 8482), before any list or upstream work.
    head = Access(head, udp)
    return head, cache

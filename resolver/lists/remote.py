"""Lists fetched over http(s).  (Being written for issue 4: download, disk copy, refresh.)"""

from __future__ import annotations

from ..config import ListSpec


def fetch_text(spec: ListSpec, state_dir: str) -> str:
    from .loader import LoadError

    raise LoadError(f"URL lists are not available yet: {spec.source}")

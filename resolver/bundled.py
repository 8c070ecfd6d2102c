"""Where the files that ship inside the package are: the curated lists and the default config.

Why two places: in a wheel the top-level ``blocklists/`` is copied to
``resolver/bundled_lists`` (see pyproject.toml); in a source checkout or an
editable install the package reads ``blocklists/`` next to it, so an edit there
takes effect without reinstalling.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_HERE = Path(__file__).resolve().parent


def lists_dir() -> Path:
    """The directory of the curated lists that ``bundled:NAME`` and the default config use."""
    packaged = _HERE / "bundled_lists"
    if packaged.is_dir():
        return packaged
    return _HERE.parent / "blocklists"


def default_config_text() -> str:
    """The embedded default configuration (YAML)."""
    return (_HERE / "default_config.yaml").read_text(encoding="utf-8")


STRICT_SUFFIX = "-strict"


def strict_config_text() -> str:
    """The embedded default config plus the strict list of every bundled vendor (``--strict``).

    Why generated, not a second file: the strict profile must stay the default
    config plus exactly the strict lists, whatever vendors the default config
    gains; a copy would drift.  A default list ``bundled:<vendor>.txt`` gets
    ``<vendor>-strict`` beside it when ``<vendor>-strict.txt`` ships.
    """
    data = yaml.safe_load(default_config_text())
    lists = data["blocking"]["lists"]
    for name, spec in list(lists.items()):
        source = spec.get("source") if isinstance(spec, dict) else spec
        if not isinstance(source, str) or not source.startswith("bundled:"):
            continue
        strict = source[len("bundled:"):].removesuffix(".txt") + STRICT_SUFFIX + ".txt"
        if (lists_dir() / strict).is_file() and name + STRICT_SUFFIX not in lists:
            lists[name + STRICT_SUFFIX] = {"source": f"bundled:{strict}", "track_domains": True}
    return ("# hushdns embedded default configuration with the strict lists (serve --strict)\n"
            + yaml.safe_dump(data, sort_keys=False))

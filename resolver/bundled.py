"""Where the files that ship inside the package are: the curated lists and the default config.

Why two places: in a wheel the top-level ``blocklists/`` is copied to
``resolver/bundled_lists`` (see pyproject.toml); in a source checkout or an
editable install the package reads ``blocklists/`` next to it, so an edit there
takes effect without reinstalling.
"""

from __future__ import annotations

from pathlib import Path

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

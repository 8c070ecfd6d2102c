"""Reading a local list file without trusting what the path points at.

Why: the path comes from the config, but what is there can change under a
running server (a ``git pull``, a mistake, an attacker with write access to
the list directory).  A 200 MB file peaked at 1.8 GiB RSS, a symlink to
``/dev/zero`` grew without bound, and a FIFO blocked the reload (and SIGTERM)
forever in ``open``.  So: open non-blocking, refuse anything that is not a
regular file, and never read more than the list's ``max_size``.
"""

from __future__ import annotations

import os
import stat

DEFAULT_MAX_SIZE = 64 * 1024 * 1024
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | \
    getattr(os, "O_NOCTTY", 0)


class NotAListFile(OSError):
    """The path is not a regular file of acceptable size (message says which)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes(path: str, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The file's bytes; NotAListFile for a non-regular file or one above ``max_size``."""
    try:
        fd = os.open(path, _FLAGS)
    except IsADirectoryError:
        raise NotAListFile(f"{path} is a directory, not a list file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAListFile(f"{path} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_size:
            raise NotAListFile(f"{path} is {st.st_size} bytes, more than max_size ({max_size})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_size:   # it grew while we read
                raise NotAListFile(f"{path} is more than max_size ({max_size}) bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str, max_size: int = DEFAULT_MAX_SIZE) -> str:
    return read_bytes(path, max_size).decode("utf-8", errors="replace")

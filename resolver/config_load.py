"""Reading a config file defensively: bytes, size, nesting and alias expansion bounded.

Why before YAML composition: the file may come from a tool, a bad merge or an
attacker with write access to one directory.  Non-UTF-8 bytes, a 9-level
"billion laughs" alias bomb (a few hundred bytes that expand to 10^9 nodes)
or 10,000 nested brackets used to escape as tracebacks, a 7.5 s stall or a
RecursionError.  Here they become one ``ConfigError`` line with the file and
line, and the work done before that is bounded by the size of the file, not
by what it expands to.  (The caller runs this off the event loop: see
``Server.reload``.)
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import yaml

MAX_CONFIG_BYTES = 4 * 1024 * 1024   # a real config is a few KB
MAX_DEPTH = 64                        # nesting of mappings/sequences
MAX_NODES = 200_000                   # nodes after alias expansion

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(Exception):
    """One problem with the file as a whole, already worded with file and line."""


def read_text(path: Path) -> str:
    """The file's text; ConfigFileError when it is not a small regular UTF-8 file.

    OSError (missing, unreadable) is left to the caller, which words it already.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigFileError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"{path}: {st.st_size} bytes is larger than the "
                                  f"{MAX_CONFIG_BYTES} a config may be")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_CONFIG_BYTES:   # grew while we read
                raise ConfigFileError(f"{path}: larger than the {MAX_CONFIG_BYTES} bytes a config may be")
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(f"<file>: not UTF-8 text: byte 0x{data[exc.start]:02x} "
                              f"({path}:{line})") from None


def check_structure(text: str, filename: str) -> None:
    """Refuse deep nesting and alias bombs, from the event stream, before composing.

    The count follows aliases as a full load would expand them: every alias
    adds the size of what its anchor stands for.  Syntax errors are left to
    the composer (the caller reports those with their own wording).
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{filename}: larger than the {MAX_CONFIG_BYTES} bytes a config may be")
    try:
        _walk(text, filename, _Loader)
    except yaml.YAMLError:
        # libyaml refuses some inputs (1000 nested brackets) before yielding any event; the
        # pure-Python parser is iterative, so it reaches our depth bound first.  A real
        # syntax error is left to the composer, which words it for the user.
        with contextlib.suppress(yaml.YAMLError):
            _walk(text, filename, yaml.SafeLoader)


def _walk(text: str, filename: str, loader: type) -> None:
    sizes: dict[str, int] = {}
    stack: list[list] = []        # per open collection: [node count, anchor]
    total = 0
    for ev in yaml.parse(text, Loader=loader):
        line = ev.start_mark.line + 1 if ev.start_mark is not None else 0
        if isinstance(ev, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append([1, ev.anchor])
            if len(stack) > MAX_DEPTH:
                raise ConfigFileError(f"<yaml>: nested deeper than {MAX_DEPTH} levels "
                                      f"({filename}:{line})")
            continue
        closed = isinstance(ev, yaml.MappingEndEvent | yaml.SequenceEndEvent)
        if closed:
            n, anchor = stack.pop()
            if anchor:
                sizes[anchor] = n
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            if ev.anchor:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            n = sizes.get(ev.anchor, 1)
        else:
            continue
        if stack:
            stack[-1][0] += n
        if not closed:
            total += n   # a closed collection's nodes were counted as they came
        if total > MAX_NODES or (stack and stack[-1][0] > MAX_NODES):
            raise ConfigFileError(f"<yaml>: expands to more than {MAX_NODES} values "
                                  f"(aliases?) ({filename}:{line})")

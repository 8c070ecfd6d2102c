"""The child process that reads and parses lists for a reload (``python -m resolver.lists.build_worker``).

Why a process: parsing a million-line list is a few seconds of Python, and in a
thread it holds the interpreter lock against the event loop, so every answer
waited (about 1.2 s at 20k queries/s).  Here it runs on another core and hands
back a compact form: per list, its domains as newline-joined chunks, which the
server turns into its index a slice at a time (``offload.py``).

Protocol: stdin carries one pickled request; stdout carries length-prefixed
pickled frames: ``("list", name, error, entries, rejected, regexes, n_chunks)``
followed by ``n_chunks`` strings, for every list in order, then ``("done",)``.
Both ends are this program (the parent starts ``sys.executable`` on its own package).
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any, BinaryIO

from . import loader

CHUNK = 8192   # names per chunk: the parent adds one chunk per event-loop slice


def _frame(out: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(struct.pack("!I", len(data)) + data)


def run(request: dict[str, Any], out: BinaryIO) -> None:
    texts: dict[str, str] = request.get("texts") or {}
    previous: dict[str, tuple[str, int]] = request.get("previous") or {}
    for spec in request["specs"]:
        try:
            text = texts[spec.name] if spec.name in texts else \
                loader.read_source(spec, request["state_dir"])
            parsed = loader.parse_checked(spec, text)
            source, entries = previous.get(spec.name, ("", 0))
            if source == spec.source:
                loader.refuse_emptied(spec, parsed, entries)
        except loader.LoadError as exc:
            _frame(out, ("list", spec.name, str(exc), 0, 0, [], 0))
            continue
        domains = parsed.domains
        chunks = ["\n".join(domains[i:i + CHUNK]) for i in range(0, len(domains), CHUNK)]
        _frame(out, ("list", spec.name, None, len(parsed), len(parsed.rejected),
                     parsed.regexes, len(chunks)))
        for chunk in chunks:
            _frame(out, chunk)
        del parsed, domains, chunks
    _frame(out, ("done",))
    out.flush()


def main() -> int:
    request = pickle.load(sys.stdin.buffer)  # noqa: S301 - our own parent, a private pipe
    run(request, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())

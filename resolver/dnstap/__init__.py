"""dnstap output: the query/response log format BIND, unbound, Knot, CoreDNS and dnsdist emit.

``message`` encodes the protobuf by hand (a dozen varint and length-delimited fields),
``framestream`` speaks Frame Streams (the bidirectional READY/ACCEPT/START handshake,
data frames, STOP/FINISH), ``writer`` is the bounded queue and the thread that drains it.
"""

from .writer import DnstapWriter

__all__ = ["DnstapWriter"]

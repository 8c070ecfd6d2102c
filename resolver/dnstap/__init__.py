"""dnstap output: the query/response log format BIND, unbound, Knot, CoreDNS and dnsdist emit.

``message`` encodes the protobuf by hand (a dozen varint and length-delimited fields),
``framestream`` speaks Frame Streams (the bidirectional READY/ACCEPT/START handshake,
data frames, STOP/FINISH), ``writer`` is what the server holds (records collected on the
event loop, shipped in batches), ``child`` the sender process that encodes them, keeps a
bounded queue and talks to the collector.
"""

from .writer import DnstapWriter

__all__ = ["DnstapWriter"]

"""Who is asking: device names from the config, DHCP leases, reverse DNS and the neighbour table.

A device is a name with its addresses (and MAC when known). ``registry.build_map``
turns what the sources say into one address -> name mapping; ``DeviceNames``
re-reads the sources off the event loop and hands out a new mapping each time,
which the client table swaps in (see resolver/clients.py).
"""

from .leases import Lease, read_leases
from .neighbours import read_neighbours
from .registry import Device, DeviceMap, DeviceNames, build_map, devices_now

__all__ = ["Device", "DeviceMap", "DeviceNames", "Lease", "build_map", "devices_now", "read_leases",
           "read_neighbours"]

"""The relay: per node pair, a port on each side; WireGuard's encrypted datagrams are
forwarded between the two bound endpoints, in the kernel (nftables) or in userspace.
See ``docs/relay.md``.

Core: ``table.py`` (:class:`~signal_server.relay.table.RelayTable`: allocations, binds
and expiry, with the time as an argument; no sockets, no trio). Adapters:
``service.py`` (:class:`~signal_server.relay.service.RelayService`: the allocation
sockets and their receive loops, run in the signal server's nursery) and
``forwarders.py`` (the nftables forwarder, by subprocess, and the userspace one).
"""

from .service import RelayMode, RelayService, RelayStatistics
from .table import RelayPool

__all__ = ["RelayMode", "RelayPool", "RelayService", "RelayStatistics"]

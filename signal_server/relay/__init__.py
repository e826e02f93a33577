"""The relay: per node pair, a port on each side; WireGuard's encrypted datagrams are
forwarded between the two bound endpoints, in the kernel (nftables) or in userspace.
See ``docs/relay.md``."""

from .service import RelayMode, RelayService, RelayStatistics
from .table import RelayPool

__all__ = ["RelayMode", "RelayPool", "RelayService", "RelayStatistics"]

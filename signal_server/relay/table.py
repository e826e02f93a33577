"""The relay's allocation table, sans-IO: who may use which port, and for how long.

An allocation joins two nodes of one network; it has a side per node, each with a port
on one relay address, a secret, and — once the node has bound it — the endpoint the
node's packets come from. Forwarding needs both sides bound. Rules:

* one allocation per node pair (get or create): both nodes ask and get their side;
* a node holds at most ``per_node_limit`` allocations (:class:`~punchd.errors.TooMany`);
* ports come in pairs from the relay address with the most free ports;
  none left is :class:`~punchd.errors.Unavailable`;
* a bind must carry the side's MESSAGE-INTEGRITY (checked by the caller, who has the
  datagram) and a wall clock within ``CLOCK_SKEW_MS``; a bind from the bound source
  refreshes; from a new source it *moves* the side only when its clock is newer than
  the last accepted one, so a replayed bind cannot steal a side;
* an allocation with no bind and no forwarded traffic for ``idle_timeout`` expires
  and its ports are free again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum

from punchd.errors import TooMany, Unavailable
from punchd.wire.addr import Addr

CLOCK_SKEW_MS = 60_000
PER_NODE_LIMIT = 64
IDLE_TIMEOUT_S = 120.0
REFRESH_S = 15.0


@dataclass(frozen=True)
class RelayPool:
    """One ``--relay HOST:LOW-HIGH``: a public address and its port range."""

    address: str
    low: int
    high: int


@dataclass
class Side:
    node_id: str
    local: Addr  # the relay address and port this side sends to
    secret: bytes
    bound: Addr | None = None
    bound_ms: int = 0  # the sender's clock on the last accepted bind


@dataclass
class Allocation:
    id: str
    network: str
    sides: tuple[Side, Side]
    last_active: float
    forwarded: int = 0  # datagrams, as the forwarder counts them

    @property
    def ready(self) -> bool:
        return all(s.bound is not None for s in self.sides)

    def side_of(self, node_id: str) -> int:
        return 0 if self.sides[0].node_id == node_id else 1


class BindOutcome(Enum):
    BOUND = "bound"  # first bind of this side
    REFRESHED = "refreshed"  # same source again
    MOVED = "moved"  # a newer bind from a new source: the side follows it
    STALE = "stale"  # from a new source but not newer: refused
    CLOCK = "clock"  # wall clock too far from ours: refused
    UNKNOWN = "unknown"  # no such allocation or side on this port


@dataclass
class RelayTable:
    pools: list[RelayPool]
    per_node_limit: int = PER_NODE_LIMIT
    idle_timeout: float = IDLE_TIMEOUT_S
    allocations: dict[str, Allocation] = field(default_factory=dict)
    _by_pair: dict[tuple[str, frozenset[str]], str] = field(default_factory=dict)
    _by_local: dict[Addr, tuple[str, int]] = field(default_factory=dict)
    _free: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pool in self.pools:
            ports = self._free.setdefault(pool.address, [])
            ports.extend(range(pool.high, pool.low - 1, -1))  # pop() takes the lowest

    def allocate(self, network: str, node_id: str, peer_id: str, now: float
                 ) -> tuple[Allocation, int]:
        """The pair's allocation (created if need be) and the caller's side index."""
        key = (network, frozenset((node_id, peer_id)))
        existing = self._by_pair.get(key)
        if existing is not None:
            alloc = self.allocations[existing]
            alloc.last_active = now
            return alloc, alloc.side_of(node_id)
        for nid in (node_id, peer_id):
            if self.count(nid) >= self.per_node_limit:
                raise TooMany(f"node {nid} holds {self.per_node_limit} relay allocations "
                              "already")
        address = max(self._free, key=lambda a: len(self._free[a]), default=None)
        if address is None or len(self._free[address]) < 2:
            raise Unavailable("no relay ports left" if self.pools else "this server has no "
                              "relay (signal-server serve --relay HOST:LOW-HIGH)")
        ports = (self._free[address].pop(), self._free[address].pop())
        alloc = Allocation(
            id=secrets.token_hex(8), network=network, last_active=now,
            sides=(Side(node_id, (address, ports[0]), secrets.token_bytes(16)),
                   Side(peer_id, (address, ports[1]), secrets.token_bytes(16))))
        self.allocations[alloc.id] = alloc
        self._by_pair[key] = alloc.id
        for index, side in enumerate(alloc.sides):
            self._by_local[side.local] = (alloc.id, index)
        return alloc, 0

    def count(self, node_id: str) -> int:
        return sum(1 for a in self.allocations.values()
                   if node_id in (a.sides[0].node_id, a.sides[1].node_id))

    def at(self, local: Addr) -> tuple[Allocation, int] | None:
        """The allocation side that owns a relay port."""
        found = self._by_local.get(local)
        if found is None:
            return None
        return self.allocations[found[0]], found[1]

    def bind(self, local: Addr, alloc_id: str, side: int, source: Addr, wall_ms: int,
             now: float, now_ms: int) -> BindOutcome:
        """An *authenticated* bind (the caller checked MESSAGE-INTEGRITY)."""
        found = self.at(local)
        if found is None or found[0].id != alloc_id or found[1] != side:
            return BindOutcome.UNKNOWN
        alloc, _ = found
        if abs(wall_ms - now_ms) > CLOCK_SKEW_MS:
            return BindOutcome.CLOCK
        s = alloc.sides[side]
        if s.bound == source:
            s.bound_ms = max(s.bound_ms, wall_ms)
            alloc.last_active = now
            return BindOutcome.REFRESHED
        if s.bound is not None and wall_ms <= s.bound_ms:
            return BindOutcome.STALE
        outcome = BindOutcome.BOUND if s.bound is None else BindOutcome.MOVED
        s.bound, s.bound_ms = source, wall_ms
        alloc.last_active = now
        return outcome

    def traffic(self, alloc: Allocation, forwarded: int, now: float) -> None:
        """The forwarder's datagram count for ``alloc``; a change keeps it alive."""
        if forwarded != alloc.forwarded:
            alloc.forwarded = forwarded
            alloc.last_active = now

    def expire(self, now: float) -> list[Allocation]:
        """Remove and return the allocations idle for ``idle_timeout``."""
        gone = [a for a in self.allocations.values() if now - a.last_active > self.idle_timeout]
        for alloc in gone:
            self.release(alloc)
        return gone

    def release(self, alloc: Allocation) -> None:
        """Forget an allocation and free its ports (expiry, or one made for nothing)."""
        if self.allocations.pop(alloc.id, None) is None:
            return
        self.discard(alloc)
        for side in alloc.sides:
            self._free[side.local[0]].append(side.local[1])

    def discard(self, alloc: Allocation) -> None:
        """Forget an allocation without freeing its ports: used as it is when the ports
        could not be opened (someone else on the host holds at least one of them)."""
        self.allocations.pop(alloc.id, None)
        self._by_pair.pop((alloc.network, frozenset(s.node_id for s in alloc.sides)), None)
        for side in alloc.sides:
            self._by_local.pop(side.local, None)

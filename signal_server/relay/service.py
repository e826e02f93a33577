"""The relay service: allocations' sockets, binds, forwarding and expiry, in trio.

Decisions are the table's (:mod:`.table`); the forwarder (:mod:`.forwarders`) moves
datagrams in the kernel when it can. Each allocation side has a UDP socket on its
relay port for as long as the allocation lives. What arrives there:

* a bind (STUN Binding request with the side's MESSAGE-INTEGRITY): the table records
  the source, the relay answers from the same port, and when both sides are bound
  (or one moved) the forwarder is (re)programmed;
* a datagram from the side's bound endpoint while the other side is bound: forwarded
  from the other side's port to the other endpoint (the kernel forwarder takes these
  before they reach the socket; the few that race its programming are forwarded
  here too);
* anything else: dropped and counted.

With replicas on one PostgreSQL, a :class:`~.registry.RelayRegistry` records each
allocation's owner in the store: a request answered by another replica's live
allocation needs no sockets here, and one made here is claimed there first (see the
registry's theory of operation). The service heartbeats its replica row while it runs
and removes its rows when it stops or its allocations expire.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

import trio

from punchd.errors import PunchdError, RelayError, StunParseError, Unavailable
from punchd.wire import api, stun
from punchd.wire import relay as wire
from punchd.wire.addr import Addr, format_addr

from .forwarders import Forwarder, NftForwarder, UserspaceForwarder
from .registry import HEARTBEAT_S, RelayRegistry, StoredAllocation, StoredSide
from .table import REFRESH_S, Allocation, BindOutcome, RelayPool, RelayTable

log = logging.getLogger("signal_server.relay")

RelayMode = Literal["auto", "nft", "userspace"]
EXPIRY_SWEEP_S = 5.0
RECEIVE_BUFFER = 65535
BATCH = 64  # datagrams drained per wake-up of a side's socket
# How often nodes bind when replicas share allocations: a node notices a dead owner at
# its next bind (two unanswered tries, 0.6 s: punchd/daemon/relaying.py), so this
# bounds the move to a survivor: 1 s + 0.6 s + one request, under issue #19's 2 s.
REPLICATED_REFRESH_S = 1.0
LEAVE_TIMEOUT_S = 5.0


@dataclass
class RelayStatistics:
    binds: int = 0  # accepted (bound, refreshed, moved)
    binds_refused: int = 0  # bad integrity, stale, clock, unknown
    forwarded_userspace: int = 0
    dropped: int = 0  # neither a bind nor forwardable
    allocations: int = 0
    expired: int = 0
    answered_elsewhere: int = 0  # requests answered with another replica's allocation
    lost_races: int = 0  # made here, but another replica had claimed the pair first
    heartbeat_failures: int = 0


@dataclass
class _Sockets:
    scope: trio.CancelScope
    by_side: list[socket.socket] = field(default_factory=list)  # non-blocking

    def close(self) -> None:
        self.scope.cancel()
        for sock in self.by_side:
            trio.lowlevel.notify_closing(sock)
            sock.close()


class RelayService:
    def __init__(self, pools: list[RelayPool], mode: RelayMode = "auto", *,
                 per_node_limit: int = 64, idle_timeout: float = 120.0,
                 refresh_s: float | None = None, registry: RelayRegistry | None = None
                 ) -> None:
        """``registry``: the shared table of a replicated server (None: this server is
        the only one, as on SQLite); it makes nodes bind every
        :data:`REPLICATED_REFRESH_S` unless ``refresh_s`` says otherwise."""
        self.registry = registry
        if refresh_s is None:
            refresh_s = REFRESH_S if registry is None else REPLICATED_REFRESH_S
        self.table = RelayTable(pools, per_node_limit=per_node_limit, idle_timeout=idle_timeout)
        self.mode = mode
        self.refresh_s = refresh_s
        self.forwarder: Forwarder = UserspaceForwarder()
        self.stats = RelayStatistics()
        self._sockets: dict[str, _Sockets] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()  # one allocation at a time: sockets and table agree

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.forwarder = await self._open_forwarder()
        try:
            if self.registry is not None:  # alive before the first request is answered
                await trio.to_thread.run_sync(self.registry.heartbeat, time.time())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expire_loop)
                if self.registry is not None:
                    nursery.start_soon(self._heartbeat_loop, self.registry)
                task_status.started()
        finally:
            self._nursery = None
            for sockets in self._sockets.values():
                sockets.close()
            with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT_S):
                await self._leave()
                await self.forwarder.close()

    async def _leave(self) -> None:
        """Survivors take our pairs over at once instead of after ``DEAD_AFTER_S``."""
        if self.registry is None:
            return
        try:
            await trio.to_thread.run_sync(self.registry.leave, abandon_on_cancel=True)
        except PunchdError as exc:  # StoreUnavailable: the heartbeat stops anyway
            log.warning("relay: could not remove this replica's allocations: %s", exc)

    async def _heartbeat_loop(self, registry: RelayRegistry) -> None:
        while True:
            await trio.sleep(HEARTBEAT_S)
            try:
                await trio.to_thread.run_sync(registry.heartbeat, time.time())
            except PunchdError as exc:  # the store is down: so is every claim; retry
                self.stats.heartbeat_failures += 1
                log.warning("relay: heartbeat: %s", exc)

    async def _open_forwarder(self) -> Forwarder:
        if not self.table.pools:  # a replica that only answers for the others' relays
            return UserspaceForwarder()
        if self.mode == "userspace":
            # Rules a killed in-kernel relay left behind would still forward old
            # allocations' ports: the table is ours, clear it.
            await NftForwarder.remove_stale()
            return UserspaceForwarder()
        nft = NftForwarder(sorted({p.address for p in self.table.pools}))
        try:
            await nft.open()
        except RelayError as exc:
            if self.mode == "nft":
                raise
            log.warning("relay: in-kernel forwarding unavailable (%s); forwarding in "
                        "userspace", exc)
            return UserspaceForwarder()
        log.info("relay: forwarding in the kernel (nftables table ip punchd_relay)")
        return nft

    def status(self) -> dict[str, object]:
        """For the admin API: the forwarder, the counters, and each allocation's state."""
        return {
            "forwarder": self.forwarder.kind, "statistics": dict(self.stats.__dict__),
            "replica": None if self.registry is None else self.registry.replica,
            "allocations": [
                {"id": a.id, "network": a.network, "forwarded": a.forwarded,
                 "idle_s": round(time.time() - a.last_active, 1),
                 "sides": [{"node": s.node_id, "relay": f"{s.local[0]}:{s.local[1]}",
                            "bound": f"{s.bound[0]}:{s.bound[1]}" if s.bound else None}
                           for s in a.sides]}
                for a in self.table.allocations.values()]}

    # -- allocation (the HTTP API calls this) ----------------------------------------------

    async def allocate(self, network: str, node_id: str, peer_id: str) -> api.RelayAllocation:
        if self._nursery is None:
            raise Unavailable("the relay is not running")
        registry = self.registry
        async with self._lock:
            # Looked up under the lock: requests for one pair queued here behind the one
            # that claims it find its row, instead of each making one to throw away.
            if registry is not None:
                found = await trio.to_thread.run_sync(registry.lookup, network, node_id,
                                                      peer_id, time.time())
                if found is not None and found.owner != registry.replica:
                    self.stats.answered_elsewhere += 1
                    return self._answer_stored(found, node_id)
            alloc, side, made = await self._allocate_here(network, node_id, peer_id)
            if registry is None:
                return self._answer(alloc, side)
            try:
                stored = await trio.to_thread.run_sync(registry.claim, _stored(alloc, registry),
                                                       time.time())
            except BaseException:
                if made:  # not recorded: no one else could find it, so no one uses it
                    await self._drop(alloc)
                raise
            if stored.id == alloc.id:
                return self._answer(alloc, side)
            # Another replica claimed the pair between our look and our claim: both
            # nodes must meet on its allocation, so ours goes.
            self.stats.lost_races += 1
            if made:
                await self._drop(alloc)
            return self._answer_stored(stored, node_id)

    async def _allocate_here(self, network: str, node_id: str, peer_id: str
                             ) -> tuple[Allocation, int, bool]:
        """The pair's allocation in our table, with its sockets; True if made now."""
        assert self._nursery is not None
        for _ in range(8):  # a port someone else holds is skipped, not fatal
            alloc, side = self.table.allocate(network, node_id, peer_id, time.time())
            if alloc.id in self._sockets:
                return alloc, side, False
            try:
                socks = _bind_udp_pair(alloc.sides[0].local, alloc.sides[1].local)
            except OSError as exc:
                log.warning("relay: port of %s unusable: %s", alloc.id, exc)
                self.table.discard(alloc)
                continue
            entry = self._sockets[alloc.id] = _Sockets(trio.CancelScope(), socks)
            self._nursery.start_soon(self._serve_allocation, alloc, entry)
            self.stats.allocations += 1
            return alloc, side, True
        raise Unavailable("no usable relay ports")

    def _answer_stored(self, stored: StoredAllocation, node_id: str) -> api.RelayAllocation:
        return stored.answer(node_id, now=time.time(), idle_timeout=self.table.idle_timeout,
                             refresh_s=self.refresh_s)

    def _answer(self, alloc: Allocation, side: int) -> api.RelayAllocation:
        mine, other = alloc.sides[side], alloc.sides[1 - side]
        return api.RelayAllocation(
            id=alloc.id, peer=other.node_id, relay=format_addr(mine.local), side=side,
            secret=mine.secret.hex(), expires_at=time.time() + self.table.idle_timeout,
            refresh_s=self.refresh_s)

    # -- datagrams --------------------------------------------------------------------------

    async def _serve_allocation(self, alloc: Allocation, entry: _Sockets) -> None:
        with entry.scope:  # cancelled when the allocation expires
            async with trio.open_nursery() as nursery:
                for index, sock in enumerate(entry.by_side):
                    nursery.start_soon(self._serve, alloc, index, sock)

    async def _serve(self, alloc: Allocation, side: int, sock: socket.socket) -> None:
        """One side's socket: wait until readable, then drain up to ``BATCH`` datagrams.

        Plain non-blocking sockets rather than trio's: a trio ``recvfrom`` is a
        scheduler round trip per datagram, which is most of what a userspace relay
        spends; forwarding here never blocks (a full send buffer drops the datagram, as
        a busy link would), so only ``wait_readable`` yields, once per batch.
        """
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return  # the allocation expired
            for _ in range(BATCH):
                try:
                    data, (host, port) = sock.recvfrom(RECEIVE_BUFFER)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # ICMP errors surface here; the socket stays usable
                source = (str(host), int(port))
                if stun.is_stun(data):
                    await self._bind(alloc, side, data, source)
                else:
                    self._forward(alloc, side, data, source)

    def _forward(self, alloc: Allocation, side: int, data: bytes, source: Addr) -> None:
        here, there = alloc.sides[side], alloc.sides[1 - side]
        entry = self._sockets.get(alloc.id)
        if source != here.bound or there.bound is None or entry is None:
            self.stats.dropped += 1
            return
        try:
            entry.by_side[1 - side].sendto(data, there.bound)
        except OSError:  # BlockingIOError included: the send buffer is full
            self.stats.dropped += 1
            return
        self.stats.forwarded_userspace += 1
        self.table.traffic(alloc, alloc.forwarded + 1, time.time())

    async def _bind(self, alloc: Allocation, side: int, data: bytes, source: Addr) -> None:
        here = alloc.sides[side]
        try:
            claim = wire.parse_bind_request(data)
        except StunParseError as exc:
            self.stats.binds_refused += 1
            log.debug("relay %s side %d: not a bind from %s: %s", alloc.id, side, source, exc)
            return
        if (claim.alloc_id, claim.side) != (alloc.id, side) \
                or not wire.verify_bind_request(data, here.secret):
            self.stats.binds_refused += 1
            log.debug("relay %s side %d: bind for %s:%d from %s does not authenticate",
                      alloc.id, side, claim.alloc_id, claim.side, source)
            return
        now = time.time()
        outcome = self.table.bind(here.local, alloc.id, side, source, claim.wall_ms, now,
                                  int(now * 1000))
        if outcome not in (BindOutcome.BOUND, BindOutcome.REFRESHED, BindOutcome.MOVED):
            self.stats.binds_refused += 1
            log.info("relay %s side %d: bind from %s:%d refused (%s)", alloc.id, side,
                     *source, outcome.value)
            return
        self.stats.binds += 1
        if outcome != BindOutcome.REFRESHED and alloc.ready:
            try:
                await self.forwarder.install(alloc)
            except RelayError as exc:
                log.warning("relay %s: %s; forwarding in userspace", alloc.id, exc)
        entry = self._sockets.get(alloc.id)
        if entry is not None:
            try:
                entry.by_side[side].sendto(
                    wire.bind_success(claim.transaction_id, source, here.secret), source)
            except OSError as exc:
                log.debug("bind answer to %s: %s", source, exc)

    # -- expiry -----------------------------------------------------------------------------

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_SWEEP_S)
            await self.sweep()

    async def sweep(self) -> None:
        now = time.time()
        counts = await self.forwarder.forwarded()
        for alloc in self.table.allocations.values():
            if alloc.id in counts:
                self.table.traffic(alloc, max(alloc.forwarded, counts[alloc.id]), now)
        for alloc in self.table.expire(now):
            self.stats.expired += 1
            await self._close(alloc)
            log.info("relay %s expired", alloc.id)
        if self.registry is not None:
            try:
                await trio.to_thread.run_sync(self.registry.retain, list(self.table.allocations),
                                              now)
                await trio.to_thread.run_sync(self.registry.prune, now)
            except PunchdError as exc:  # the next sweep tries again
                log.warning("relay: recording expiries: %s", exc)

    async def _drop(self, alloc: Allocation) -> None:
        """An allocation made here that no one will use: its ports are free again."""
        self.table.release(alloc)
        await self._close(alloc)

    async def _close(self, alloc: Allocation) -> None:
        entry = self._sockets.pop(alloc.id, None)
        if entry is not None:
            entry.close()
        try:
            await self.forwarder.remove(alloc)
        except RelayError as exc:
            log.warning("relay %s: removing its rules: %s", alloc.id, exc)


def _stored(alloc: Allocation, registry: RelayRegistry) -> StoredAllocation:
    """What the other replicas need of one of ours to answer for it."""
    a, b = (StoredSide(node=s.node_id, relay=format_addr(s.local), secret=s.secret.hex())
            for s in alloc.sides)
    now = time.time()
    return StoredAllocation(id=alloc.id, network=alloc.network, owner=registry.replica,
                            sides=(a, b), created=now, refreshed=now)


def _bind_udp_pair(local_a: Addr, local_b: Addr) -> list[socket.socket]:
    """Both sides' non-blocking sockets, or neither."""
    socks: list[socket.socket] = []
    try:
        for local in (local_a, local_b):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setblocking(False)
            sock.bind(local)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks

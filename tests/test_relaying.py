"""punchd's relay side under trio's MockClock: the bind and re-ask schedule.

A fake server hands out allocations and a fake network answers binds for the relays
that are up. When the relay a bound pair is on dies (its replica with it), the node
must be bound on the server's new allocation within 2 s (issue #19), whatever the
phase of its refresh; a lossy relay keeps its pair; a relay that stays dead loses it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.testing

from punchd.daemon import relaying
from punchd.daemon.relaying import Relaying
from punchd.punch.candidates import Addr
from punchd.wire import api
from punchd.wire import relay as wire

OLD, NEW = ("203.0.113.10", 40000), ("198.51.100.5", 41000)
MAPPED = ("192.0.2.7", 51820)
RTT_S = 0.02
DEAD_AFTER_S = 1.0  # the server's (signal_server/relay/registry.py)


def allocation(alloc_id: str, relay: Addr, refresh_s: float = 1.0) -> api.RelayAllocation:
    return api.RelayAllocation(id=alloc_id, peer="peer-id", relay=f"{relay[0]}:{relay[1]}",
                               side=0, secret="ab" * 16, expires_at=0.0, refresh_s=refresh_s)


class FakeServer:
    """``POST /relay``: the old allocation until its owner is seen dead, then the new."""

    def __init__(self, old: api.RelayAllocation) -> None:
        self.current = old
        self.moved_at: float | None = None
        self.moved_to: api.RelayAllocation | None = None
        self.asked = 0

    async def relay(self, name: str) -> api.RelayAllocation:
        self.asked += 1
        await trio.sleep(RTT_S)
        if self.moved_at is not None and trio.current_time() >= self.moved_at:
            assert self.moved_to is not None
            self.current = self.moved_to
        return self.current


class FakeNet:
    """Sends binds to relays that are up; their answers come back after ``RTT_S``."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.up: set[Addr] = {OLD, NEW}
        self.drop_next = 0
        self.relaying: Relaying | None = None

    async def send(self, payload: bytes, dest: Addr, /) -> None:
        if dest not in self.up:
            return
        if self.drop_next:
            self.drop_next -= 1
            return
        claim = wire.parse_bind_request(payload)
        answer = wire.bind_success(claim.transaction_id, MAPPED, bytes.fromhex("ab" * 16))
        self.nursery.start_soon(self._deliver, answer, dest)

    async def _deliver(self, answer: bytes, source: Addr) -> None:
        await trio.sleep(RTT_S)
        assert self.relaying is not None
        self.relaying.handle_stun(answer, source)


class Node:
    def __init__(self, server: FakeServer, net: FakeNet) -> None:
        self.bound: list[tuple[float, Addr | None]] = []
        self.relaying = Relaying(server, net, self._on_bound)  # type: ignore[arg-type]
        net.relaying = self.relaying

    def _on_bound(self, node_id: str, relay: Addr | None) -> None:
        self.bound.append((trio.current_time(), relay))


async def start(nursery: trio.Nursery, server: FakeServer) -> tuple[Node, FakeNet]:
    net = FakeNet(nursery)
    node = Node(server, net)
    await nursery.start(node.relaying.run)
    node.relaying.sync_peers([SimpleNamespace(id="peer-id", name="peer")])  # type: ignore[list-item]
    return node, net


@pytest.mark.parametrize("phase", [0.0, 0.13, 0.37, 0.5, 0.71, 0.99, 1.4])
async def test_a_dead_relay_is_replaced_by_the_servers_new_allocation_within_2_s(
        phase: float, autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer(allocation("old", OLD))
    async with trio.open_nursery() as nursery:
        node, net = await start(nursery, server)
        await trio.sleep(3.0 + phase)
        assert node.bound == [(pytest.approx(2 * RTT_S, abs=0.01), OLD)]
        died = trio.current_time()
        net.up.discard(OLD)
        # The replica's heartbeat goes stale only DEAD_AFTER_S later: until then the
        # server still answers the old allocation.
        server.moved_at, server.moved_to = died + DEAD_AFTER_S, allocation("new", NEW)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    when_new = [t for t, relay in node.bound if relay == NEW]
    assert when_new and when_new[0] - died <= 2.0, node.bound
    # Taken off the old relay only when the new allocation arrives; off the new one at
    # the stop.
    assert [relay for _, relay in node.bound] == [OLD, None, NEW, None]


async def test_a_lossy_relay_keeps_its_pair(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer(allocation("old", OLD))
    async with trio.open_nursery() as nursery:
        node, net = await start(nursery, server)
        await trio.sleep(3.0)
        net.drop_next = 3  # one refresh's two tries and the next one's first
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert [relay for _, relay in node.bound] == [OLD, None]  # taken away at the stop only
    assert node.bound[1][0] == pytest.approx(8.0, abs=0.05)
    assert server.asked == 2  # asked again once: the same allocation, bind on


async def test_a_relay_that_stays_dead_loses_its_pair_in_about_5_s(
        autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer(allocation("old", OLD))
    async with trio.open_nursery() as nursery:
        node, net = await start(nursery, server)
        await trio.sleep(2.0)
        died = trio.current_time()
        net.up.clear()
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    assert [relay for _, relay in node.bound] == [OLD, None]
    lost = node.bound[1][0] - died
    assert 4.0 <= lost <= 1.0 + relaying.LOST_AFTER_MISSES * (0.6 + RTT_S) + 0.5

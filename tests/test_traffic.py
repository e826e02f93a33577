"""The agent at scale (issue #22): WireGuard's counters tell the punch sessions which
paths carry traffic, and a burst of punch events shares reconcile passes."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from punchd.daemon.model import NetworkModel
from punchd.daemon.network import RECONCILE_MIN_GAP_S, TRAFFIC_MIN_BYTES, NetworkAgent
from punchd.daemon.policy import PathPolicy
from punchd.daemon.tasks import Wakeup
from punchd.errors import APIError
from punchd.serverapi import MAX_IN_FLIGHT, ServerClient
from punchd.wg.base import WgDeviceState, WgPeerState
from punchd.wire import api


class Port:
    def __init__(self) -> None:
        self.noted: list[str] = []

    def note_traffic(self, node_id: str) -> None:
        self.noted.append(node_id)


def peer_state(key: str, rx: int, tx: int) -> WgPeerState:
    return WgPeerState(public_key=key, endpoint=None, allowed_ips=(), persistent_keepalive=25,
                       last_handshake=None, rx_bytes=rx, tx_bytes=tx)


def device(*peers: WgPeerState) -> WgDeviceState:
    return WgDeviceState(name="pd-net", public_key=None, listen_port=51820, fwmark=0,
                         peers=peers)


def node(node_id: str, key: str) -> api.Node:
    return api.Node(id=node_id, network="net", name=node_id, signing_key="s",
                    wg_public_key=key, probe_public_key="p", listen_port=51820)


def test_only_counters_that_moved_more_than_keepalives_mark_traffic() -> None:
    agent = NetworkAgent.__new__(NetworkAgent)  # the one method under test, no I/O
    agent.model, agent._counters = NetworkModel(), {}
    agent.model.peers = {"a": node("a", "KA"), "b": node("b", "KB")}
    port = agent.port = Port()  # type: ignore[assignment]
    agent._note_traffic(device(peer_state("KA", 0, 0), peer_state("KB", 0, 0)))
    assert port.noted == []  # the first pass only learns the counters
    agent._note_traffic(device(peer_state("KA", 32, 32),  # WireGuard keepalives only
                               peer_state("KB", TRAFFIC_MIN_BYTES, 0)))
    assert port.noted == ["b"]
    agent._note_traffic(device(peer_state("KA", 32, 32 + TRAFFIC_MIN_BYTES),
                               peer_state("KZ", 10**6, 0)))  # not a known peer
    assert port.noted == ["b", "a"]


async def test_a_burst_of_punch_events_shares_reconcile_passes(
        autojump_clock: trio.testing.MockClock) -> None:
    """Issue #22: a thousand PathFound in a second are ~10 passes, not a thousand; and
    the first event after a quiet spell is served at once."""
    agent = NetworkAgent.__new__(NetworkAgent)
    agent._reconcile_due, agent.policy = Wakeup(), PathPolicy(b"k")
    passes: list[float] = []

    async def reconcile_once() -> int:
        passes.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        return 0

    agent.reconcile_once = reconcile_once  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._reconcile_loop)
        await trio.sleep(1.0)  # the periodic passes only
        quiet = len(passes)
        start = trio.current_time()
        agent.wake_reconcile()
        for _ in range(10):  # a few scheduler passes, no clock time
            await trio.lowlevel.checkpoint()
        assert len(passes) == quiet + 1 and passes[-1] == start  # at once
        for _ in range(1000):  # one event a millisecond for a second
            agent.wake_reconcile()
            await trio.sleep(0.001)
        burst = len(passes) - quiet
        assert burst <= 1.0 / RECONCILE_MIN_GAP_S + 2
        await trio.sleep(RECONCILE_MIN_GAP_S)
        assert passes[-1] > start + 1.0 - RECONCILE_MIN_GAP_S  # the last event was served
        nursery.cancel_scope.cancel()


async def test_a_node_has_at_most_a_few_requests_in_flight() -> None:
    """A thousand relay requests at once wait in the client's FIFO, not in httpcore's
    pool (whose queue costs O(queued * connections) per state change)."""
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.lowlevel.checkpoint()
        in_flight -= 1
        return httpx.Response(503, json={"error": "no relay"})

    client = ServerClient("http://server.test", SigningKey.generate(),
                          transport=httpx.MockTransport(handler))

    async def ask(peer: str) -> None:
        with pytest.raises(APIError):
            await client.relay(peer)

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(ask, f"peer{i}")
    await client.aclose()
    assert 1 < peak <= MAX_IN_FLIGHT

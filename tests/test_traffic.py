"""WireGuard's counters tell the punch sessions which paths carry traffic (issue #22)."""

from __future__ import annotations

from punchd.daemon.model import NetworkModel
from punchd.daemon.network import TRAFFIC_MIN_BYTES, NetworkAgent
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

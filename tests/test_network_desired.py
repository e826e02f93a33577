"""What a network agent asks of WireGuard for a peer, per path decision (no server, no
lab: the agent's model and decisions are set by hand)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import trio

from punchd.daemon.network import NetworkAgent
from punchd.daemon.paths import PathDecision
from punchd.daemon.state import NetworkConfig, StateDir
from punchd.wg.base import WgDeviceState, WgPeer, WgPeerState
from punchd.wg.fake import FakeBackend
from punchd.wire import api

PEER_KEY = base64.b64encode(bytes(range(32))).decode()


def agent_with_peer(tmp_path: Path, decision: PathDecision) -> NetworkAgent:
    state = StateDir(tmp_path)
    state.ensure()
    config = NetworkConfig(name="net", server="http://x", interface="pdtd", node_id="n1",
                           node_name="alpha", listen_port=51820)
    agent = NetworkAgent(config, state.create_keys("net"), FakeBackend(), state)
    peer = api.Node(id="n2", network="net", name="beta", signing_key="s",
                    wg_public_key=PEER_KEY, probe_public_key=base64.b64encode(bytes(32)).decode(),
                    listen_port=51820, ipv4="198.19.0.2/24")
    agent.model.peers[peer.id] = peer
    agent.paths[peer.id] = decision
    return agent


def desired_peer(agent: NetworkAgent, actual: WgDeviceState | None = None) -> WgPeer:
    async def ask() -> WgPeer:
        (peer,) = agent.desired(actual).peers
        return peer

    return trio.run(ask)


def test_a_peer_waiting_for_its_path_has_no_endpoint_keepalive_or_allowed_ips(tmp_path: Path
                                                                              ) -> None:
    # Traffic routed to it would spend WireGuard's handshake (one per 5 s) on no endpoint.
    agent = agent_with_peer(tmp_path, PathDecision(endpoint=None, kind="direct", source="pending"))
    assert desired_peer(agent) == WgPeer(public_key=PEER_KEY, endpoint=None, allowed_ips=(),
                                         persistent_keepalive=0)


def test_a_waiting_peer_that_already_shook_hands_gets_its_allowed_ips(tmp_path: Path) -> None:
    # It reached us first (WireGuard answers a handshake from any known peer): its
    # traffic must not be dropped while our own punch session is still deciding.
    agent = agent_with_peer(tmp_path, PathDecision(endpoint=None, kind="direct", source="pending"))
    actual = WgDeviceState(name="pdtd", public_key=None, listen_port=51820, fwmark=0, peers=(
        WgPeerState(public_key=PEER_KEY, endpoint="192.0.2.7:51820", allowed_ips=(),
                    persistent_keepalive=0, last_handshake=time.time(), rx_bytes=92,
                    tx_bytes=92),))
    assert desired_peer(agent, actual).allowed_ips == ("198.19.0.2/32",)


def test_a_decided_path_brings_the_allowed_ips(tmp_path: Path) -> None:
    guessed = agent_with_peer(tmp_path, PathDecision(endpoint="192.0.2.7:51820", kind="direct"))
    assert desired_peer(guessed) == WgPeer(public_key=PEER_KEY, endpoint="192.0.2.7:51820",
                                           allowed_ips=("198.19.0.2/32",),
                                           persistent_keepalive=25)

"""Peer reconciliation, sans-IO: desired WireGuard config vs what WireGuard has -> ops.

Theory of operation: punchd computes the device it wants (private key, port, peers
from the server's state and its path decisions) and compares it with the device
WireGuard reports. Only differences become operations, one per changed peer, so an
unchanged peer is never touched (no flapping, no full rewrite). Drift — someone ran
``wg set`` by hand, wireguard-go restarted empty — is just another difference and is
repaired on the next pass. The interface's own addresses and MTU (:func:`desired_link`)
come from the server's word for this node; the agent applies them when they change or
the interface was recreated.

One rule protects working paths: when WireGuard has *roamed* a peer to an endpoint
other than the one punchd chose, and the path through it works (a fresh handshake,
or authenticated bytes received while the first handshake completes), the roamed
endpoint is kept: WireGuard learnt it from authenticated packets. punchd insists on
its endpoint when the path is not working, or when its own decision changed
(``force_endpoint``: punching found a better path).
"""

from __future__ import annotations

import msgspec

from punchd.wg.base import LinkConfig, WgDeviceState, WgPeer, normalise_cidrs
from punchd.wire import api

# A handshake younger than this means the path works (WireGuard rekeys every 2 min).
FRESH_HANDSHAKE_S = 180.0


class DesiredDevice(msgspec.Struct, frozen=True):
    private_key_public: str  # the public key of the private key punchd wants
    listen_port: int
    peers: tuple[WgPeer, ...]
    force_endpoint: frozenset[str] = frozenset()  # peers whose chosen endpoint just changed


class SetDevice(msgspec.Struct, frozen=True, tag="set_device"):
    listen_port: int | None
    private_key: bool  # True: (re)apply the private key


class SetPeer(msgspec.Struct, frozen=True, tag="set_peer"):
    peer: WgPeer


class RemovePeer(msgspec.Struct, frozen=True, tag="remove_peer"):
    public_key: str


Op = SetDevice | SetPeer | RemovePeer


def desired_link(node: api.Node | None, network: api.Network | None) -> LinkConfig | None:
    """The interface's mesh addresses and MTU (the node's own, else its network's); None
    until the server has said both."""
    if node is None or network is None:
        return None
    return LinkConfig(addresses=tuple(a for a in (node.ipv4, node.ipv6) if a),
                      mtu=node.settings(network).mtu)


def plan(desired: DesiredDevice, actual: WgDeviceState, now: float) -> list[Op]:
    ops: list[Op] = []
    key_differs = actual.public_key != desired.private_key_public
    port_differs = actual.listen_port != desired.listen_port
    if key_differs or port_differs:
        ops.append(SetDevice(listen_port=desired.listen_port if port_differs else None,
                             private_key=key_differs))
    have = {p.public_key: p for p in actual.peers}
    want = {p.public_key: p for p in desired.peers}
    for key in sorted(have.keys() - want.keys()):
        ops.append(RemovePeer(public_key=key))
    for key in sorted(want):
        peer = want[key]
        current = have.get(key)
        if current is None:
            ops.append(SetPeer(peer=peer))
            continue
        allowed_differs = normalise_cidrs(peer.allowed_ips) != current.allowed_ips
        keepalive_differs = peer.persistent_keepalive != current.persistent_keepalive
        if current.last_handshake is None:
            working = current.rx_bytes > 0
        else:
            working = now - current.last_handshake < FRESH_HANDSHAKE_S
        endpoint_differs = (
            peer.endpoint is not None
            and peer.endpoint != current.endpoint
            and (not working or key in desired.force_endpoint)
        )
        if allowed_differs or keepalive_differs or endpoint_differs:
            ops.append(SetPeer(peer=peer if endpoint_differs
                               else msgspec.structs.replace(peer, endpoint=None)))
    return ops

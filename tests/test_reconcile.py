"""Reconciliation plans: only differences become operations."""

from __future__ import annotations

from punchd.daemon.reconcile import DesiredDevice, RemovePeer, SetDevice, SetPeer, plan
from punchd.wg.base import WgDeviceState, WgPeer, WgPeerState, generate_private_key, public_key

ME = public_key(generate_private_key())
A, B, C = (public_key(generate_private_key()) for _ in range(3))
NOW = 10_000.0


def actual(*peers: WgPeerState, key: str | None = ME, port: int = 51820) -> WgDeviceState:
    return WgDeviceState(name="wg0", public_key=key, listen_port=port, fwmark=0, peers=peers)


def state(key: str, endpoint: str | None = "192.0.2.1:51820", allowed: tuple[str, ...] = ("198.19.0.2/32",),
          keepalive: int = 25, handshake: float | None = None, rx: int = 0) -> WgPeerState:
    return WgPeerState(public_key=key, endpoint=endpoint, allowed_ips=allowed,
                       persistent_keepalive=keepalive, last_handshake=handshake, rx_bytes=rx,
                       tx_bytes=0)


def want(*peers: WgPeer, force: frozenset[str] = frozenset()) -> DesiredDevice:
    return DesiredDevice(private_key_public=ME, listen_port=51820, peers=peers, force_endpoint=force)


def peer(key: str, endpoint: str | None = "192.0.2.1:51820",
         allowed: tuple[str, ...] = ("198.19.0.2/32",)) -> WgPeer:
    return WgPeer(public_key=key, endpoint=endpoint, allowed_ips=allowed, persistent_keepalive=25)


def test_equal_state_plans_nothing() -> None:
    assert plan(want(peer(A)), actual(state(A)), NOW) == []


def test_new_device_gets_key_port_and_peers() -> None:
    ops = plan(want(peer(A)), actual(key=None, port=0), NOW)
    assert ops == [SetDevice(listen_port=51820, private_key=True), SetPeer(peer=peer(A))]


def test_only_changed_peers_are_touched() -> None:
    ops = plan(want(peer(A), peer(B, allowed=("198.19.0.3/32",))),
               actual(state(A), state(B, allowed=("198.19.0.99/32",)), state(C)), NOW)
    assert ops == [RemovePeer(public_key=C),
                   SetPeer(peer=peer(B, endpoint=None, allowed=("198.19.0.3/32",)))]


def test_hand_edited_allowed_ips_are_repaired() -> None:
    ops = plan(want(peer(A)), actual(state(A, allowed=("0.0.0.0/0",), handshake=NOW - 1)), NOW)
    assert ops == [SetPeer(peer=peer(A, endpoint=None))]  # endpoint left as it is


def test_roamed_endpoint_kept_while_the_path_works() -> None:
    roamed = state(A, endpoint="198.51.100.7:40000", handshake=NOW - 10)
    assert plan(want(peer(A)), actual(roamed), NOW) == []
    responding = state(A, endpoint="198.51.100.7:40000", rx=148)  # first handshake under way
    assert plan(want(peer(A)), actual(responding), NOW) == []


def test_endpoint_restored_when_the_path_is_dead() -> None:
    stale = state(A, endpoint="198.51.100.7:40000", handshake=NOW - 600)
    assert plan(want(peer(A)), actual(stale), NOW) == [SetPeer(peer=peer(A))]
    never = state(A, endpoint="198.51.100.7:40000")
    assert plan(want(peer(A)), actual(never), NOW) == [SetPeer(peer=peer(A))]


def test_a_new_decision_overrides_a_working_roamed_endpoint() -> None:
    roamed = state(A, endpoint="198.51.100.7:40000", handshake=NOW - 10)
    assert plan(want(peer(A), force=frozenset({A})), actual(roamed), NOW) == [SetPeer(peer=peer(A))]


def test_no_endpoint_decision_never_moves_the_endpoint() -> None:
    assert plan(want(peer(A, endpoint=None)), actual(state(A)), NOW) == []


def test_the_link_waits_for_the_server_and_carries_both_addresses_and_the_mtu() -> None:
    import msgspec

    from punchd.daemon.reconcile import desired_link
    from punchd.wg.base import LinkConfig
    from punchd.wire import api

    node = api.Node(id="n1", network="net", name="alpha", signing_key="s", wg_public_key=ME,
                    probe_public_key="p", listen_port=51820, ipv4="198.19.0.1/24")
    network = api.Network(name="net", ipv4_cidr="198.19.0.0/24", mtu=1380)
    assert desired_link(None, network) is None and desired_link(node, None) is None
    assert desired_link(node, network) == LinkConfig(addresses=("198.19.0.1/24",), mtu=1380)
    dual = msgspec.structs.replace(node, ipv6="fd00::1/64")
    assert desired_link(dual, network) == LinkConfig(
        addresses=("198.19.0.1/24", "fd00::1/64"), mtu=1380)

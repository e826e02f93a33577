"""Status and the log built from facts, and the model's answers about this node: pure, no trio."""

from __future__ import annotations

import base64

from punchd.daemon.model import NetworkModel
from punchd.daemon.policy import PathPolicy
from punchd.daemon.state import NetworkConfig
from punchd.daemon.status import (
    DnsStatus,
    PunchStatus,
    RelayStatus,
    describe,
    network_status,
    punch_status,
    relay_status,
)
from punchd.punch.session import PathChanged, PathFound, PathLost, PunchFailed, SessionStatistics
from punchd.wg.base import WgDeviceState, WgPeerState
from punchd.wire import api

CONFIG = NetworkConfig(name="net", server="http://192.0.2.1:8080", interface="pd-net",
                       node_id="n1", node_name="alpha", listen_port=51820)
T0 = 1_700_000_000.0


def node(node_id: str, name: str, ipv4: str, key: int) -> api.Node:
    return api.Node(id=node_id, network="net", name=name, signing_key="s",
                    wg_public_key=base64.b64encode(bytes([key]) * 32).decode(),
                    probe_public_key="p", listen_port=51820, ipv4=ipv4)


def model() -> NetworkModel:
    m = NetworkModel(node=node("n1", "alpha", "198.19.0.1/24", 1),
                     dns=api.MeshDns(address="198.19.0.254:53", domain="mesh"))
    m.peers = {"n3": node("n3", "gamma", "198.19.0.3/24", 3),
               "n2": node("n2", "beta", "198.19.0.2/24", 2)}
    return m


def status(device: WgDeviceState | None, **facts: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = dict(public_key="k", server_connected=True, nat=None,
                                   resolver="resolved", last_error=None, punch={}, relay={})
    return network_status(CONFIG, model(), PathPolicy(b""), device, T0,
                          **(base | facts))  # type: ignore[arg-type]


def test_network_status_says_the_interface_is_down_when_wireguard_cannot_be_read() -> None:
    down = status(None)
    assert (down.interface_up, down.listen_port) == (False, None)
    assert all(not p.in_wireguard and p.endpoint is None for p in down.peers)


def test_network_status_shows_addresses_without_prefix_dns_and_peers_by_name() -> None:
    beta = model().peers["n2"]
    device = WgDeviceState(name="pd-net", public_key="k", listen_port=51999, fwmark=0, peers=(
        WgPeerState(public_key=beta.wg_public_key, endpoint="192.0.2.7:51820",
                    allowed_ips=("198.19.0.2/32",), persistent_keepalive=25,
                    last_handshake=T0 - 10, rx_bytes=92, tx_bytes=148),))
    punch = PunchStatus(state="connected", failure=None, attempts=1, probes_sent=3,
                        probes_received=2, rejected=0, replays=0, observed=None)
    up = status(device, punch={"n2": punch}, last_error="boom")
    assert (up.name, up.interface, up.node, up.server) == (
        "net", "pd-net", "alpha", "http://192.0.2.1:8080")
    assert (up.address, up.address6, up.listen_port, up.interface_up) == (
        "198.19.0.1", None, 51999, True)
    assert up.dns == DnsStatus(address="198.19.0.254:53", domain="mesh", resolver="resolved")
    assert up.last_error == "boom" and up.server_connected
    assert [p.name for p in up.peers] == ["beta", "gamma"]
    first = up.peers[0]
    assert (first.address, first.endpoint, first.in_wireguard, first.path) == (
        "198.19.0.2", "192.0.2.7:51820", True, "direct")
    assert first.last_handshake_age_s == 10.0 and first.punch == punch
    assert up.peers[1].punch is None and not up.peers[1].in_wireguard


class _Session:
    """The attributes of a PunchSession that its status reads."""

    state = "failed"
    failure = "no pair answered"
    observed = ("2001:db8::9", 40000)

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(probes_sent=9, probes_received=4, rejected=1, replays=2,
                                 attempts=3, pairs=2)


def test_punch_status_copies_the_counters_and_formats_the_observed_address() -> None:
    assert punch_status(_Session()) == PunchStatus(  # type: ignore[arg-type]
        state="failed", failure="no pair answered", attempts=3, probes_sent=9,
        probes_received=4, rejected=1, replays=2, observed="[2001:db8::9]:40000")


def test_relay_status_formats_what_is_bound() -> None:
    assert relay_status(("203.0.113.5", 40001), ("198.51.100.7", 51820), None) == RelayStatus(
        endpoint="203.0.113.5:40001", mapped="198.51.100.7:51820", error=None)
    assert relay_status(None, None, "503") == RelayStatus(endpoint=None, mapped=None, error="503")


def test_the_log_names_each_verdict_and_a_relayed_path() -> None:
    addr, other = ("192.0.2.7", 51820), ("192.0.2.8", 51820)
    assert describe(PathFound(addr, 0.0123), "beta", relayed=False) == \
        "direct path to beta via 192.0.2.7:51820 (12.3 ms)"
    assert describe(PathFound(addr, 0.0123), "beta", relayed=True).startswith("relayed path")
    assert describe(PathChanged(addr, other, 0.002), "beta", relayed=False) == \
        "path to beta moves 192.0.2.7:51820 -> 192.0.2.8:51820 (2.0 ms)"
    assert describe(PathLost(addr), "beta", relayed=False) == \
        "path to beta via 192.0.2.7:51820 lost; punching again"
    assert describe(PunchFailed("timeout", T0), "beta", relayed=False) == \
        "no direct path to beta: timeout"


def test_the_model_knows_this_node_and_the_partner_of_a_rendezvous() -> None:
    m = model()
    assert m.is_self("n1") and not m.is_self("n2")
    assert not NetworkModel().is_self("n1")  # before the first snapshot: nobody is us
    request = api.PunchRequest(seq=1, session="s", nodes=("n2", "n1"), start_at=T0)
    assert m.rendezvous_partner(request) == "n2"
    assert m.rendezvous_partner(api.PunchRequest(seq=1, session="s", nodes=("n1", "n3"),
                                                 start_at=T0)) == "n3"
    assert m.rendezvous_partner(api.PunchRequest(seq=1, session="s", nodes=("n2", "n3"),
                                                 start_at=T0)) is None
    assert NetworkModel().rendezvous_partner(request) is None

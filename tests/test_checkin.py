"""The pure core of checkin: what a pull changed, and the node's standing."""

from __future__ import annotations

import msgspec

from punchd.daemon.checkin import View, compare, node_state
from punchd.daemon.results import FieldChange, PeerChange
from punchd.wire import api


def node(node_id: str, name: str, **extra: object) -> api.Node:
    return api.Node(id=node_id, network="net", name=name, signing_key="s", wg_public_key="k"
                    + node_id, probe_public_key="p", listen_port=51820, **extra)  # type: ignore[arg-type]


def test_compare_names_added_removed_and_changed_peers_and_settings() -> None:
    net = api.Network(name="net", ipv4_cidr="198.19.0.0/24")
    me = node("0", "me")
    before = View(net, me, {"1": node("1", "b"), "2": node("2", "c", last_seen=1.0)})
    after = View(msgspec.structs.replace(net, mtu=1280),
                 msgspec.structs.replace(me, ipv6="fd00::1/64"),
                 {"2": node("2", "c", ipv4="198.19.0.9/24", last_seen=9.0),
                  "3": node("3", "d")})
    changes = compare(before, after)
    assert changes.peers_added == ("d",) and changes.peers_removed == ("b",)
    assert changes.peers_changed == (PeerChange(name="c", fields=("ipv4",)),)  # not last_seen
    assert changes.settings_changed == (FieldChange(field="mtu", old="1420", new="1280"),)
    assert changes.node_changed == (FieldChange(field="ipv6", old=None, new="fd00::1/64"),)
    assert compare(after, after).peers_changed == ()


def test_node_state_for_each_standing() -> None:
    assert node_state(None, None, 100.0) == ("unknown", None)
    assert node_state(node("0", "me"), None, 100.0) == ("approved", None)
    assert node_state(node("0", "me", approved=False), None, 100.0)[0] == "pending"
    assert node_state(node("0", "me", expires_at=99.0), "deleted", 100.0) == ("expired",
                                                                              "deleted")
    assert node_state(node("0", "me", expires_at=500.0), "deleted", 100.0) == ("removed",
                                                                               "deleted")
    assert node_state(node("0", "me"), "gone", 100.0) == ("removed", "gone")

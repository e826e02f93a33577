"""``punchctl checkin``, and what the node says about its own membership: pure functions.

Theory of operation. A checkin (Netmaker's ``checkin``) pushes this node's candidates,
pulls the server's view of the network, reconciles WireGuard, and reports what moved.
The agent takes a :class:`View` of its model before and after; :func:`compare` says in
data what differs (peers added, removed or changed; network settings; this node's own
record), :func:`node_state` says where this node stands with the server:

* ``approved``: a member, given its peers;
* ``pending``: joined a network that requires approval and not approved yet — the
  server gives it no peers (``GET /node`` and the stream both hide them), so WireGuard
  holds none until the admin approves;
* ``expired``: removed by the server's expiry sweep (its ``expires_at`` had passed);
* ``removed``: deleted by the admin, its network deleted, or the server no longer
  knows its key (401/404): the agent drops the network's peers;
* ``unknown``: the server has not answered yet since punchd started.

No IO here: the agent feeds facts in, the control API sends the results out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from punchd.wire import api

from .results import FieldChange, NodeState, PeerChange

# The expiry sweep runs every 0.5 s (signal_server.service); a node removed up to this
# long after its expires_at was removed by the sweep, not by the admin.
EXPIRY_SLACK_S = 5.0

# Fields of a peer that change what WireGuard or the user sees; last_seen moves on
# every request the peer signs and would make every checkin report every peer.
PEER_FIELDS = ("name", "wg_public_key", "probe_public_key", "listen_port", "ipv4", "ipv6",
               "candidates", "nat", "approved", "expires_at")
NODE_FIELDS = ("name", "wg_public_key", "listen_port", "ipv4", "ipv6", "approved",
               "expires_at")
NETWORK_FIELDS = ("ipv4_cidr", "ipv6_cidr", "local_only", "hole_punching",
                  "require_approval", "listen_port", "keepalive", "mtu")


@dataclass(frozen=True)
class View:
    """What a checkin compares: the model's server-given parts at one moment."""

    network: api.Network | None
    node: api.Node | None
    peers: Mapping[str, api.Node]  # by node id


@dataclass(frozen=True)
class Changes:
    peers_added: tuple[str, ...]
    peers_removed: tuple[str, ...]
    peers_changed: tuple[PeerChange, ...]
    settings_changed: tuple[FieldChange, ...]
    node_changed: tuple[FieldChange, ...]


def _text(value: object) -> str | None:
    """A field's value in a few words: None stays None, tuples are counted."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return f"{len(value)} item(s)"
    if isinstance(value, msgspec.Struct):
        return msgspec.json.encode(value).decode()
    return str(value)


def _fields(old: object | None, new: object | None, names: tuple[str, ...]
            ) -> tuple[FieldChange, ...]:
    if old is None or new is None:
        return ()
    return tuple(FieldChange(field=f, old=_text(getattr(old, f)), new=_text(getattr(new, f)))
                 for f in names if getattr(old, f) != getattr(new, f))


def compare(before: View, after: View) -> Changes:
    """What the pull changed, peers by name (sorted, so the output is stable)."""
    added = [after.peers[i].name for i in after.peers if i not in before.peers]
    removed = [before.peers[i].name for i in before.peers if i not in after.peers]
    changed = []
    for node_id in sorted(set(before.peers) & set(after.peers),
                          key=lambda i: after.peers[i].name):
        fields = tuple(c.field for c in _fields(before.peers[node_id], after.peers[node_id],
                                                PEER_FIELDS))
        if fields:
            changed.append(PeerChange(name=after.peers[node_id].name, fields=fields))
    return Changes(peers_added=tuple(sorted(added)), peers_removed=tuple(sorted(removed)),
                   peers_changed=tuple(changed),
                   settings_changed=_fields(before.network, after.network, NETWORK_FIELDS),
                   node_changed=_fields(before.node, after.node, NODE_FIELDS))


def node_state(node: api.Node | None, removed: str | None, now: float
               ) -> tuple[NodeState, str | None]:
    """This node's standing with the server, and the server's reason when it has one.

    ``removed``: why the server no longer has this node (its stream's last word, or the
    refusal of a pull), None while it does."""
    if removed is not None:
        if node is not None and node.expires_at is not None \
                and node.expires_at <= now + EXPIRY_SLACK_S:
            return "expired", removed
        return "removed", removed
    if node is None:
        return "unknown", None
    if not node.approved:
        return "pending", "awaiting the admin's approval: no peers until then"
    return "approved", None

"""The network as the server describes it, kept by the agent: settings, this node, peers.

Pure data: the stream's events and snapshots are applied here, in order; nothing else
writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from punchd.wire import api


@dataclass
class NetworkModel:
    network: api.Network | None = None
    node: api.Node | None = None
    peers: dict[str, api.Node] = field(default_factory=dict)  # by node id
    seq: int | None = None
    dns: api.MeshDns | None = None
    stun: str | None = None

    def apply(self, event: api.Event) -> None:
        if isinstance(event, api.Snapshot):
            self.network = event.network
            self.peers = {}
            for node in event.peers:
                self._upsert(node)
        elif isinstance(event, api.PeerAdded | api.PeerChanged):
            self._upsert(event.peer)
        elif isinstance(event, api.KeysRotated):  # the whole batch, in one change
            for node in event.peers:
                self._upsert(node)
        elif isinstance(event, api.PeerRemoved):
            self.peers.pop(event.node_id, None)
        elif isinstance(event, api.NetworkChanged):
            self.network = event.network
        self.seq = event.seq

    def _upsert(self, node: api.Node) -> None:
        if self.node is not None and node.id == self.node.id:
            self.node = node
        else:
            self.peers[node.id] = node

    def is_self(self, node_id: str) -> bool:
        """Whether ``node_id`` is this node (a PeerRemoved naming it: deleted on the server)."""
        return self.node is not None and node_id == self.node.id

    def rendezvous_partner(self, request: api.PunchRequest) -> str | None:
        """The other node of the server's punch request, if the request names this node."""
        if self.node is None or self.node.id not in request.nodes:
            return None
        first, second = request.nodes
        return second if first == self.node.id else first

    def apply_snapshot(self, snap: api.NetworkSnapshot) -> None:
        self.network = snap.network
        self.node = snap.node
        self.peers = {p.id: p for p in snap.peers}
        self.seq = snap.seq
        self.dns = snap.dns
        self.stun = snap.stun

"""The one schema: the signal server's API, its events and its stored records.

Every request and response body of ``/api/v1`` and every event on the stream is a
msgspec Struct defined here; the server and punchd's client import the same
definitions, so they cannot drift. Request bodies forbid unknown fields (a typo is
a 422 naming the field, never silently ignored); new fields always get defaults so
older peers keep decoding newer messages.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

# A DNS label: nodes and networks are named in the mesh's DNS (<node>.<network>.mesh).
Name = Annotated[str, Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)]
# A Linux interface name: IFNAMSIZ (16) less the NUL; the daemon's state and its control
# commands both name interfaces, and punchctl must read this without the daemon's imports.
IfName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
Port = Annotated[int, Meta(ge=1, le=65535)]
# A 32-byte key in standard base64 (WireGuard's own notation): 43 chars + "=".
Key = Annotated[str, Meta(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
Seconds = Annotated[int, Meta(ge=0)]
# WireGuard persistent keepalive (0: off) and the interface MTU: IPv6 needs 1280
# (RFC 8200 §5); 9000 is a jumbo frame, the most any link here carries.
Keepalive = Annotated[int, Meta(ge=0, le=3600)]
Mtu = Annotated[int, Meta(ge=1280, le=9000)]
DEFAULT_LISTEN_PORT = 51820

CandidateKind = Literal["host", "srflx", "prflx", "portmap", "predicted", "relay"]
Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]


class Candidate(Struct, frozen=True, forbid_unknown_fields=True):
    """One address a node may be reached at (ICE terms, RFC 8445 §5.1.1)."""

    kind: CandidateKind
    address: str  # "ip:port" or "[v6]:port"
    priority: int = 0


# Candidates a node may publish: host addresses, srflx, portmap and predictions of a
# few interfaces fit easily; the bound keeps one node from inflating every snapshot.
MAX_CANDIDATES = 32
Candidates = Annotated[tuple[Candidate, ...], Meta(max_length=MAX_CANDIDATES)]


class NatReport(Struct, frozen=True, forbid_unknown_fields=True):
    """What discovery learnt about this node's NAT (RFC 5780 classification)."""

    public_endpoint: str | None = None
    mapping: Behaviour | None = None
    filtering: Behaviour | None = None
    port_preserved: bool | None = None
    port_deltas: tuple[int, ...] = ()


def _new_network_id() -> str:
    return uuid.uuid4().hex[:16]


class Network(Struct, frozen=True):
    name: str
    ipv4_cidr: str
    ipv6_cidr: str | None = None
    local_only: bool = False
    hole_punching: bool = True
    require_approval: bool = False
    listen_port: int = 51820
    keepalive: int = 25
    mtu: int = 1420
    created_at: float = 0.0
    # The network's identity: one deleted and created again under the same name is
    # another network, and the old one's members must not see the new one. The store
    # gives rows from before ids one when it opens.
    id: str = msgspec.field(default_factory=_new_network_id)


class NetworkCreate(Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    ipv4_cidr: str
    ipv6_cidr: str | None = None
    local_only: bool = False
    hole_punching: bool = True
    require_approval: bool = False
    listen_port: Port = DEFAULT_LISTEN_PORT
    keepalive: Keepalive = 25
    mtu: Mtu = 1420


class NetworkUpdate(Struct, frozen=True, forbid_unknown_fields=True):
    """Only the fields given change; a new ``ipv4_cidr`` renumbers every node, a new
    ``listen_port`` moves every node to it (each node's own port stays settable)."""

    ipv4_cidr: str | None = None
    ipv6_cidr: str | None = None
    local_only: bool | None = None
    hole_punching: bool | None = None
    require_approval: bool | None = None
    listen_port: Port | None = None
    keepalive: Keepalive | None = None
    mtu: Mtu | None = None


class AccessKey(Struct, frozen=True):
    id: str
    network: str
    uses_left: int | None  # None: unlimited
    expires_at: float | None
    created_at: float


class AccessKeyCreate(Struct, frozen=True, forbid_unknown_fields=True):
    uses: Annotated[int, Meta(ge=1)] | None = None
    expires_in: Annotated[int, Meta(ge=1)] | None = None  # seconds


class AccessKeyCreated(Struct, frozen=True):
    """Answer to a key creation: the only time the secret (inside ``token``) is shown."""

    key: AccessKey
    token: str


class Node(Struct, frozen=True):
    """A node as the server keeps it and as peers see it."""

    id: str
    network: str
    name: str
    signing_key: str  # Ed25519 public key that signs this node's requests
    wg_public_key: str
    probe_public_key: str  # X25519, for authenticated punching probes
    listen_port: int
    ipv4: str | None = None  # "198.19.0.5/24": the mesh address with the network's prefix
    ipv6: str | None = None
    candidates: tuple[Candidate, ...] = ()
    nat: NatReport = NatReport()
    approved: bool = True
    last_seen: float = 0.0
    expires_at: float | None = None
    created_at: float = 0.0
    # Key rotation (:meth:`signal_server.store.Store.submit_keys`): when the admin asked
    # this node for new keys (None: not asked), and the public keys it sent, which become
    # its keys when its batch commits (one :class:`KeysRotated` for the batch).
    rotation_requested_at: float | None = None
    next_wg_public_key: str | None = None
    next_probe_public_key: str | None = None
    # The admin's settings for this node alone; None: the network's.
    keepalive: int | None = None
    mtu: int | None = None

    def settings(self, network: Network) -> NodeSettings:
        """What this node runs with: its own settings, else its network's."""
        return NodeSettings(
            listen_port=self.listen_port,
            keepalive=self.keepalive if self.keepalive is not None else network.keepalive,
            mtu=self.mtu if self.mtu is not None else network.mtu,
            local_only=network.local_only, hole_punching=network.hole_punching)


class NodeSettings(Struct, frozen=True):
    """A node's effective settings (:meth:`Node.settings`), as the daemon applies them."""

    listen_port: int
    keepalive: int
    mtu: int
    local_only: bool
    hole_punching: bool


class JoinRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Sent signed by the new node key it registers; the access key authorises it."""

    access_key: str
    signing_key: Key
    wg_public_key: Key
    probe_public_key: Key
    # The port this node would listen on. The default means "no preference": the node
    # gets its network's port (``network create --listen-port``) and moves to it.
    listen_port: Port = DEFAULT_LISTEN_PORT
    name: Name | None = None
    candidates: Candidates = ()


class MeshDns(Struct, frozen=True):
    """Where the mesh's DNS answers, for nodes to point their resolver at."""

    address: str  # "ip:port"
    domain: str  # nodes are <node>.<network>.<domain>


class JoinResponse(Struct, frozen=True):
    node: Node
    network: Network
    dns: MeshDns | None = None
    stun: str | None = None  # "ip:port" of the server's primary STUN address


class NodeUpdate(Struct, frozen=True, forbid_unknown_fields=True):
    """A node's own changes; fields left out stay as they are."""

    candidates: Candidates | None = None
    nat: NatReport | None = None
    listen_port: Port | None = None
    # No wg_public_key: a key change goes through the rotation flow (a later issue), so
    # a member cannot claim another node's key and have peers route its address to it.


class KeyRotation(Struct, frozen=True, forbid_unknown_fields=True):
    """A node's new public keys, sent signed with its (unchanged) signing key."""

    wg_public_key: Key
    probe_public_key: Key


class NodeExpiry(Struct, frozen=True, forbid_unknown_fields=True):
    """Admin: the node is removed this many seconds from now; null clears the expiry."""

    expires_in: Annotated[int, Meta(ge=1)] | None


class NodeAdminUpdate(Struct, frozen=True, forbid_unknown_fields=True):
    """Admin (PATCH a node): fields left out stay as they are. ``expires_in`` as in
    :class:`NodeExpiry` (null clears it; left out, the expiry stays). An address is
    the bare IP or IP/prefix of the network's range; a rename moves its DNS name."""

    name: Name | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    listen_port: Port | None = None
    keepalive: Keepalive | None = None
    mtu: Mtu | None = None
    expires_in: Annotated[int, Meta(ge=1)] | msgspec.UnsetType | None = msgspec.UNSET


class PunchCreate(Struct, frozen=True, forbid_unknown_fields=True):
    peer: Name


class RelayCreate(Struct, frozen=True, forbid_unknown_fields=True):
    peer: Name  # the other node of the pair, in the caller's network


class RelayAllocation(Struct, frozen=True):
    """The caller's side of the relay allocation for a node pair.

    Both nodes ask; each gets its own port and secret of the one allocation. A node
    binds its side (:mod:`punchd.wire.relay`) from WireGuard's port; what then reaches
    its port from its bound endpoint leaves the peer's port toward the peer's.
    """

    id: str
    peer: str  # the peer's node id
    relay: str  # "ip:port": where this node sends (its side's port)
    side: int  # 0 or 1
    secret: str  # hex: this side's key for MESSAGE-INTEGRITY on binds
    expires_at: float  # server wall clock, unless binds or traffic refresh it
    refresh_s: float  # bind again this often


class NetworkSnapshot(Struct, frozen=True):
    seq: int
    network: Network
    node: Node  # the caller
    peers: tuple[Node, ...]
    dns: MeshDns | None = None
    stun: str | None = None


class DnsRecord(Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=253)]  # relative to the network's zone; "@" = apex
    rtype: Literal["A", "AAAA", "CNAME", "TXT"]
    value: Annotated[str, Meta(min_length=1, max_length=1024)]


class ErrorBody(Struct, frozen=True):
    error: str
    field: str | None = None


# -- events: the per-network stream, tagged by "kind" ---------------------------------


class Snapshot(Struct, frozen=True, tag="snapshot", tag_field="kind"):
    """The whole network; sent first when a stream starts fresh or is too far behind."""

    seq: int
    network: Network
    peers: tuple[Node, ...]


class PeerAdded(Struct, frozen=True, tag="peer_added", tag_field="kind"):
    seq: int
    peer: Node


class PeerChanged(Struct, frozen=True, tag="peer_changed", tag_field="kind"):
    seq: int
    peer: Node


class PeerRemoved(Struct, frozen=True, tag="peer_removed", tag_field="kind"):
    seq: int
    node_id: str
    name: str


class NetworkChanged(Struct, frozen=True, tag="network_changed", tag_field="kind"):
    seq: int
    network: Network


class PunchRequest(Struct, frozen=True, tag="punch_request", tag_field="kind"):
    """Rendezvous: both nodes get this at the same moment and probe each other."""

    seq: int
    session: str
    nodes: tuple[str, str]  # node ids of the pair
    start_at: float  # server's wall clock when probing should begin


class KeysRotated(Struct, frozen=True, tag="keys_rotated", tag_field="kind"):
    """Nodes whose new keys are now their keys, all at once.

    One event for the batch so every node applies every change in one reconcile pass:
    each rotated node switches its private key when it sees itself here, its peers
    switch to its new public key at the same moment, and WireGuard's next handshake
    meets a peer that knows the key it carries.
    """

    seq: int
    peers: tuple[Node, ...]


class StreamClosed(Struct, frozen=True, tag="stream_closed", tag_field="kind"):
    """The server's last word on a stream, and why.

    ``removed``: this node is no longer a member (deleted, expired, or its network
    deleted): it must stop reconnecting. Otherwise (a newer stream of the same node took
    this one's place) reconnecting is fine.
    """

    seq: int
    reason: str
    removed: bool = True


Event = (Snapshot | PeerAdded | PeerChanged | PeerRemoved | NetworkChanged | PunchRequest
         | KeysRotated | StreamClosed)

event_encoder = msgspec.json.Encoder()
event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)

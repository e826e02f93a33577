"""The control API's answers, as Structs: what punchd returns and punchctl decodes.

One Struct per command's result (:data:`RESULTS` maps each command to it), so the daemon
cannot answer a shape punchctl does not read, and punchctl reads attributes, never
string keys. The JSON field names are the contract of ``punchctl ... --json`` (scripts,
bench/ and the lab read them): add fields with defaults, never rename or remove.
Only msgspec and the API schema are imported here: punchctl loads this module on every
call and must start fast.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from punchd.wire import api

from . import commands as control
from .paths import PathKind

# Where this node stands with its network's server (punchd.daemon.checkin.node_state).
NodeState = Literal["approved", "pending", "expired", "removed", "unknown"]


class PunchStatus(msgspec.Struct, frozen=True):
    state: str
    failure: str | None
    attempts: int
    probes_sent: int
    probes_received: int
    rejected: int
    replays: int
    observed: str | None


class RelayStatus(msgspec.Struct, frozen=True):
    endpoint: str | None  # our bound side of the peer's relay allocation
    mapped: str | None  # where the relay sees us
    error: str | None


class PeerStatus(msgspec.Struct, frozen=True):
    name: str
    address: str | None
    address6: str | None
    public_key: str
    endpoint: str | None  # WireGuard's endpoint for the peer
    path: PathKind
    rtt_ms: float | None
    last_handshake_age_s: float | None
    rx_bytes: int
    tx_bytes: int
    in_wireguard: bool
    nat: api.NatReport
    punch: PunchStatus | None
    relay: RelayStatus | None
    confirmed: bool


class DnsStatus(msgspec.Struct, frozen=True):
    address: str
    domain: str
    resolver: str | None


class NetworkStatus(msgspec.Struct, frozen=True):
    name: str
    interface: str
    node: str
    address: str | None
    address6: str | None
    public_key: str
    listen_port: int | None
    interface_up: bool
    server: str
    server_connected: bool
    nat: api.NatReport | None
    dns: DnsStatus | None
    last_error: str | None
    peers: tuple[PeerStatus, ...]
    node_state: NodeState = "unknown"
    state_reason: str | None = None  # the server's reason (removed, expired) or what waits
    expires_at: float | None = None  # when the server will remove this node (epoch s)

class BrokenNetwork(msgspec.Struct, frozen=True):
    name: str
    error: str


class StatusResult(msgspec.Struct, frozen=True):
    networks: tuple[NetworkStatus, ...]
    broken: tuple[BrokenNetwork, ...] = ()


class JoinResult(msgspec.Struct, frozen=True):
    network: str
    node: str
    interface: str
    address: str | None
    address6: str | None
    approved: bool


class LeaveResult(msgspec.Struct, frozen=True):
    left: str


class NetworkSummary(msgspec.Struct, frozen=True):
    """One line of ``punchctl list``: a running network, or one that is broken (then
    only ``name`` and ``broken`` are set)."""

    name: str
    interface: str | None = None
    node: str | None = None
    address: str | None = None
    server: str | None = None
    server_connected: bool = False
    peers: int = 0
    broken: str | None = None


class PullResult(msgspec.Struct, frozen=True):
    pulled: tuple[str, ...]


class PushResult(msgspec.Struct, frozen=True):
    pushed: tuple[str, ...]


class FieldChange(msgspec.Struct, frozen=True):
    """One setting or own-node field the pull changed, as short text."""

    field: str
    old: str | None
    new: str | None


class PeerChange(msgspec.Struct, frozen=True):
    name: str
    fields: tuple[str, ...]  # which of the peer's fields changed


class NetworkCheckin(msgspec.Struct, frozen=True):
    """One network's checkin: what was pushed, what the pull changed, where we stand."""

    network: str
    node_state: NodeState
    state_reason: str | None = None
    pushed: tuple[str, ...] = ()  # the candidates sent to the server ("kind address")
    push_changed: bool = False  # the server held other candidates before
    peers_added: tuple[str, ...] = ()
    peers_removed: tuple[str, ...] = ()
    peers_changed: tuple[PeerChange, ...] = ()
    settings_changed: tuple[FieldChange, ...] = ()
    node_changed: tuple[FieldChange, ...] = ()
    wireguard_changes: int = 0  # operations the reconcile after the pull applied
    error: str | None = None  # why the push or the pull failed (then nothing was pulled)


class CheckinResult(msgspec.Struct, frozen=True):
    networks: tuple[NetworkCheckin, ...]


class NetcheckResult(msgspec.Struct, frozen=True):
    """The NAT report of one network (the fields of :class:`api.NatReport`, flat)."""

    network: str
    stun_server: str | None
    public_endpoint: str | None = None
    mapping: api.Behaviour | None = None
    filtering: api.Behaviour | None = None
    port_preserved: bool | None = None
    port_deltas: tuple[int, ...] = ()
    port_mapping: str | None = None  # the protocol holding a mapping: "pcp", "nat-pmp", "upnp"
    mapped_endpoint: str | None = None  # the gateway's public ip:port for WireGuard's port
    port_mapping_error: str | None = None  # why there is none


class PingReply(msgspec.Struct, frozen=True):
    seq: int
    rtt_ms: float
    endpoint: str | None
    path: PathKind


class PingResult(msgspec.Struct, frozen=True):
    peer: str
    address: str | None
    sent: int
    mode: str  # "probe" (punch probes from WireGuard's port) or "icmp"
    replies: tuple[PingReply, ...]
    path: PathKind
    endpoint: str | None


# The answer's type per command: punchctl decodes with it, and a test holds the daemon to it.
RESULTS: dict[type[msgspec.Struct], Any] = {
    control.Join: JoinResult,
    control.Leave: LeaveResult,
    control.List: list[NetworkSummary],
    control.Status: StatusResult,
    control.Pull: PullResult,
    control.Push: PushResult,
    control.Checkin: CheckinResult,
    control.Netcheck: NetcheckResult,
    control.Ping: PingResult,
}

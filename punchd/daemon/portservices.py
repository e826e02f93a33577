"""The services on WireGuard's own port for one network: discovery, punching, relay binds.

An adapter. :meth:`PortServices.start` starts the three services on the shared-port
socket, into the agent's nursery: :class:`~punchd.discovery.service.Discovery` (the one
reader of the port, and NAT classification), and, when the network allows hole
punching, :class:`~punchd.daemon.punching.Punching` (probes go to its sessions) and
:class:`~punchd.daemon.relaying.Relaying` (STUN answers go to its binds first; relay
allocations are bound from WireGuard's port and proven by the punch sessions, so they
come with punching). Without them — no STUN offered, no raw sockets, punching off — every
question below is answered as for a network without them: no facts, nothing to show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec
import trio
from nacl.public import PrivateKey

from punchd.discovery.service import Discovery
from punchd.discovery.sharedsock import SharedPortSocket
from punchd.errors import PunchdError
from punchd.punch.session import PunchEvent
from punchd.serverapi import ServerClient
from punchd.wire import api
from punchd.wire.addr import Addr

from .policy import PeerFacts, peer_facts
from .portmapping import PortMapper
from .punching import Punching
from .relaying import Relaying
from .status import PunchStatus, RelayStatus, punch_status, relay_status


class PortServices:
    def __init__(self) -> None:
        self.discovery: Discovery | None = None
        self.punching: Punching | None = None
        self.relaying: Relaying | None = None
        self.mapper: PortMapper | None = None
        self.local_only = False

    async def start(self, nursery: trio.Nursery, sock: SharedPortSocket, *, stun: Addr,
                    hole_punching: bool, port_mapping: bool, probe_key: PrivateKey,
                    client: ServerClient, on_event: Callable[[str, PunchEvent], None],
                    on_mapped: Callable[[], None], local_only: bool = False) -> None:
        """Start the services on ``sock`` (WireGuard's port) into ``nursery``.

        ``local_only``: LAN paths only, so no relay and no port mapping, and the punch
        sessions are given the peers' host candidates alone (:meth:`sync_peers`)."""
        self.local_only = local_only
        self.discovery = Discovery(sock, stun)
        await nursery.start(self.discovery.run)
        if hole_punching:
            self.punching = Punching(sock, probe_key, on_event,
                                     caught_up=self.discovery.caught_up)
            await nursery.start(self.punching.run)
            self.discovery.on_probe = self.punching.route
            if local_only:
                return
            self.relaying = Relaying(client, sock, self.punching.set_relay)
            await nursery.start(self.relaying.run)
            self.discovery.on_stun = self.relaying.handle_stun
            if port_mapping:
                self.mapper = PortMapper(sock.port, on_mapped)
                await nursery.start(self.mapper.run)

    def network_changed(self) -> None:
        """The host's addresses or links changed: the gateway may be another one."""
        if self.mapper is not None:
            self.mapper.wake()

    @property
    def mapped_endpoint(self) -> str | None:
        """The gateway's public endpoint for WireGuard's port, while a mapping holds."""
        return self.mapper.endpoint if self.mapper is not None else None

    def sync_peers(self, peers: Iterable[api.Node]) -> None:
        """The approved peers: one punch session and one relay link each."""
        approved = [p for p in peers if p.approved]
        if self.punching is not None:
            self.punching.sync_peers([lan_only(p) for p in approved] if self.local_only
                                     else approved)
        if self.relaying is not None:
            self.relaying.sync_peers(approved)

    def local_changed(self, candidates: tuple[api.Candidate, ...], nat: api.NatReport | None,
                      *, moved: bool) -> None:
        """Our candidates; ``moved``: our public mapping changed."""
        if self.punching is not None:
            self.punching.update_local(candidates, nat)
        if moved and self.relaying is not None:
            self.relaying.wake_binds()  # the relay must learn the new mapping

    def note_traffic(self, node_id: str) -> None:
        if self.punching is not None:
            self.punching.note_traffic(node_id)

    def punch(self, node_id: str) -> None:
        if self.punching is not None:
            self.punching.punch(node_id)

    def relayed(self, node_id: str) -> bool:
        """Whether the peer's session selected the relay pair."""
        session = self.punching.session(node_id) if self.punching else None
        return session is not None and session.selected_kind == "relay"

    def facts(self, node_ids: Iterable[str]) -> dict[str, PeerFacts]:
        """What each peer's punch session and relay say now, for the path policy."""
        facts = {}
        for node_id in node_ids:
            relay = self.relaying.states.get(node_id) if self.relaying else None
            facts[node_id] = peer_facts(self.punching.session(node_id) if self.punching else None,
                                        relay.relay if relay else None)
        return facts

    def punch_statuses(self, node_ids: Iterable[str]) -> dict[str, PunchStatus]:
        sessions = {n: self.punching.session(n) for n in node_ids} if self.punching else {}
        return {node_id: punch_status(s) for node_id, s in sessions.items() if s is not None}

    def relay_statuses(self) -> dict[str, RelayStatus]:
        states = self.relaying.states if self.relaying else {}
        return {node_id: relay_status(s.relay, s.mapped, s.error) for node_id, s in states.items()}

    async def netcheck(self, stun: str | None,
                       on_endpoint: Callable[[str], None] | None = None) -> api.NatReport:
        """Classify this node's NAT as seen from WireGuard's own port (RFC 5780)."""
        if stun is None:
            raise PunchdError("the signal server offers no STUN address (serve --stun)")
        if self.discovery is None:
            raise PunchdError("discovery is not running (raw sockets need CAP_NET_RAW)")
        return await self.discovery.netcheck(on_endpoint)


def lan_only(peer: api.Node) -> api.Node:
    """The peer as a local-only network's sessions see it: its host candidates alone,
    and no NAT report (predictions from it would be public addresses too)."""
    host = tuple(c for c in peer.candidates if c.kind == "host")
    if host == peer.candidates and peer.nat == api.NatReport():
        return peer
    return msgspec.structs.replace(peer, candidates=host, nat=api.NatReport())

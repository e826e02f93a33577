"""One joined network: its WireGuard interface, its server connection, its peers.

Theory of operation. The agent keeps a model of the network (the server's view:
network settings, this node, the peers) and path decisions per peer. Three tasks
change or use it:

* the *stream* task holds the server's event stream, applies snapshots and deltas
  to the model, and reconnects with capped, jittered backoff when the server is
  away — the WireGuard interface is left untouched meanwhile, so tunnels keep
  working without the control plane;
* the *reconcile* task computes the desired WireGuard device from the model and
  applies the diff (:mod:`punchd.daemon.reconcile`), on every model change and every
  few seconds, which also repairs drift and a restarted wireguard-go;
* the *publish* task gathers this node's candidates every ~25 s and at once when
  netlink reports a local address or link change, and sends them to the server when
  they change.

With discovery running and hole punching enabled for the network, a punch session
per peer (:mod:`punchd.daemon.punching`) finds the direct path. Which endpoint WireGuard
gets for each peer, and what status shows, is decided by the sans-IO
:class:`punchd.daemon.policy.PathPolicy` from the sessions' and the relay's facts and
WireGuard's observed state; the agent gathers those facts and applies the decisions.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable

import trio

from punchd import resolver
from punchd.discovery.addrwatch import watch_addresses
from punchd.discovery.service import Discovery, parse_addr
from punchd.discovery.sharedsock import SharedPortSocket
from punchd.errors import APIError, PunchdError, ServerUnreachable, WireGuardError
from punchd.punch.candidates import format_addr
from punchd.punch.session import PathChanged, PathFound, PathLost, PunchEvent, PunchFailed
from punchd.serverapi import ServerClient
from punchd.wg.base import (
    LinkConfig,
    WgDeviceState,
    WireGuardBackend,
    public_key,
)
from punchd.wire import api

from . import hostaddrs
from .model import NetworkModel
from .paths import host_candidates
from .policy import PathPolicy, PeerFacts, SessionFacts
from .punching import Punching
from .reconcile import DesiredDevice, RemovePeer, SetDevice, SetPeer, plan
from .relaying import Relaying
from .state import NetworkConfig, NetworkKeys, StateDir
from .status import DnsStatus, NetworkStatus, PunchStatus, RelayStatus, host, peer_statuses

log = logging.getLogger("punchd.network")

RECONCILE_INTERVAL_S = 2.0
CANDIDATE_INTERVAL_S = 25.0
BACKOFF_MIN_S = 0.5
# Full jitter below this cap: after a server restart every node is back on its stream
# within ~2 s, and a thousand nodes still arrive spread over that time, not at once.
BACKOFF_MAX_S = 1.5
REFUSED_RETRY_S = 30.0  # the server said no (401/403/404): asking again soon is no use
class NetworkAgent:
    def __init__(self, config: NetworkConfig, keys: NetworkKeys, backend: WireGuardBackend,
                 state: StateDir, *, exclude_ifnames: Iterable[str] = ()) -> None:
        self.config = config
        self.keys = keys
        self.backend = backend
        self.state = state
        self.client = ServerClient(config.server, keys.signing)
        self.model = NetworkModel()
        self.policy = PathPolicy(bytes(keys.probe.public_key))
        self.changed = trio.Event()
        self.server_connected = False
        self.removed = False
        self.last_error: str | None = None
        self._exclude = set(exclude_ifnames) | {config.interface}
        self._published: tuple[api.Candidate, ...] | None = None
        self._local_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._rng = random.Random()
        self.cancel_scope = trio.CancelScope()
        self._link_applied: LinkConfig | None = None
        self._dns_applied: api.MeshDns | None = None
        self.dns_outcome: str | None = None
        self.discovery: Discovery | None = None
        self.punching: Punching | None = None
        self.relaying: Relaying | None = None
        self._regather = trio.Event()
        self.nat: api.NatReport | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def poke(self) -> None:
        self.changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel_scope:
            try:
                await self.ensure_interface()
                async with trio.open_nursery() as nursery:
                    await self._start_discovery(nursery)
                    nursery.start_soon(self._stream_loop)
                    nursery.start_soon(self._reconcile_loop)
                    nursery.start_soon(self._publish_loop)
                    nursery.start_soon(self._watch_addresses)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await self.client.aclose()

    async def _start_discovery(self, nursery: trio.Nursery) -> None:
        try:
            if self.model.node is None:
                await self.pull()
        except (ServerUnreachable, APIError) as exc:
            self.last_error = str(exc)
        if self.model.stun is None:
            return
        try:
            sock = SharedPortSocket(self.config.listen_port)
        except PunchdError as exc:
            self.last_error = str(exc)
            log.warning("%s: no discovery: %s", self.name, exc)
            return
        self.discovery = Discovery(sock, parse_addr(self.model.stun))
        await nursery.start(self.discovery.run)
        if self.model.network is None or self.model.network.hole_punching:
            self.punching = Punching(sock, self.keys.probe, self._on_punch_event)
            await nursery.start(self.punching.run)
            self.discovery.on_probe = self.punching.route
            # Relay allocations are bound from WireGuard's port and proven by the punch
            # sessions, so they come with punching.
            self.relaying = Relaying(self.client, sock, self.punching.set_relay)
            await nursery.start(self.relaying.run)
            self.discovery.on_stun = self.relaying.handle_stun

    # -- interface and reconciliation ------------------------------------------------------

    async def ensure_interface(self) -> None:
        ifname = self.config.interface
        await self.backend.ensure_interface(ifname)
        await self.backend.set_device(ifname, private_key=self.keys.wireguard,
                                      listen_port=self.config.listen_port)

    def desired(self, actual: WgDeviceState | None = None) -> DesiredDevice:
        network = self.model.network
        return self.policy.desired(
            self.model.peers, actual, time.time(),
            private_key_public=public_key(self.keys.wireguard),
            listen_port=self.config.listen_port,
            keepalive=network.keepalive if network else 25)

    def link_config(self) -> LinkConfig | None:
        node, network = self.model.node, self.model.network
        if node is None or network is None:
            return None
        return LinkConfig(addresses=tuple(a for a in (node.ipv4, node.ipv6) if a),
                          mtu=network.mtu)

    def _facts(self) -> dict[str, PeerFacts]:
        """What each peer's punch session and relay say now, for the path policy."""
        facts = {}
        for node_id in self.model.peers:
            session = self.punching.session(node_id) if self.punching else None
            relay = self.relaying.states.get(node_id) if self.relaying else None
            facts[node_id] = PeerFacts(
                session=None if session is None else SessionFacts(
                    state=session.state,
                    selected=format_addr(session.selected) if session.selected else None,
                    selected_kind=session.selected_kind, selected_rtt=session.selected_rtt,
                    relay=format_addr(session.relay) if session.relay else None),
                relay=format_addr(relay.relay) if relay is not None and relay.relay else None)
        return facts

    def _on_punch_event(self, node_id: str, event: PunchEvent) -> None:
        peer = self.model.peers.get(node_id)
        name = peer.name if peer else node_id
        if isinstance(event, PathFound):
            self.policy.path_found(node_id, time.time())
            session = self.punching.session(node_id) if self.punching else None
            kind = "relayed" if session is not None and session.selected_kind == "relay" \
                else "direct"
            log.info("%s: %s path to %s via %s (%.1f ms)", self.name, kind, name,
                     format_addr(event.addr), event.rtt * 1000)
        elif isinstance(event, PathChanged):
            log.info("%s: path to %s moves %s -> %s (%.1f ms)", self.name, name,
                     format_addr(event.old), format_addr(event.new), event.rtt * 1000)
        elif isinstance(event, PathLost):
            log.info("%s: path to %s via %s lost; punching again", self.name, name,
                     format_addr(event.addr))
        elif isinstance(event, PunchFailed):
            log.info("%s: no direct path to %s: %s", self.name, name, event.reason)
        self.poke()

    def _sync_punching(self) -> None:
        peers = [p for p in self.model.peers.values() if p.approved]
        if self.punching is not None:
            self.punching.sync_peers(peers)
        if self.relaying is not None:
            self.relaying.sync_peers(peers)

    async def reconcile_once(self) -> int:
        """One pass: returns the number of operations applied."""
        ifname = self.config.interface
        if not await self.backend.interface_exists(ifname):
            log.warning("%s: interface missing (wireguard-go died?), recreating", ifname)
            await self.ensure_interface()
            self._link_applied = None
        link = self.link_config()
        if link is not None and link != self._link_applied:
            await self.backend.set_link(ifname, link)
            self._link_applied = link
        actual = await self.backend.get_device(ifname)
        now = time.time()
        network = self.model.network
        for gone in self.policy.update(
                self.model.peers, self._facts(), actual, now, punching=self.punching is not None,
                local_networks=self._local_networks,
                local_only=bool(network and network.local_only)):
            peer = self.model.peers[gone.node_id]
            log.warning("%s: WireGuard gets nothing back on %s from %s although probes "
                        "pass; using the relay for %d s", self.name, gone.endpoint,
                        peer.name, gone.seconds)
        ops = plan(self.desired(actual), actual, now)
        for op in ops:
            if isinstance(op, SetDevice):
                await self.backend.set_device(
                    ifname, private_key=self.keys.wireguard if op.private_key else None,
                    listen_port=op.listen_port)
            elif isinstance(op, SetPeer):
                await self.backend.set_peer(ifname, op.peer)
                if op.peer.endpoint is not None:
                    self.policy.endpoint_set(op.peer.public_key, op.peer.endpoint)
            elif isinstance(op, RemovePeer):
                await self.backend.remove_peer(ifname, op.public_key)
                self.policy.peer_removed(op.public_key)
        if ops:
            log.info("%s: applied %d change(s)", ifname, len(ops))
        # Sessions follow WireGuard, not the model: a peer must be in WireGuard before
        # its probes are answered, or its first handshake (sent the moment its session
        # finds the path) meets an interface that drops it and waits 5 s to retry.
        self._sync_punching()
        return len(ops)

    async def _reconcile_loop(self) -> None:
        while True:
            self.changed = trio.Event()
            try:
                await self.reconcile_once()
            except WireGuardError as exc:
                self.last_error = str(exc)
                log.warning("%s: reconcile failed: %s", self.config.interface, exc)
            # Decisions also change by themselves (a responder's handshake wait ends):
            # wake for that as well as for new facts and the periodic repair pass.
            wait = min(RECONCILE_INTERVAL_S, self.policy.next_deadline(time.time()) - time.time())
            with trio.move_on_after(max(wait, 0.0)):
                await self.changed.wait()

    # -- server ------------------------------------------------------------------------------

    async def pull(self) -> None:
        """Resync the whole model from the server now."""
        snap = await self.client.get_state()
        self.model.apply_snapshot(snap)
        await self.configure_resolver()
        self.poke()

    async def configure_resolver(self) -> None:
        """Send the mesh domain (only) to meshdns; once per change of the server's DNS."""
        dns = self.model.dns
        if dns is None or dns == self._dns_applied:
            return
        plan = resolver.plan_configure(self.config.interface, dns,
                                       resolved=resolver.resolved_running())
        self.dns_outcome = await resolver.apply(plan)
        self._dns_applied = dns
        log.info("%s: mesh DNS %s for *.%s: %s", self.name, dns.address, dns.domain,
                 self.dns_outcome)

    async def _stream_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self.removed:
            try:
                if self.model.node is None:
                    await self.pull()
                async with self.client.events(since=self.model.seq) as stream:
                    self.server_connected = True
                    backoff = BACKOFF_MIN_S
                    async for event in stream:
                        if isinstance(event, api.StreamClosed):
                            self._stream_closed(event)
                            break
                        if isinstance(event, api.PeerRemoved) and self.model.node is not None \
                                and event.node_id == self.model.node.id:
                            self.removed = True
                            log.warning("%s: this node was deleted on the server", self.name)
                        self.model.apply(event)
                        if isinstance(event, api.PunchRequest):
                            self._rendezvous(event)
                        self.poke()
            except (ServerUnreachable, APIError) as exc:
                self.last_error = str(exc)
                if isinstance(exc, APIError) and exc.status in (401, 403, 404):
                    log.warning("%s: server refused us: %s", self.name, exc)
                    backoff = REFUSED_RETRY_S
            finally:
                self.server_connected = False
            # Capped exponential backoff with full jitter: many nodes must not
            # return to a restarted server in lockstep.
            await trio.sleep(self._rng.uniform(0, backoff))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _stream_closed(self, event: api.StreamClosed) -> None:
        """The server ended our stream: removed from the network, or superseded."""
        if event.removed:
            self.removed = True
            self.last_error = f"removed by the server: {event.reason}"
            log.warning("%s: %s; no longer connecting", self.name, event.reason)
        else:
            log.info("%s: stream closed by the server: %s", self.name, event.reason)

    def _rendezvous(self, request: api.PunchRequest) -> None:
        me = self.model.node.id if self.model.node else None
        if self.punching is None or me not in request.nodes:
            return
        other = request.nodes[1] if request.nodes[0] == me else request.nodes[0]
        self.punching.punch(other)

    async def _publish_loop(self) -> None:
        """Gather and publish every ~25 s (jittered), and at once on an address change."""
        while not self.removed:
            self._regather = trio.Event()
            try:
                await self.publish_candidates()
            except (ServerUnreachable, APIError) as exc:
                self.last_error = str(exc)
            with trio.move_on_after(CANDIDATE_INTERVAL_S * self._rng.uniform(0.8, 1.2) if
                                    self._published is not None else 1.0):
                await self._regather.wait()

    def regather(self) -> None:
        """A local address or link changed (netlink): gather and publish now."""
        self._regather.set()

    async def _watch_addresses(self) -> None:
        try:
            await watch_addresses(self.regather, exclude=self._exclude)
        except OSError as exc:  # no netlink here: the periodic re-gather still runs
            log.warning("%s: cannot watch address changes: %s", self.name, exc)

    async def publish_candidates(self, *, force: bool = False) -> None:
        """Host candidates, plus the server-reflexive one when discovery works.

        A new public endpoint is published the moment the first STUN answer gives it
        (peers start punching on it), the NAT's behaviour when classification ends.
        """
        addresses = await hostaddrs.local_addresses(self._exclude)
        self._local_networks = [ipaddress.ip_interface(a).network for a in addresses]
        host = host_candidates(addresses, self.config.listen_port)
        early: list[str] = []
        endpoint_known = trio.Event()
        report: list[api.NatReport | None] = []

        def on_endpoint(endpoint: str) -> None:
            early.append(endpoint)
            endpoint_known.set()

        async def classify() -> None:
            report.append(await self.netcheck_quietly(on_endpoint))
            endpoint_known.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(classify)
            await endpoint_known.wait()
            if early and (self.nat is None or self.nat.public_endpoint != early[0]):
                await self._publish(_with_srflx(host, early[0]),
                                    api.NatReport(public_endpoint=early[0]), force=False)
        nat = report[0]
        await self._publish(_with_srflx(host, nat.public_endpoint if nat else None), nat,
                            force=force)

    async def _publish(self, candidates: tuple[api.Candidate, ...], nat: api.NatReport | None,
                       *, force: bool) -> None:
        if self.punching is not None:
            self.punching.update_local(candidates, nat)
        moved = nat is not None and self.nat is not None \
            and nat.public_endpoint != self.nat.public_endpoint
        if moved and self.relaying is not None:
            self.relaying.kick()  # our mapping changed: the relay must learn the new one
        if candidates != self._published or nat != self.nat or force:
            await self.client.update_self(api.NodeUpdate(candidates=candidates, nat=nat))
            self._published = candidates
            self.nat = nat

    async def netcheck_quietly(self, on_endpoint: Callable[[str], None] | None = None
                               ) -> api.NatReport | None:
        if self.model.stun is None or self.discovery is None:
            return None  # no STUN offered, or no raw sockets: host candidates only
        try:
            return await self.netcheck(on_endpoint)
        except PunchdError as exc:
            self.last_error = str(exc)
            return None

    async def netcheck(self, on_endpoint: Callable[[str], None] | None = None) -> api.NatReport:
        """Classify this node's NAT as seen from WireGuard's own port (RFC 5780)."""
        if self.model.stun is None:
            raise PunchdError("the signal server offers no STUN address (serve --stun)")
        if self.discovery is None:
            raise PunchdError("discovery is not running (raw sockets need CAP_NET_RAW)")
        return await self.discovery.netcheck(on_endpoint)

    # -- status --------------------------------------------------------------------------------

    async def status(self) -> NetworkStatus:
        now = time.time()
        try:
            device: WgDeviceState | None = await self.backend.get_device(self.config.interface)
        except WireGuardError:
            device = None
        node, dns = self.model.node, self.model.dns
        return NetworkStatus(
            name=self.name, interface=self.config.interface, node=self.config.node_name,
            address=host(node.ipv4) if node else None,
            address6=host(node.ipv6) if node else None,
            public_key=public_key(self.keys.wireguard),
            listen_port=device.listen_port if device else None,
            interface_up=device is not None, server=self.config.server,
            server_connected=self.server_connected, nat=self.nat,
            dns=DnsStatus(address=dns.address, domain=dns.domain, resolver=self.dns_outcome)
            if dns else None,
            last_error=self.last_error,
            peers=peer_statuses(self.model.peers, self.policy, device, now,
                                punch=self._punch_status(), relay=self._relay_status()))

    def _relay_status(self) -> dict[str, RelayStatus]:
        states = self.relaying.states if self.relaying else {}
        return {node_id: RelayStatus(
            endpoint=format_addr(state.relay) if state.relay else None,
            mapped=format_addr(state.mapped) if state.mapped else None, error=state.error)
            for node_id, state in states.items()}

    def _punch_status(self) -> dict[str, PunchStatus]:
        out = {}
        for node_id in self.model.peers:
            session = self.punching.session(node_id) if self.punching else None
            if session is None:
                continue
            stats = session.statistics()
            out[node_id] = PunchStatus(
                state=session.state, failure=session.failure, attempts=stats.attempts,
                probes_sent=stats.probes_sent, probes_received=stats.probes_received,
                rejected=stats.rejected, replays=stats.replays,
                observed=format_addr(session.observed) if session.observed else None)
        return out

    async def leave(self) -> None:
        """Deregister, then remove the interface and the state."""
        try:
            await self.client.leave()
        except APIError as exc:
            if exc.status not in (401, 404):
                raise
        except ServerUnreachable as exc:
            raise PunchdError(f"cannot reach the server to leave {self.name}: {exc}") from exc
        self.cancel_scope.cancel()
        await resolver.apply(resolver.plan_revert(self.config.interface,
                                                  resolved=resolver.resolved_running()))
        await self.backend.delete_interface(self.config.interface)
        self.state.remove(self.name)


def _with_srflx(host: tuple[api.Candidate, ...], endpoint: str | None) -> tuple[api.Candidate, ...]:
    if not endpoint or endpoint in {c.address for c in host}:
        return host
    # RFC 8445 §5.1.2.1: server-reflexive type preference 100.
    return (*host, api.Candidate(kind="srflx", address=endpoint,
                                 priority=(100 << 24) + (65535 << 8) + 255))

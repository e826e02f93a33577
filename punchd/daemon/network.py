"""One joined network: its WireGuard interface, its server connection, its peers.

Theory of operation. The agent holds the loops and feeds the pure cores: the model of
the network (:mod:`punchd.daemon.model`, the server's view), the path policy
(:mod:`punchd.daemon.policy`), the plan of WireGuard changes
(:mod:`punchd.daemon.reconcile`) and the status (:mod:`punchd.daemon.status`). Three
tasks change or use them, each woken early through a :class:`~punchd.daemon.tasks.Wakeup`:

* the *stream* task holds the server's event stream, applies snapshots and deltas
  to the model, and reconnects with capped, jittered backoff when the server is
  away — the WireGuard interface is left untouched meanwhile, so tunnels keep
  working without the control plane;
* the *reconcile* task computes the desired WireGuard device from the model and
  applies the diff (:mod:`punchd.daemon.reconcile`), on every model change and every
  few seconds, which also repairs drift and a restarted wireguard-go;
* the *publish* task gathers this node's candidates every ~25 s and at once when
  netlink reports a local address or link change, and sends them to the server when
  they change (:mod:`punchd.daemon.publishing`);
* the *port services* task runs discovery, punching and relay binds on WireGuard's
  port in a nursery of its own (:mod:`punchd.daemon.portservices`).

Settings (``network update``, ``node update``) arrive as events like any other and are
applied live by :meth:`NetworkAgent._apply_settings`: keepalive and MTU by the next
reconcile; a new listen port is saved to the config, set on WireGuard by reconcile,
and, like a change of "local only" or "hole punching", restarts the port services
from scratch (a new socket, discovery and punch sessions against the new facts) rather
than patching each service; the candidates are then gathered and published again.

With discovery running and hole punching enabled for the network
(:mod:`punchd.daemon.portservices`), a punch session per peer finds the direct path;
the policy decides from its facts, the relay's and WireGuard's observed state.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable

import msgspec
import trio

from punchd import resolver
from punchd.discovery.addrwatch import watch_addresses
from punchd.discovery.sharedsock import SharedPortSocket
from punchd.errors import APIError, ConfigError, PunchdError, ServerUnreachable, WireGuardError
from punchd.punch.session import PathFound, PunchEvent
from punchd.serverapi import ServerClient
from punchd.wg.base import LinkConfig, WgDeviceState, WireGuardBackend, public_key
from punchd.wire import api
from punchd.wire.addr import parse_host_port

from .checkin import View, compare, node_state
from .model import NetworkModel
from .policy import PathPolicy
from .portservices import PortServices
from .publishing import CandidatePublisher
from .reconcile import RemovePeer, SetDevice, SetPeer, desired_link, plan
from .results import NetworkCheckin
from .state import NetworkConfig, NetworkKeys, StateDir
from .status import NetworkStatus, describe, network_status
from .tasks import Wakeup

log = logging.getLogger("punchd.network")

RECONCILE_INTERVAL_S = 2.0
# Passes woken by events start at most this often: the first event after a quiet spell
# is served at once (join -> first packet stays fast), the rest of a burst (a thousand
# PathFound as the sessions connect) shares a pass instead of costing one each (#22).
RECONCILE_MIN_GAP_S = 0.1
CANDIDATE_INTERVAL_S = 25.0
BACKOFF_MIN_S = 0.5
# Full jitter below this cap: after a server restart every node is back on its stream
# within ~2 s, and a thousand nodes still arrive spread over that time, not at once.
BACKOFF_MAX_S = 1.5
# WireGuard's counters moved by more than its own keepalive (32 bytes) and a handshake
# (148 + 92) would move them in one pass: the path carries traffic, so its punch
# session keeps the fast keepalive pace and a dead path falls back within ~2 s.
TRAFFIC_MIN_BYTES = 256
REFUSED_RETRY_S = 30.0  # the server said no (401/403/404): asking again soon is no use


class NetworkAgent:
    def __init__(self, config: NetworkConfig, keys: NetworkKeys, backend: WireGuardBackend,
                 state: StateDir, *, exclude_ifnames: Iterable[str] = (),
                 port_mapping: bool = False) -> None:
        self.config = config
        self.keys = keys
        self.backend = backend
        self.state = state
        self.client = ServerClient(config.server, keys.signing)
        self.model = NetworkModel()
        self.policy = PathPolicy(bytes(keys.probe.public_key))
        self._reconcile_due = Wakeup()
        self._publish_due = Wakeup()
        self.server_connected = False
        # The server ended this node's membership (its stream said so): no reconnecting.
        self.removed = False
        # Why the server no longer has this node, final or a refusal (401/404) that a
        # later pull may lift; None while it does. Peers are dropped while it is set.
        self.removed_reason: str | None = None
        self._revived = trio.Event()  # a pull succeeded after the stream said removed
        self.last_error: str | None = None
        self._exclude = set(exclude_ifnames) | {config.interface}
        self._rng = random.Random()
        self.cancel_scope = trio.CancelScope()
        self._link_applied: LinkConfig | None = None
        self._dns_applied: api.MeshDns | None = None
        self._counters: dict[str, int] = {}  # WireGuard rx+tx bytes by public key
        self.dns_outcome: str | None = None
        self.port_mapping = port_mapping
        self.port = PortServices()
        # What the running port services were started for, and the way to restart them.
        self._port_key: tuple[int, bool, bool, str | None] | None = None
        self._port_restart = trio.Event()
        self.publisher = CandidatePublisher(self.client, self.port, listen_port=config.listen_port,
                                            exclude_ifnames=self._exclude,
                                            on_error=self._set_error)

    def _set_error(self, error: str) -> None:
        self.last_error = error

    @property
    def name(self) -> str:
        return self.config.name

    def wake_reconcile(self) -> None:
        """The model or a fact changed: reconcile WireGuard now."""
        self._reconcile_due.wake()

    def wake_publish(self) -> None:
        """A local address or link changed (netlink): map, gather and publish now."""
        self.port.network_changed()
        self._publish_due.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel_scope:
            try:
                await self.ensure_interface()
                try:
                    if self.model.node is None:
                        await self.pull()
                except (ServerUnreachable, APIError) as exc:
                    self.last_error = str(exc)
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._port_services_loop)
                    nursery.start_soon(self._stream_loop)
                    nursery.start_soon(self._reconcile_loop)
                    nursery.start_soon(self._publish_loop)
                    nursery.start_soon(self._watch_addresses)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await self.client.aclose()

    def _port_settings(self) -> tuple[int, bool, bool, str | None]:
        """What the port services depend on: (listen port, hole punching, local only,
        the server's STUN address: a first pull that failed at start gave none)."""
        network = self.model.network
        return (self.config.listen_port, network is None or network.hole_punching,
                bool(network and network.local_only), self.model.stun)

    async def _port_services_loop(self, *, task_status: trio.TaskStatus[None] =
                                  trio.TASK_STATUS_IGNORED) -> None:
        """The port services, started afresh whenever :meth:`_port_settings` changes."""
        first = True
        while True:
            self._port_restart = trio.Event()
            self._port_key = self._port_settings()
            self.publisher.local_only = self._port_key[2]
            async with trio.open_nursery() as nursery:
                await self._start_discovery(nursery)
                if first:
                    task_status.started()
                    first = False
                else:  # new facts: gather, publish and reconcile against them now
                    self._publish_due.wake()
                    self.wake_reconcile()
                await self._port_restart.wait()
                nursery.cancel_scope.cancel()
            port, punching, local_only, _ = self._port_settings()
            log.info("%s: port services restart (port %d, hole punching %s, local only %s)",
                     self.name, port, punching, local_only)
            self.port = PortServices()
            self.publisher.port = self.port

    def _apply_settings(self) -> None:
        """The server's settings for this node, after every model change (see the
        theory of operation): only what changed is acted on."""
        node, network = self.model.node, self.model.network
        if node is None or network is None:
            return
        settings = node.settings(network)
        config = msgspec.structs.replace(self.config, listen_port=settings.listen_port,
                                         node_name=node.name)
        if config != self.config:
            if config.listen_port != self.config.listen_port:
                log.info("%s: listen port %d -> %d", self.name, self.config.listen_port,
                         config.listen_port)
            self.config = config
            self.publisher.listen_port = config.listen_port
            try:
                self.state.save_config(config)  # a restart keeps the new port
            except (ConfigError, OSError) as exc:
                self.last_error = f"cannot save {self.name}'s config: {exc}"
        if self._port_key is not None and self._port_settings() != self._port_key:
            self._port_restart.set()

    async def _start_discovery(self, nursery: trio.Nursery) -> None:
        if self.model.stun is None:
            return
        try:
            stun = parse_host_port(self.model.stun)
            sock = SharedPortSocket(self.config.listen_port)
        except PunchdError as exc:
            self.last_error = str(exc)
            log.warning("%s: no discovery: %s", self.name, exc)
            return
        _, hole_punching, local_only, _ = self._port_settings()
        await self.port.start(nursery, sock, stun=stun, hole_punching=hole_punching,
                              local_only=local_only,
                              port_mapping=self.port_mapping and not local_only,
                              on_mapped=self._publish_due.wake,
                              probe_key=self.keys.probe, client=self.client,
                              on_event=self._on_punch_event)

    # -- interface and reconciliation ------------------------------------------------------

    async def ensure_interface(self) -> None:
        ifname = self.config.interface
        await self.backend.ensure_interface(ifname)
        await self.backend.set_device(ifname, private_key=self.keys.wireguard,
                                      listen_port=self.config.listen_port)

    def _on_punch_event(self, node_id: str, event: PunchEvent) -> None:
        if isinstance(event, PathFound):
            self.policy.path_found(node_id, time.time())
        peer = self.model.peers.get(node_id)
        log.info("%s: %s", self.name, describe(event, peer.name if peer else node_id,
                                                relayed=self.port.relayed(node_id)))
        self.wake_reconcile()

    async def reconcile_once(self) -> int:
        """One pass: returns the number of operations applied."""
        ifname = self.config.interface
        if not await self.backend.interface_exists(ifname):
            log.warning("%s: interface missing (wireguard-go died?), recreating", ifname)
            await self.ensure_interface()
            self._link_applied = None
        link = desired_link(self.model.node, self.model.network)
        if link is not None and link != self._link_applied:
            await self.backend.set_link(ifname, link)
            self._link_applied = link
        actual = await self.backend.get_device(ifname)
        self._note_traffic(actual)
        now = time.time()
        network = self.model.network
        for gone in self.policy.update(
                self.model.peers, self.port.facts(self.model.peers), actual, now,
                punching=self.port.punching is not None,
                local_networks=self.publisher.local_networks,
                local_only=bool(network and network.local_only)):
            peer = self.model.peers[gone.node_id]
            log.warning("%s: WireGuard gets nothing back on %s from %s although probes "
                        "pass; using the relay for %d s", self.name, gone.endpoint,
                        peer.name, gone.seconds)
        node = self.model.node
        keepalive = node.settings(network).keepalive if node and network else \
            network.keepalive if network else 25
        desired = self.policy.desired(
            self.model.peers, actual, now, private_key_public=public_key(self.keys.wireguard),
            listen_port=self.config.listen_port, keepalive=keepalive)
        ops = plan(desired, actual, now)
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
        self.port.sync_peers(self.model.peers.values())
        return len(ops)

    def _note_traffic(self, actual: WgDeviceState) -> None:
        """Tell the punch sessions of peers whose WireGuard counters moved (traffic)."""
        moved = []
        counters = {}
        for state in actual.peers:
            total = counters[state.public_key] = state.rx_bytes + state.tx_bytes
            if total - self._counters.get(state.public_key, total) >= TRAFFIC_MIN_BYTES:
                moved.append(state.public_key)
        self._counters = counters
        if moved:
            by_key = {p.wg_public_key: node_id for node_id, p in self.model.peers.items()}
            for key in moved:
                if key in by_key:
                    self.port.note_traffic(by_key[key])

    async def _reconcile_loop(self) -> None:
        while True:
            woken = self._reconcile_due.round()
            started = trio.current_time()
            try:
                await self.reconcile_once()
            except WireGuardError as exc:
                self.last_error = str(exc)
                log.warning("%s: reconcile failed: %s", self.config.interface, exc)
            # Decisions also change by themselves (a responder's handshake wait ends):
            # wake for that as well as for new facts and the periodic repair pass.
            wait = min(RECONCILE_INTERVAL_S, self.policy.next_deadline(time.time()) - time.time())
            with trio.move_on_after(max(wait, 0.0)):
                await woken.wait()
            # Events during the gap are coalesced by the Wakeup into the next pass.
            await trio.sleep_until(started + RECONCILE_MIN_GAP_S)

    # -- server ------------------------------------------------------------------------------

    async def pull(self) -> None:
        """Resync the whole model from the server now. A refusal (401: our key is
        unknown; 404: our network is gone) drops the network's peers, then is raised."""
        try:
            snap = await self.client.get_state()
        except APIError as exc:
            if exc.status in (401, 404):
                self._drop_membership(f"the server refused this node: {exc}", final=False)
            raise
        self.model.apply_snapshot(snap)
        if self.removed_reason is not None:
            log.warning("%s: the server knows this node again; peers restored", self.name)
            self.removed_reason = None
            if self.removed:
                self.removed = False
                self._revived.set()
        self._apply_settings()
        await self.configure_resolver()
        self.wake_reconcile()

    def _drop_membership(self, reason: str, *, final: bool) -> None:
        """The server no longer has this node: WireGuard is reconciled to no peers (the
        mesh must not outlive the admin's removal), and status says why. ``final``:
        the stream said so, so it is not reopened."""
        self.removed = self.removed or final
        if self.removed_reason is None:
            log.warning("%s: %s; dropping %d peer(s)", self.name, reason,
                        len(self.model.peers))
        self.removed_reason = reason
        self.last_error = reason
        self.model.peers = {}
        self.wake_reconcile()

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
        while True:
            if self.removed:
                await self._revived.wait()  # only a checkin's successful pull ends this
                self._revived = trio.Event()
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
                        if isinstance(event, api.PeerRemoved) and self.model.is_self(event.node_id):
                            # The stream ends after this event: the server's last word.
                            self._drop_membership("this node was deleted on the server",
                                                  final=True)
                            break
                        self.model.apply(event)
                        self._apply_settings()
                        if isinstance(event, api.PunchRequest):
                            partner = self.model.rendezvous_partner(event)
                            if partner is not None:
                                self.port.punch(partner)
                        self.wake_reconcile()
            except (ServerUnreachable, APIError) as exc:
                self.last_error = str(exc)
                if isinstance(exc, APIError) and exc.status in (401, 403, 404):
                    log.warning("%s: server refused us: %s", self.name, exc)
                    if exc.status != 403:  # 403 is a pending node's refusal, not removal
                        self._drop_membership(f"the server refused this node: {exc}",
                                              final=False)
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
            self._drop_membership(f"removed by the server: {event.reason}", final=True)
        else:
            log.info("%s: stream closed by the server: %s", self.name, event.reason)

    async def _publish_loop(self) -> None:
        """Gather and publish every ~25 s (jittered), and at once on an address change."""
        while True:
            woken = self._publish_due.round()
            try:
                if self.removed_reason is None:  # a removed node has no one to tell
                    await self.publish_candidates()
            except (ServerUnreachable, APIError) as exc:
                self.last_error = str(exc)
            with trio.move_on_after(CANDIDATE_INTERVAL_S * self._rng.uniform(0.8, 1.2) if
                                    self.publisher.published is not None
                                    or self.removed_reason is not None else 1.0):
                await woken.wait()

    async def _watch_addresses(self) -> None:
        try:
            await watch_addresses(self.wake_publish, exclude=self._exclude)
        except OSError as exc:  # no netlink here: the periodic re-gather still runs
            log.warning("%s: cannot watch address changes: %s", self.name, exc)

    async def publish_candidates(self, *, force: bool = False) -> None:
        await self.publisher.publish(self.model.stun, force=force)

    async def checkin(self) -> NetworkCheckin:
        """Push our candidates, pull the server's view, reconcile, and say what moved.

        A removed node still pulls (the server may know it again) but pushes nothing.
        A failure (the server away, or refusing) is the result's ``error``: the other
        networks' checkins go on."""
        before = self._view()
        told = before.node.candidates if before.node else None
        pushed: tuple[str, ...] = ()
        error: str | None = None
        try:
            if self.removed_reason is None:
                await self.publish_candidates(force=True)
                pushed = tuple(f"{c.kind} {c.address}" for c in self.publisher.published or ())
            await self.pull()
        except (ServerUnreachable, APIError) as exc:
            error = self.last_error = str(exc)
        ops = await self.reconcile_once()
        after = self._view()
        changes = compare(before, after)
        state, reason = node_state(self.model.node, self.removed_reason, time.time())
        return NetworkCheckin(
            network=self.name, node_state=state, state_reason=reason, pushed=pushed,
            push_changed=bool(pushed) and told is not None
            and told != self.publisher.published,
            peers_added=changes.peers_added, peers_removed=changes.peers_removed,
            peers_changed=changes.peers_changed, settings_changed=changes.settings_changed,
            node_changed=changes.node_changed, wireguard_changes=ops, error=error)

    def _view(self) -> View:
        return View(network=self.model.network, node=self.model.node,
                    peers=dict(self.model.peers))

    async def netcheck(self, on_endpoint: Callable[[str], None] | None = None) -> api.NatReport:
        return await self.port.netcheck(self.model.stun, on_endpoint)

    # -- status --------------------------------------------------------------------------------

    async def status(self) -> NetworkStatus:
        now = time.time()
        try:
            device: WgDeviceState | None = await self.backend.get_device(self.config.interface)
        except WireGuardError:
            device = None
        return network_status(
            self.config, self.model, self.policy, device, now,
            public_key=public_key(self.keys.wireguard), server_connected=self.server_connected,
            nat=self.publisher.nat, resolver=self.dns_outcome, last_error=self.last_error,
            punch=self.port.punch_statuses(self.model.peers), relay=self.port.relay_statuses(),
            removed=self.removed_reason)

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


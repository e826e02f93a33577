"""``punchd``: the node daemon. One trio nursery tree, owned by :class:`Daemon`.

    punchd --state-dir DIR --socket PATH [--wg-backend auto|kernel|userspace]
           [--metrics HOST:PORT]

SIGTERM/SIGINT stop it within a second or two; WireGuard interfaces and peers stay
as they are, so traffic keeps flowing across a daemon restart (``leave`` is what
removes an interface).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from punchd import __version__
from punchd.errors import (
    AddrError,
    APIError,
    ConfigError,
    ControlError,
    PunchdError,
    ServerUnreachable,
)
from punchd.metrics_http import MetricsListener
from punchd.serverapi import ServerClient
from punchd.wg import BackendKind, WireGuardBackend, open_backend, public_key
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr, parse_addr
from punchd.wire.signing import b64
from punchd.wire.token import JoinToken, decode_token

from . import control, hostaddrs, metrics, results, sdnotify
from .control import ControlServer
from .network import NetworkAgent
from .paths import host_candidates
from .state import NetworkConfig, StateDir
from .status import host

log = logging.getLogger("punchd")
SHUTDOWN_GRACE_S = 1.5


def default_ifname(network: str) -> str:
    return f"pd-{network}"[:15]


# A join the server may have committed is retried with the same keys: the server treats a
# signed POST /join from a signing key that already joined, with the same WireGuard and
# probe keys, as a retry (same answer, no second use of the access key).
JOIN_ATTEMPTS = 4
JOIN_BACKOFF_S = (0.5, 1.0, 2.0)
JOIN_BUDGET_S = 45.0  # within punchctl's 60 s call timeout, so the user hears why
JOIN_CLEANUP_S = 3.0  # the best-effort DELETE of a join we gave up on
# iputils ping: "64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.045 ms"
ICMP_REPLY = re.compile(r"icmp_seq=(\d{1,9})\b.*?\btime=(\d{1,9}(?:\.\d{1,6})?) ms")

ClientFactory = Callable[[str, SigningKey], ServerClient]


def _retryable(exc: PunchdError) -> bool:
    """Transport failures and a gateway's 5xx may hide a join the server committed."""
    return isinstance(exc, ServerUnreachable) or (
        isinstance(exc, APIError) and exc.status in (502, 503, 504))


async def join_with_retry(client: ServerClient, token: JoinToken, *, name: str | None,
                          wg_public_key: str, probe_public_key: str, listen_port: int,
                          candidates: tuple[api.Candidate, ...]) -> api.JoinResponse:
    """POST /join, repeated with the same keys on transport failure, at most
    JOIN_ATTEMPTS times within JOIN_BUDGET_S; the last failure is raised."""
    last: PunchdError = ServerUnreachable(f"{token.server}: no answer within "
                                          f"{JOIN_BUDGET_S:.0f} s")
    with trio.move_on_after(JOIN_BUDGET_S):
        for attempt in range(JOIN_ATTEMPTS):
            if attempt:
                await trio.sleep(JOIN_BACKOFF_S[min(attempt, len(JOIN_BACKOFF_S)) - 1])
            try:
                return await client.join(token, name=name, wg_public_key=wg_public_key,
                                         probe_public_key=probe_public_key,
                                         listen_port=listen_port, candidates=candidates)
            except PunchdError as exc:
                if not _retryable(exc):
                    raise
                log.info("join %s: attempt %d failed: %s", token.network, attempt + 1, exc)
                last = exc
    raise last


class Daemon:
    def __init__(self, state_dir: Path, socket_path: Path, backend: WireGuardBackend, *,
                 client_factory: ClientFactory = ServerClient, metrics_listen: Addr | None = None,
                 metrics_socket: socket.socket | None = None, port_mapping: bool = False) -> None:
        """``metrics_listen``: where ``GET /metrics`` is answered (None: nowhere);
        ``metrics_socket``: a listening socket bound there to serve on (tests);
        ``port_mapping``: ask the LAN gateway to map WireGuard's port (NAT-PMP, PCP,
        UPnP). Off unless asked: the program turns it on, tests talk to no gateway."""
        self.state = StateDir(state_dir)
        self.port_mapping = port_mapping
        self.metrics_listen = metrics_listen
        self._metrics_socket = metrics_socket
        self.socket_path = socket_path
        self.backend = backend
        self.client_factory = client_factory
        self.agents: dict[str, NetworkAgent] = {}
        # Networks whose config or keys do not load, or whose agent would not start: the
        # others run; list/status show these with the reason.
        self.broken: dict[str, str] = {}
        # Joins under way: network name -> interface, reserved before the first await so a
        # second join of the same network (or interface) is refused at once.
        self._joining: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state.ensure()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in self.state.list_networks():
                try:
                    await self._start_agent(self.state.load_config(name))
                except PunchdError as exc:
                    log.error("network %s not started: %s", name, exc)
                    self.broken[name] = str(exc)
            await nursery.start(ControlServer(self.socket_path, self.handle).run)
            if self.metrics_listen is not None:
                listener = MetricsListener(self.metrics_listen, self.render_metrics,
                                           sock=self._metrics_socket)
                self._metrics_socket = None
                await nursery.start(listener.run)
            await nursery.start(sdnotify.run_watchdog)
            sdnotify.notify("READY=1")
            log.info("punchd ready: %d network(s), control socket %s, backend %s",
                     len(self.agents), self.socket_path, self.backend.kind)
            task_status.started()

    async def _start_agent(self, config: NetworkConfig) -> NetworkAgent:
        assert self._nursery is not None
        keys = self.state.load_keys(config.name)
        others = {a.config.interface for a in self.agents.values()}
        if config.interface in others:
            raise ConfigError(f"interface {config.interface} is used by another network")
        agent = NetworkAgent(config, keys, self.backend, self.state, exclude_ifnames=others,
                             port_mapping=self.port_mapping)
        self.agents[config.name] = agent
        try:
            await self._nursery.start(agent.run)
        except PunchdError:
            del self.agents[config.name]
            raise
        return agent

    async def render_metrics(self) -> bytes:
        """The Prometheus text of every running network's status, as of now."""
        statuses = [await agent.status() for agent in list(self.agents.values())]
        return metrics.exposition(metrics.families(statuses, broken=len(self.broken)))

    def _agent(self, network: str | None) -> NetworkAgent:
        if network is None:
            if len(self.agents) == 1:
                return next(iter(self.agents.values()))
            raise ControlError("name the network (punchd has joined "
                               f"{len(self.agents)}: {', '.join(sorted(self.agents)) or 'none'})")
        try:
            return self.agents[network]
        except KeyError:
            if network in self.broken:
                raise ControlError(f"network {network!r} is broken: {self.broken[network]}"
                                   ) from None
            raise ControlError(f"not joined to a network named {network!r}") from None

    # -- control requests ------------------------------------------------------------------

    async def handle(self, req: control.Command) -> Any:
        match req:
            case control.Join():
                return await self.cmd_join(req.token, req.name, req.ifname)
            case control.Leave():
                return await self.cmd_leave(req.network)
            case control.List():
                return await self.cmd_list()
            case control.Status():
                return await self.cmd_status(req.network)
            case control.Pull():
                return await self.cmd_pull(req.network)
            case control.Push():
                return await self.cmd_push(req.network)
            case control.Checkin():
                return await self.cmd_checkin(req.network)
            case control.Netcheck():
                return await self.cmd_netcheck(req.network)
            case control.Ping():
                return await self.cmd_ping(req.peer, req.network, req.count, req.icmp)
        raise ControlError(f"unhandled command {type(req).__name__}")  # pragma: no cover

    def _reserve(self, network: str, ifname: str) -> None:
        if network in self.agents:
            raise ControlError(f"already joined to {network!r}")
        if network in self._joining:
            raise ControlError(f"a join of {network!r} is already in progress")
        if network in self.broken:
            raise ControlError(f"network {network!r} is broken ({self.broken[network]}): "
                               f"punchctl leave {network} first")
        if any(a.config.interface == ifname for a in self.agents.values()) \
                or ifname in self._joining.values():
            raise ControlError(f"interface {ifname} is used by another network")
        self._joining[network] = ifname

    async def cmd_join(self, token: str, name: str | None = None,
                       ifname: str | None = None) -> results.JoinResult:
        tok = decode_token(token)
        ifname = ifname or default_ifname(tok.network)
        self._reserve(tok.network, ifname)  # no await before this line
        try:
            return await self._join(tok, name, ifname)
        finally:
            del self._joining[tok.network]

    async def _join(self, tok: JoinToken, name: str | None, ifname: str) -> results.JoinResult:
        try:
            keys = self.state.create_keys(tok.network)
        except BaseException:
            self.state.remove(tok.network)
            raise
        client = self.client_factory(tok.server, keys.signing)
        joined: api.JoinResponse | None = None
        try:
            used_ports = {a.config.listen_port for a in self.agents.values()}
            listen_port = 51820
            while listen_port in used_ports:
                listen_port += 1
            exclude = {a.config.interface for a in self.agents.values()} | {ifname}
            addresses = await hostaddrs.local_addresses(exclude)
            joined = await join_with_retry(
                client, tok, name=name, wg_public_key=public_key(keys.wireguard),
                probe_public_key=b64(bytes(keys.probe.public_key)), listen_port=listen_port,
                candidates=host_candidates(addresses, listen_port),
            )
            config = NetworkConfig(name=tok.network, server=tok.server, interface=ifname,
                                   node_id=joined.node.id, node_name=joined.node.name,
                                   # the server's word: the network's port, unless
                                   # this host needed another one
                                   listen_port=joined.node.listen_port)
            self.state.save_config(config)
            await self._start_agent(config)
        except BaseException as exc:
            # Whatever failed, the server may hold a node nobody has keys for once we
            # remove ours: ask it to forget the node (signed DELETE, best effort), unless
            # it plainly refused the join.
            refused = isinstance(exc, APIError) and not _retryable(exc)
            with trio.CancelScope(shield=True):
                if not refused:
                    await self._forget_node(client, tok.network)
                await client.aclose()
            self.state.remove(tok.network)
            raise
        await client.aclose()
        return results.JoinResult(network=tok.network, node=joined.node.name, interface=ifname,
                                  address=joined.node.ipv4, address6=joined.node.ipv6,
                                  approved=joined.node.approved)

    @staticmethod
    async def _forget_node(client: ServerClient, network: str) -> None:
        with trio.move_on_after(JOIN_CLEANUP_S):
            try:
                await client.leave()
                log.info("join %s abandoned; the server forgot the node", network)
            except PunchdError as exc:
                log.info("join %s abandoned; DELETE /node: %s", network, exc)
            return
        log.info("join %s abandoned; the server did not answer the DELETE", network)

    async def cmd_leave(self, network: str) -> results.LeaveResult:
        if network in self.broken and network not in self.agents:
            # Nothing runs for it; forget its state so it can be joined afresh.
            self.state.remove(network)
            del self.broken[network]
            return results.LeaveResult(left=network)
        agent = self._agent(network)
        await agent.leave()
        del self.agents[network]
        return results.LeaveResult(left=network)

    async def cmd_list(self) -> list[results.NetworkSummary]:
        return [results.NetworkSummary(
                    name=a.name, interface=a.config.interface, node=a.config.node_name,
                    address=host(a.model.node.ipv4) if a.model.node else None,
                    server=a.config.server, server_connected=a.server_connected,
                    peers=len(a.model.peers)) for a in self.agents.values()] + [
                results.NetworkSummary(name=name, broken=reason)
                for name, reason in sorted(self.broken.items())]

    async def cmd_status(self, network: str | None = None) -> results.StatusResult:
        agents = [self._agent(network)] if network else list(self.agents.values())
        return results.StatusResult(
            networks=tuple([await a.status() for a in agents]),
            broken=tuple(results.BrokenNetwork(name=name, error=reason) for name, reason
                         in sorted(self.broken.items()) if network in (None, name)))

    async def cmd_pull(self, network: str | None = None) -> results.PullResult:
        agents = [self._agent(network)] if network else list(self.agents.values())
        for agent in agents:
            await agent.pull()
            await agent.reconcile_once()
        return results.PullResult(pulled=tuple(a.name for a in agents))

    async def cmd_push(self, network: str | None = None) -> results.PushResult:
        agents = [self._agent(network)] if network else list(self.agents.values())
        for agent in agents:
            await agent.publish_candidates(force=True)
        return results.PushResult(pushed=tuple(a.name for a in agents))

    async def cmd_checkin(self, network: str | None = None) -> results.CheckinResult:
        agents = [self._agent(network)] if network else list(self.agents.values())
        return results.CheckinResult(networks=tuple([await a.checkin() for a in agents]))

    async def cmd_netcheck(self, network: str | None = None) -> results.NetcheckResult:
        agent = self._agent(network)
        report = await agent.netcheck()
        mapper = agent.port.mapper
        return results.NetcheckResult(
            network=agent.name, stun_server=agent.model.stun,
            public_endpoint=report.public_endpoint, mapping=report.mapping,
            filtering=report.filtering, port_preserved=report.port_preserved,
            port_deltas=report.port_deltas,
            port_mapping=mapper.protocol if mapper else None,
            mapped_endpoint=mapper.endpoint if mapper else None,
            port_mapping_error=mapper.error if mapper else "port mapping is off")

    @staticmethod
    async def _peer_status(agent: NetworkAgent, peer: str) -> results.PeerStatus:
        for entry in (await agent.status()).peers:
            if entry.name == peer:
                return entry
        raise ControlError(f"no peer named {peer!r} in {agent.name}")

    async def cmd_ping(self, peer: str, network: str | None = None, count: int = 4,
                       icmp: bool = False) -> results.PingResult:
        """Ping a peer: punch probes from WireGuard's port (the default, like
        ``tailscale ping``: each answer shows the address it came back from and whether
        that is the direct path or the relay), or ICMP echo through WireGuard itself."""
        agent = self._agent(network)
        target = (await self._peer_status(agent, peer)).address
        if not icmp:
            return await self._probe_ping(agent, peer, target, count)
        if not target:
            raise ControlError(f"{peer} has no mesh address")
        result = await trio.run_process(
            ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", str(target)],
            check=False, capture_stdout=True, capture_stderr=True)
        echoes = [(int(m[1]), float(m[2])) for m in
                  ICMP_REPLY.finditer(result.stdout.decode(errors="replace"))]
        after = await self._peer_status(agent, peer)
        return results.PingResult(
            peer=peer, address=target, sent=count, mode="icmp",
            replies=tuple(results.PingReply(seq=seq, rtt_ms=rtt, endpoint=after.endpoint,
                                            path=after.path) for seq, rtt in echoes),
            path=after.path, endpoint=after.endpoint)

    @staticmethod
    async def _probe_ping(agent: NetworkAgent, peer: str, target: str | None,
                          count: int) -> results.PingResult:
        node = next((p for p in agent.model.peers.values() if p.name == peer), None)
        punching = agent.port.punching
        if punching is None or node is None or punching.session(node.id) is None:
            raise ControlError(f"no punch session with {peer} (discovery off, or hole "
                               "punching disabled for the network): try --icmp")
        replies = []
        for seq in range(count):
            if seq:
                await trio.sleep(0.2)
            for pong in await punching.ping(node.id):
                endpoint = format_addr(pong.addr)
                replies.append(results.PingReply(
                    seq=seq, rtt_ms=round(pong.rtt * 1000, 3), endpoint=endpoint,
                    path=agent.policy.kind_of(node.id, endpoint)))
        after = await Daemon._peer_status(agent, peer)
        return results.PingResult(peer=peer, address=target, sent=count, mode="probe",
                                  replies=tuple(replies), path=after.path,
                                  endpoint=after.endpoint)


async def run_daemon(state_dir: Path, socket_path: Path, backend_kind: BackendKind,
                     metrics_listen: Addr | None = None, port_mapping: bool = True) -> None:
    backend = open_backend(backend_kind)
    daemon = Daemon(state_dir, socket_path, backend, metrics_listen=metrics_listen,
                    port_mapping=port_mapping)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            async for signum in signals:
                log.info("punchd: %s, shutting down (interfaces and peers stay)",
                         signal.Signals(signum).name)
                sdnotify.notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break
    await backend.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="punchd", description="punchd node daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/punchd"))
    parser.add_argument("--socket", type=Path, default=Path("/run/punchd.sock"))
    parser.add_argument("--wg-backend", default="auto",
                        choices=["auto", "kernel", "userspace", "fake"],
                        help="WireGuard backend (fake: in memory, for tests)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-port-mapping", action="store_true",
                        help="do not ask the LAN gateway to map WireGuard's port "
                             "(NAT-PMP, PCP, UPnP IGD)")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="answer Prometheus's GET /metrics here (e.g. 127.0.0.1:9586; "
                             "default: off)")
    args = parser.parse_args(argv)
    try:
        metrics_listen = parse_addr(args.metrics) if args.metrics else None
    except AddrError as bad:
        print(f"punchd: bad configuration: --metrics: {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # One line per HTTP request drowns what matters; httpx errors still surface as ours.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(run_daemon, args.state_dir, args.socket, args.wg_backend, metrics_listen,
                 not args.no_port_mapping)
    except BaseException as group:  # the top level: one line, never a traceback
        exc = control.main_error(group)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, ConfigError):
            print(f"punchd: bad configuration: {one_line(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, (PunchdError, OSError)):
            print(f"punchd: {one_line(exc)}", file=sys.stderr)
            return 1
        log.debug("punchd crashed", exc_info=group)
        print(f"punchd: internal error ({type(exc).__name__}: {one_line(exc)}); "
              "run with --log-level debug for the traceback", file=sys.stderr)
        return 1
    return 0


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return " ".join(str(exc).split()) or type(exc).__name__

if __name__ == "__main__":
    sys.exit(main())

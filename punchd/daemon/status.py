"""What ``punchctl status`` shows: the control API's answer to ``status``
(:class:`~punchd.daemon.results.NetworkStatus`), built by one pure function from the
facts the agent holds (the server's model, the path
policy, WireGuard's observed device, the punch sessions' and relays' state), so status
says what is, from the same facts the path decisions use. The JSON field names are the
control API's contract (punchctl, bench/ and the lab read them): add fields with
defaults, never rename.
"""

from __future__ import annotations

from collections.abc import Mapping

from punchd.punch.session import PathChanged, PathFound, PathLost, PunchEvent, PunchSession
from punchd.wg.base import WgDeviceState
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr

from .checkin import node_state
from .model import NetworkModel
from .policy import PathPolicy
from .results import DnsStatus, NetworkStatus, PeerStatus, PunchStatus, RelayStatus
from .state import NetworkConfig

__all__ = ["DnsStatus", "NetworkStatus", "PeerStatus", "PunchStatus", "RelayStatus",
           "describe", "network_status", "punch_status", "relay_status"]


def host(cidr: str | None) -> str | None:
    """A mesh address without its prefix length."""
    return cidr.split("/")[0] if cidr else None


def peer_statuses(peers: Mapping[str, api.Node], policy: PathPolicy,
                  device: WgDeviceState | None, now: float, *,
                  punch: Mapping[str, PunchStatus], relay: Mapping[str, RelayStatus]
                  ) -> tuple[PeerStatus, ...]:
    """Every peer as WireGuard and the policy see it, by name."""
    by_key = {p.public_key: p for p in device.peers} if device else {}
    out = []
    for peer in sorted(peers.values(), key=lambda p: p.name):
        wg = by_key.get(peer.wg_public_key)
        hs = wg.last_handshake if wg else None
        out.append(PeerStatus(
            name=peer.name, address=host(peer.ipv4), address6=host(peer.ipv6),
            public_key=peer.wg_public_key, endpoint=wg.endpoint if wg else None,
            path=policy.shown_path(peer.id, wg, now), rtt_ms=policy.shown_rtt_ms(peer.id, wg),
            last_handshake_age_s=round(now - hs, 1) if hs else None,
            rx_bytes=wg.rx_bytes if wg else 0, tx_bytes=wg.tx_bytes if wg else 0,
            in_wireguard=wg is not None, nat=peer.nat, punch=punch.get(peer.id),
            relay=relay.get(peer.id), confirmed=policy.confirmed(peer.id)))
    return tuple(out)


def punch_status(session: PunchSession) -> PunchStatus:
    stats = session.statistics()
    return PunchStatus(
        state=session.state, failure=session.failure, attempts=stats.attempts,
        probes_sent=stats.probes_sent, probes_received=stats.probes_received,
        rejected=stats.rejected, replays=stats.replays, observed=_format(session.observed))


def relay_status(relay: Addr | None, mapped: Addr | None, error: str | None) -> RelayStatus:
    return RelayStatus(endpoint=_format(relay), mapped=_format(mapped), error=error)


def network_status(config: NetworkConfig, model: NetworkModel, policy: PathPolicy,
                   device: WgDeviceState | None, now: float, *, public_key: str,
                   server_connected: bool, nat: api.NatReport | None,
                   resolver: str | None, last_error: str | None,
                   punch: Mapping[str, PunchStatus], relay: Mapping[str, RelayStatus],
                   removed: str | None = None) -> NetworkStatus:
    """One joined network; ``device`` None when WireGuard's interface cannot be read;
    ``removed``: why the server no longer has this node (None while it does)."""
    node, dns = model.node, model.dns
    state, reason = node_state(node, removed, now)
    return NetworkStatus(
        name=config.name, interface=config.interface, node=config.node_name,
        address=host(node.ipv4) if node else None,
        address6=host(node.ipv6) if node else None,
        public_key=public_key, listen_port=device.listen_port if device else None,
        interface_up=device is not None, server=config.server,
        server_connected=server_connected, nat=nat,
        dns=DnsStatus(address=dns.address, domain=dns.domain, resolver=resolver)
        if dns else None,
        last_error=last_error,
        peers=peer_statuses(model.peers, policy, device, now, punch=punch, relay=relay),
        node_state=state, state_reason=reason, expires_at=node.expires_at if node else None)


def describe(event: PunchEvent, peer: str, *, relayed: bool) -> str:
    """A punch session's verdict, as the log says it; ``relayed``: the relay pair won."""
    if isinstance(event, PathFound):
        return (f"{'relayed' if relayed else 'direct'} path to {peer} via "
                f"{format_addr(event.addr)} ({event.rtt * 1000:.1f} ms)")
    if isinstance(event, PathChanged):
        return (f"path to {peer} moves {format_addr(event.old)} -> {format_addr(event.new)} "
                f"({event.rtt * 1000:.1f} ms)")
    if isinstance(event, PathLost):
        return f"path to {peer} via {format_addr(event.addr)} lost; punching again"
    return f"no direct path to {peer}: {event.reason}"


def _format(addr: Addr | None) -> str | None:
    return format_addr(addr) if addr else None

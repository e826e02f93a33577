"""Path decisions and candidates, pure: the value :class:`punchd.daemon.policy.PathPolicy`
decides per peer, this node's host candidates, and the guess from a peer's published
candidates that the policy uses without punching (enough wherever a peer's address is
directly reachable: routed networks, same LAN).

Preference order of the guess: host candidates on a subnet this node is on (same LAN), then
server-reflexive and port-mapped, then any other host candidate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from punchd.errors import AddrError
from punchd.punch.candidates import candidate_priority
from punchd.wire import api
from punchd.wire.addr import format_addr, parse_addr

PathKind = Literal["direct", "relay", "none"]
# Where a decision came from: a guess from the peer's published candidates, a path a
# punch session proved, the relay, or nothing yet because punching is under way.
PathSource = Literal["candidate", "punch", "relay", "pending"]
# WireGuard considers a session dead after 180 s without a handshake (REJECT_AFTER_TIME).
HANDSHAKE_ALIVE_S = 180.0


class PathDecision(msgspec.Struct, frozen=True):
    endpoint: str | None
    kind: PathKind  # what the endpoint is when it works: "direct" or "relay"
    rtt_ms: float | None = None
    source: PathSource = "candidate"


def _split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    try:
        host, port = parse_addr(address)
    except AddrError:
        return None
    return ipaddress.ip_address(host), port


def choose_endpoint(peer: api.Node, local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                    *, local_only: bool = False) -> str | None:
    """The candidate most likely to work, by the preference order above."""
    same_lan: list[tuple[int, str]] = []
    reflexive: list[tuple[int, str]] = []
    other_host: list[tuple[int, str]] = []
    for cand in peer.candidates:
        parsed = _split(cand.address)
        if parsed is None:
            continue
        ip, _ = parsed
        if cand.kind == "host":
            if any(ip in net for net in local_networks):
                same_lan.append((-cand.priority, cand.address))
            elif not local_only:
                other_host.append((-cand.priority, cand.address))
        elif cand.kind in ("srflx", "portmap", "prflx") and not local_only:
            reflexive.append((-cand.priority, cand.address))
    for group in (same_lan, reflexive, other_host):
        if group:
            return sorted(group)[0][1]
    return None


def host_candidates(addresses: Iterable[str], port: int) -> tuple[api.Candidate, ...]:
    """Candidates for this node's own addresses ("ip/len"), RFC 8445 host priority."""
    out = []
    for i, cidr in enumerate(addresses):
        iface = ipaddress.ip_interface(cidr)
        # RFC 8445 §5.1.2.1: type preference 126 for host, local preference by order.
        priority = (126 << 24) + ((65535 - i) << 8) + 255
        out.append(api.Candidate(kind="host", address=format_addr((str(iface.ip), port)),
                                 priority=priority))
    # The server takes at most MAX_CANDIDATES per node: keep the first addresses (the
    # highest local preference) and room for the server-reflexive and port-mapped ones.
    return tuple(out[:api.MAX_CANDIDATES - 2])



def with_portmap(host: tuple[api.Candidate, ...], endpoint: str | None
                 ) -> tuple[api.Candidate, ...]:
    """This node's candidates with the endpoint its gateway mapped (NAT-PMP, PCP, UPnP),
    if any and not one of them."""
    if not endpoint or endpoint in {c.address for c in host}:
        return host
    return (*host, api.Candidate(kind="portmap", address=endpoint,
                                 priority=candidate_priority("portmap")))


def with_srflx(host: tuple[api.Candidate, ...], endpoint: str | None
               ) -> tuple[api.Candidate, ...]:
    """This node's candidates: the host ones, and the public endpoint STUN saw unless it is
    one of them (no NAT in between) or unknown."""
    if not endpoint or endpoint in {c.address for c in host}:
        return host
    # RFC 8445 §5.1.2.1: server-reflexive type preference 100.
    return (*host, api.Candidate(kind="srflx", address=endpoint,
                                 priority=(100 << 24) + (65535 << 8) + 255))

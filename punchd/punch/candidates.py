"""Candidates and candidate pairs, prioritised as ICE does (RFC 8445 §5.1.2, §6.1.2).

The Candidate Struct itself is the API's (:class:`punchd.wire.api.Candidate`: kind,
``"ip:port"`` address, priority) so the server, discovery and punching share one schema;
the NAT description is :class:`punchd.wire.api.NatReport`. This module adds the
priority arithmetic and pair formation; addresses are parsed by :mod:`punchd.wire.addr`.

All of a node's probes leave from one socket (WireGuard's port), so every local
candidate has the same base. As RFC 8445 §6.1.2.4 prescribes, a pair whose local
candidate is server-reflexive is replaced by its base, and pairs that then repeat a
remote address are pruned, keeping the highest priority: in the end a pair is one
remote address, ordered by the ICE pair priority.
"""

from __future__ import annotations

import ipaddress

from msgspec import Struct

from punchd.errors import AddrError
from punchd.wire.addr import Addr, format_addr, parse_addr
from punchd.wire.api import Candidate, CandidateKind, NatReport

__all__ = [
    "MAX_PAIRS",
    "TYPE_PREFERENCE",
    "Candidate",
    "CandidatePair",
    "NatReport",
    "candidate",
    "candidate_priority",
    "form_pairs",
    "pair_priority",
]


# RFC 8445 §5.1.2.2 recommended type preferences. "portmap" (NAT-PMP/PCP/UPnP) and
# "predicted" (port prediction) are not ICE types. A mapped port ranks above the
# server-reflexive address: it takes a first packet from any peer, which the srflx of
# a filtering NAT does not (§5.1.2.2 wants each type its own preference). A predicted
# port ranks below both: it is a guess.
TYPE_PREFERENCE: dict[str, int] = {
    "host": 126, "prflx": 110, "portmap": 105, "srflx": 100, "predicted": 50, "relay": 0,
}
# RFC 8445 §6.1.2.5: limit the checklist. 100 is the RFC's suggested default.
MAX_PAIRS = 100
ONE_COMPONENT = 1  # WireGuard is a single UDP flow: ICE component 1


def candidate_priority(kind: str, local_preference: int = 65535,
                       component: int = ONE_COMPONENT) -> int:
    """RFC 8445 §5.1.2.1: 2^24·type + 2^8·local + (256 - component)."""
    if not 0 <= local_preference <= 65535 or not 1 <= component <= 256:
        raise ValueError("local preference 0..65535, component 1..256")
    return (TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: 2^32·MIN(G,D) + 2·MAX(G,D) + (G>D?1:0)."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


def candidate(kind: CandidateKind, addr: Addr, local_preference: int = 65535) -> Candidate:
    """A Candidate with its RFC 8445 priority filled in."""
    return Candidate(kind=kind, address=format_addr(addr),
                     priority=candidate_priority(kind, local_preference))


class CandidatePair(Struct, frozen=True):
    remote: Addr
    kind: CandidateKind  # the remote candidate's kind
    priority: int


def _prio(c: Candidate) -> int:
    return c.priority or candidate_priority(c.kind)


def form_pairs(local: list[Candidate], remote: list[Candidate], *,
               controlling: bool, limit: int = MAX_PAIRS) -> list[CandidatePair]:
    """Pairs by descending priority, one per remote address, at most ``limit``.

    Relay candidates are not probed (the relay is the fallback, not a pair to punch);
    a remote address family we have no local candidate of is skipped (§6.1.2.2).
    """
    families = {ipaddress.ip_address(parse_addr(c.address)[0]).version
                for c in local if c.kind != "relay"}
    # §6.1.2.4: a server-reflexive local candidate is replaced by its base, a host one
    local_best = max((_prio(c) for c in local if c.kind == "host"),
                     default=candidate_priority("host"))
    best: dict[Addr, CandidatePair] = {}
    for rc in remote:
        if rc.kind == "relay":
            continue
        try:
            addr = parse_addr(rc.address)
        except AddrError:
            continue
        if families and ipaddress.ip_address(addr[0]).version not in families:
            continue
        g, d = (local_best, _prio(rc)) if controlling else (_prio(rc), local_best)
        pair = CandidatePair(addr, rc.kind, pair_priority(g, d))
        if addr not in best or best[addr].priority < pair.priority:
            best[addr] = pair
    return sorted(best.values(), key=lambda p: (-p.priority, p.remote))[:limit]


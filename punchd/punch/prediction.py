"""Port prediction: whether hole punching can work between two NATs, and where to spray.

Pure functions over the two NAT reports discovery publishes (no state, no clock); the
punch session (:mod:`punchd.punch.session`) asks them once per attempt.

A NAT whose mapping is endpoint-independent (RFC 4787 §4.1) sends every peer's
datagrams from one public port: the peer's pings reach us from its server-reflexive
address, and ours reach it there. A NAT that maps per destination (address-dependent
or address-and-port-dependent, §4.1) opens a new port toward us, one we have not seen.
Whether its pings get in depends on our filtering (§5): endpoint-independent or
address-dependent filtering lets them in by themselves (they appear as a
peer-reflexive pair); address-and-port-dependent filtering drops them unless we have
sent to that very port first, so we guess it: the peer's server-reflexive port plus
multiples of the port delta discovery measured (§4.2.1: sequential allocation steps by
a constant). Random allocation cannot be guessed; two NATs that both map per
destination meet only when both step predictably and one maps per address (all of its
guesses leave from one port).
"""

from __future__ import annotations

from collections.abc import Iterable

from punchd.wire.api import Candidate, NatReport

from ..errors import AddrError
from ..wire.addr import Addr, parse_addr

__all__ = [
    "MAX_PORT_DELTA",
    "SPRAY_BUDGET",
    "SPRAY_BURST",
    "assess",
    "predictable_delta",
    "predicted_ports",
]

# Predicted ports per attempt: a NAT that allocates sequentially (RFC 4787 §4.2.1) has
# handed out a few ports to other flows since discovery measured it; 64 covers that
# with one ~100-byte ping each, and bounds what a wrong guess costs.
SPRAY_BUDGET = 64
# Predicted ports started per Ta tick (RFC 8445 §14.2 paces one check per Ta; guesses
# are cheap and only useful early, before the peer's NAT moves on, so a burst).
SPRAY_BURST = 16
# Larger or inconsistent deltas are not a sequential allocator (§4.2.1) but a random
# one, or a busy NAT: not predictable.
MAX_PORT_DELTA = 64

# RFC 4787 §4.1: the mappings that are not endpoint-independent.
_DEPENDENT = ("address-dependent", "address-and-port-dependent")


def assess(local: NatReport | None, peer: NatReport | None) -> tuple[int | None, str | None]:
    """(port delta to spray with, or None; reason it cannot work, or None).

    Symmetric in its verdict: two sessions given each other's reports agree on failure.
    """
    local_dep = local is not None and local.mapping in _DEPENDENT
    peer_dep = peer is not None and peer.mapping in _DEPENDENT
    if local and peer and local_dep and peer_dep:
        # Both guess. That can only meet when one side's guesses all leave from one port
        # (address-dependent mapping: one port per peer IP) and both step predictably.
        both_predictable = predictable_delta(local) and predictable_delta(peer)
        if both_predictable and "address-dependent" in (local.mapping, peer.mapping):
            return predictable_delta(peer), None
        return None, "both NATs map per destination (symmetric/symmetric): needs the relay"
    for dep, other, who in ((peer, local, "peer"), (local, peer, "local")):
        if dep is None or dep.mapping not in _DEPENDENT:
            continue
        if other is None:  # our own NAT not known yet: guessing is cheap and bounded
            return (predictable_delta(dep) if who == "peer" else None), None
        if other.filtering != "address-and-port-dependent":
            return None, None  # its pings get in by themselves (prflx)
        delta = predictable_delta(dep)
        if delta is None:
            return None, (f"{who} NAT maps per destination with unpredictable ports and "
                          "the other filters per address and port: needs the relay")
        return (delta if who == "peer" else None), None
    return None, None


def predictable_delta(nat: NatReport) -> int | None:
    """The constant step of a sequential allocator (RFC 4787 §4.2.1), else None."""
    # Zero deltas are a mapping reused (address-dependent mapping, same IP): no step.
    deltas = {d for d in nat.port_deltas if d}
    if len(deltas) != 1:
        return None
    (delta,) = deltas
    return delta if 0 < abs(delta) <= MAX_PORT_DELTA else None


def predicted_ports(peer_candidates: Iterable[Candidate], peer_nat: NatReport | None,
                    delta: int, taken: Iterable[Addr] = ()) -> list[tuple[Addr, int]]:
    """The ports to spray: ``(address, step)`` with step k = 1, 2, … from each of the
    peer's public addresses (server-reflexive or port-mapped candidates, and the NAT
    report's endpoint), at most :data:`SPRAY_BUDGET`, skipping ``taken`` addresses.
    Nearer steps rank higher: the peer's next mappings come next."""
    public: list[Addr] = []
    for c in peer_candidates:
        if c.kind in ("srflx", "portmap"):
            try:
                public.append(parse_addr(c.address))
            except AddrError:
                continue
    if peer_nat is not None and peer_nat.public_endpoint:
        try:
            public.append(parse_addr(peer_nat.public_endpoint))
        except AddrError:
            pass
    seen = set(taken)
    out: list[tuple[Addr, int]] = []
    for ip, port in dict.fromkeys(public):
        for k in range(1, SPRAY_BUDGET + 1):
            if len(out) >= SPRAY_BUDGET:
                return out
            guess = (ip, port + k * delta)
            if not 1 <= guess[1] <= 65535 or guess in seen:
                continue
            seen.add(guess)
            out.append((guess, k))
    return out

"""Why a pair of nodes is direct or relayed, in words: ``punchctl why PEER``.

A pure function over what both sides published (their NAT reports, RFC 4787 terms, and
whether their gateway mapped a port for them) and, when there is one, the local punch
session's pairs. It follows the same rules the punch session acts on
(:func:`punchd.punch.prediction.assess`) and adds the one assess cannot see, port
mapping: a mapped port takes a first packet from anyone, so either side having one
makes the pair direct whatever the NATs do.

The verdicts:

* ``direct``: some technique reaches the peer directly (the reason says which);
* ``relay``: no technique can; the reason names both NATs' behaviour and ``would_help``
  what would change that;
* ``unknown``: a side has not measured its NAT yet.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from punchd.wire.api import NatReport

from .prediction import predictable_delta

Verdict = Literal["direct", "relay", "unknown"]
_DEPENDENT = ("address-dependent", "address-and-port-dependent")

PORT_MAPPING_HELPS = "port mapping (NAT-PMP, PCP or UPnP) on either side's gateway"


class Side(msgspec.Struct, frozen=True):
    """One end of the pair, as the other sees it."""

    name: str
    nat: NatReport | None
    port_mapped: bool = False  # its gateway mapped WireGuard's port (a portmap candidate)


class Explanation(msgspec.Struct, frozen=True):
    verdict: Verdict
    reason: str
    would_help: tuple[str, ...] = ()


def _mapping(side: Side) -> str:
    assert side.nat is not None and side.nat.mapping is not None
    if side.nat.mapping == "endpoint-independent":
        return f"{side.name}'s NAT keeps one public port for all destinations"
    steps = predictable_delta(side.nat)
    how = f"in steps of {steps}" if steps else "with unpredictable ports"
    per = "address" if side.nat.mapping == "address-dependent" else "address and port"
    return f"{side.name}'s NAT maps per destination {per} {how}"


def _filtering(side: Side) -> str:
    assert side.nat is not None
    return {
        "endpoint-independent": f"{side.name}'s lets anyone in once it has sent",
        "address-dependent": f"{side.name}'s filters by address",
        "address-and-port-dependent": f"{side.name}'s filters by address and port",
        None: f"{side.name}'s filtering is not known",
    }[side.nat.filtering]


def _open(side: Side) -> bool:
    """Reachable by a first packet from anyone: no NAT or a full cone (RFC 4787: both
    mapping and filtering endpoint-independent)."""
    nat = side.nat
    return nat is not None and nat.mapping == "endpoint-independent" \
        and nat.filtering == "endpoint-independent"


def explain(local: Side, peer: Side) -> Explanation:
    """Whether ``local`` and ``peer`` can have a direct path, and why (symmetric in its
    verdict: both sides' ``punchctl why`` agree)."""
    for side in (local, peer):
        if side.port_mapped:
            return Explanation("direct", f"{side.name}'s gateway maps a port for it "
                               "(NAT-PMP/PCP/UPnP): any peer's first packet gets in")
    for side in (local, peer):
        if side.nat is None or side.nat.mapping is None:
            return Explanation("unknown", f"{side.name} has not measured its NAT yet "
                               "(punchctl netcheck on it)")
    for side in (local, peer):
        if _open(side):
            return Explanation("direct", f"{side.name} is reachable from anywhere (no NAT, "
                               "or a NAT that maps and filters independently of the "
                               "destination)")
    dependent = [s for s in (local, peer) if s.nat and s.nat.mapping in _DEPENDENT]
    if not dependent:
        return Explanation("direct", "both NATs keep one public port for all destinations: "
                           "simultaneous open meets at the server-reflexive addresses")
    if len(dependent) == 2:
        a, b = dependent
        assert a.nat is not None and b.nat is not None
        steps = predictable_delta(a.nat) and predictable_delta(b.nat)
        if steps and "address-dependent" in (a.nat.mapping, b.nat.mapping):
            return Explanation("direct", f"{_mapping(a)} and {_mapping(b)}: port "
                               "prediction can meet (one side's guesses leave from one port)")
        return Explanation("relay", f"{_mapping(a)} and {_mapping(b)}: neither side can "
                           "know the port the other's NAT will open, so probes never meet",
                           (PORT_MAPPING_HELPS,
                            "an endpoint-independent mapping on either NAT "
                            "(often called full cone or EIM in router settings)"))
    (dep,) = dependent
    other = peer if dep is local else local
    assert dep.nat is not None and other.nat is not None
    if other.nat.filtering != "address-and-port-dependent":
        return Explanation("direct", f"{_mapping(dep)}, but {_filtering(other)}: its "
                           "probes get in from their new port (peer-reflexive)")
    if predictable_delta(dep.nat):
        return Explanation("direct", f"{_mapping(dep)} and {_filtering(other)}: port "
                           "prediction opens the ports it will use")
    return Explanation("relay", f"{_mapping(dep)} and {other.name}'s NAT filters by "
                       "address and port: no direct path without port mapping on either "
                       "gateway", (PORT_MAPPING_HELPS,
                                   f"an endpoint-independent mapping on {dep.name}'s NAT",
                                   f"address-only filtering on {other.name}'s NAT"))

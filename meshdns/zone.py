"""The mesh's zones: what meshdns answers, built from the signal server's store.

Zone per network: ``<network>.<domain>``; ``<node>.<network>.<domain>`` has the
node's A/AAAA; custom A/AAAA/CNAME/TXT records are relative to the network's zone
(``@`` is the apex). SOA and NS live at every network apex and at the domain apex.
Lookups are authoritative: NXDOMAIN for a name that does not exist, NODATA (empty
NOERROR with the SOA in authority, RFC 2308) for a name without that type, and
REFUSED for names outside the served domain — meshdns never recurses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from dnslib import AAAA, CNAME, NS, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel

from punchd.errors import Invalid

TTL = 30  # short: nodes join, leave and get renumbered
NEGATIVE_TTL = 30
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class NodeRecord(msgspec.Struct, frozen=True):
    name: str
    ipv4: str | None = None
    ipv6: str | None = None


class CustomRecord(msgspec.Struct, frozen=True):
    name: str  # relative to the network's zone; "@" = apex
    rtype: str  # A, AAAA, CNAME, TXT
    value: str


class NetworkZone(msgspec.Struct, frozen=True):
    network: str
    nodes: tuple[NodeRecord, ...] = ()
    records: tuple[CustomRecord, ...] = ()


def validate_record(rtype: str, name: str, value: str) -> CustomRecord:
    rtype = rtype.upper()
    name = name.lower().rstrip(".")
    if name != "@" and not all(_LABEL.match(label) for label in name.split(".")):
        raise Invalid(f"{name!r} is not a DNS name relative to the zone", "name")
    if rtype == "A":
        try:
            ipaddress.IPv4Address(value)
        except ValueError as exc:
            raise Invalid(f"{value!r} is not an IPv4 address", "value") from exc
    elif rtype == "AAAA":
        try:
            ipaddress.IPv6Address(value)
        except ValueError as exc:
            raise Invalid(f"{value!r} is not an IPv6 address", "value") from exc
    elif rtype == "CNAME":
        target = value.rstrip(".")
        if not target or not all(_LABEL.match(x) for x in target.lower().split(".")):
            raise Invalid(f"{value!r} is not a host name", "value")
    elif rtype == "TXT":
        if len(value.encode()) > 1024:
            raise Invalid("TXT value longer than 1024 bytes", "value")
    else:
        raise Invalid(f"record type {rtype!r} is not one of A, AAAA, CNAME, TXT", "rtype")
    return CustomRecord(name=name, rtype=rtype, value=value)


@dataclass(frozen=True)
class Answer:
    rcode: int
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    aa: bool = True


class ZoneSet:
    """Immutable lookup structure; rebuilt whole on every change and swapped in."""

    def __init__(self, domain: str, zones: Sequence[NetworkZone], *, serial: int = 1) -> None:
        self.domain = DNSLabel(domain.strip(".").lower())
        self.serial = serial
        # name (lowercased DNSLabel) -> rtype -> list of RR data
        self.names: dict[DNSLabel, dict[int, list[object]]] = {}
        self.apexes: list[DNSLabel] = [self.domain]
        self._add_apex(self.domain)
        for zone in zones:
            apex = self.domain.add(zone.network.lower())
            self.apexes.append(apex)
            self._add_apex(apex)
            for node in zone.nodes:
                owner = apex.add(node.name.lower())
                if node.ipv4:
                    self._add(owner, QTYPE.A, A(node.ipv4.split("/")[0]))
                if node.ipv6:
                    self._add(owner, QTYPE.AAAA, AAAA(node.ipv6.split("/")[0]))
            for rec in zone.records:
                owner = apex if rec.name == "@" else apex.add(rec.name)
                data: object
                if rec.rtype == "A":
                    data = A(rec.value)
                elif rec.rtype == "AAAA":
                    data = AAAA(rec.value)
                elif rec.rtype == "CNAME":
                    data = CNAME(rec.value.rstrip(".") + ".")
                else:
                    data = TXT(rec.value)
                self._add(owner, getattr(QTYPE, rec.rtype), data)
        # Empty non-terminals exist (NODATA, not NXDOMAIN: RFC 8020).
        self.empty_nonterminals: set[DNSLabel] = set()
        for owner in self.names:
            parts = owner.label
            for i in range(1, len(parts)):
                parent = DNSLabel(parts[i:])
                if parent not in self.names and parent.matchSuffix(self.domain):
                    self.empty_nonterminals.add(parent)

    def _add(self, owner: DNSLabel, rtype: int, data: object) -> None:
        self.names.setdefault(owner, {}).setdefault(rtype, []).append(data)

    def _add_apex(self, apex: DNSLabel) -> None:
        ns = self.domain.add("ns")
        self._add(apex, QTYPE.SOA, SOA(ns, self.domain.add("hostmaster"),
                                       (self.serial, 3600, 600, 86400, NEGATIVE_TTL)))
        self._add(apex, QTYPE.NS, NS(ns))

    def _apex_of(self, qname: DNSLabel) -> DNSLabel | None:
        best = None
        for apex in self.apexes:
            if qname.matchSuffix(apex) and (best is None or len(apex.label) > len(best.label)):
                best = apex
        return best

    def _soa(self, apex: DNSLabel) -> RR:
        soa = self.names[apex][QTYPE.SOA][0]
        return RR(apex, QTYPE.SOA, rdata=soa, ttl=NEGATIVE_TTL)

    def lookup(self, qname: DNSLabel, qtype: int) -> Answer:
        """``qname`` as asked (its case is echoed in the answer owner names)."""
        key = DNSLabel(str(qname).lower())
        apex = self._apex_of(key)
        if apex is None:
            return Answer(RCODE.REFUSED, aa=False)
        answers: list[RR] = []
        owner_asked = qname
        for _ in range(8):  # CNAME chains inside the zone, bounded
            rrsets = self.names.get(key)
            if rrsets is None:
                exists = key in self.empty_nonterminals
                rcode = RCODE.NXDOMAIN if not answers and not exists else RCODE.NOERROR
                return Answer(rcode, answers, [self._soa(apex)])
            if qtype in rrsets or qtype == QTYPE.ANY:
                for rtype, datas in rrsets.items():
                    if qtype in (rtype, QTYPE.ANY):
                        answers += [RR(owner_asked, rtype, rdata=d, ttl=TTL) for d in datas]
                return Answer(RCODE.NOERROR, answers)
            if QTYPE.CNAME in rrsets:
                cname = rrsets[QTYPE.CNAME][0]
                answers.append(RR(owner_asked, QTYPE.CNAME, rdata=cname, ttl=TTL))
                target = DNSLabel(str(cname.label).lower())  # type: ignore[attr-defined]
                target_apex = self._apex_of(target)
                if target_apex is None:
                    return Answer(RCODE.NOERROR, answers)
                key, owner_asked, apex = target, target, target_apex
                continue
            return Answer(RCODE.NOERROR, answers, [self._soa(apex)])
        return Answer(RCODE.SERVFAIL, answers)

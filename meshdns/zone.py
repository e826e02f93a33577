"""The mesh's zones: what meshdns answers, built from the signal server's store.

Zone per network: ``<network>.<domain>``; ``<node>.<network>.<domain>`` has the
node's A/AAAA; custom A/AAAA/CNAME/TXT records are relative to the network's zone
(``@`` is the apex). SOA and NS live at every network apex and at the domain apex;
the NS target resolves (``ns.<domain>`` has the server's address, or the NS is the
server's own host name). Lookups are authoritative: NXDOMAIN for a name that does
not exist, NODATA (empty NOERROR with the SOA in authority, RFC 2308) for a name
without that type, and REFUSED for names outside the served domain — meshdns never
recurses.

Two gates keep one bad record from taking DNS down. :func:`validate_record` accepts
exactly what the wire can carry, so the API refuses the rest with a reason. The zone
builder encodes every record once while building and skips (and logs, one line) any
it cannot encode — a store written by an older version may hold such records, and
the rest of the zone must still be served.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
from dnslib import AAAA, CNAME, NS, QTYPE, RCODE, RR, SOA, TXT, A, DNSBuffer, DNSLabel

from punchd.errors import Invalid

log = logging.getLogger("meshdns")

TTL = 30  # short: nodes join, leave and get renumbered
NEGATIVE_TTL = 30
# Node names are host names (RFC 1123 §2.1: letters, digits, hyphen).
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Custom record names and CNAME targets are DNS names: service labels such as
# ``_dmarc`` (RFC 7489 §6.1) and ``_sip._tcp`` (RFC 2782) need the underscore
# (RFC 2181 §11: any octet is legal in a label; this is the sane subset).
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# RFC 1035 §3.1: 255 octets on the wire, i.e. 253 characters without the root dot.
MAX_NAME = 253
# RFC 1035 §3.3.14: a TXT is a sequence of <character-string>s of at most 255 octets.
TXT_CHUNK = 255
# Total TXT bytes: a 4096-bit DKIM key (~800 bytes) fits; the answer still fits the
# 1232-byte EDNS UDP size for one record.
TXT_MAX = 1024
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


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


def is_dns_name(name: str, label: re.Pattern[str] = _DNS_LABEL) -> bool:
    """A relative or absolute (no trailing dot) name every label of which matches."""
    return 0 < len(name) <= MAX_NAME and all(label.match(x) for x in name.split("."))


def txt_strings(value: str) -> list[bytes]:
    """A TXT value as its wire <character-string>s: a long value is split into 255-byte
    strings, which a reader concatenates (RFC 7208 §3.3 for SPF, RFC 6376 §3.6.2.2 DKIM)."""
    data = value.encode("utf-8")
    return [data[i:i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]


def validate_record(rtype: str, name: str, value: str) -> CustomRecord:
    """A custom record as the wire can carry it, with its value in canonical form."""
    rtype = rtype.upper()
    name = name.lower().rstrip(".")
    if name != "@" and not is_dns_name(name):
        raise Invalid(f"{name!r} is not a DNS name relative to the zone", "name")
    if rtype == "A":
        try:
            value = str(ipaddress.IPv4Address(value))
        except ValueError as exc:
            raise Invalid(f"{value!r} is not an IPv4 address", "value") from exc
    elif rtype == "AAAA":
        try:
            addr = ipaddress.IPv6Address(value)
        except ValueError as exc:
            raise Invalid(f"{value!r} is not an IPv6 address", "value") from exc
        if addr.scope_id is not None:
            # A scope id (fe80::1%eth0) names an interface of one host: not an address
            # another host can use, and AAAA has no room for it (RFC 3596 §2.2: 16 octets).
            raise Invalid(f"{value!r} has a scope id, which DNS cannot carry", "value")
        if addr in _IPV4_MAPPED:
            raise Invalid(f"{value!r} is an IPv4-mapped address: use an A record", "value")
        value = str(addr)
    elif rtype == "CNAME":
        if name == "@":
            # The apex holds SOA and NS, and a CNAME allows no other data (RFC 1034 §3.6.2).
            raise Invalid("a CNAME cannot be at the zone apex", "name")
        value = value.rstrip(".").lower()
        if not is_dns_name(value):
            raise Invalid(f"{value!r} is not a DNS name", "value")
    elif rtype == "TXT":
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate from JSON "\ud800"
            raise Invalid("TXT value is not valid Unicode text", "value") from exc
        if size > TXT_MAX:
            raise Invalid(f"TXT value longer than {TXT_MAX} bytes", "value")
    else:
        raise Invalid(f"record type {rtype!r} is not one of A, AAAA, CNAME, TXT", "rtype")
    return CustomRecord(name=name, rtype=rtype, value=value)


@dataclass(frozen=True)
class Answer:
    rcode: int
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    aa: bool = True
    additional: list[RR] = field(default_factory=list)


def _rdata(rtype: str, value: str) -> object:
    if rtype == "A":
        return A(tuple(ipaddress.IPv4Address(value).packed))
    if rtype == "AAAA":
        # Packed bytes: dnslib's own text parser cannot read every valid form.
        return AAAA(tuple(ipaddress.IPv6Address(value).packed))
    if rtype == "CNAME":
        return CNAME(DNSLabel(value.rstrip(".") + "."))
    if rtype == "TXT":
        return TXT(txt_strings(value))
    raise ValueError(f"type {rtype!r} is not served")


class ZoneSet:
    """Immutable lookup structure; rebuilt whole on every change and swapped in.

    ``nameserver`` is where this server is reached: an IP address becomes the A or
    AAAA of ``ns.<domain>`` (the NS target, so it resolves: RFC 1034 §4.2.2 glue),
    a host name becomes the NS target itself. ``skipped`` lists the records left out
    because they cannot be encoded (each also logged, one line).
    """

    def __init__(self, domain: str, zones: Sequence[NetworkZone], *, serial: int = 1,
                 nameserver: str | None = None, zone_serials: Mapping[str, int] | None = None,
                 apex_serial: int | None = None) -> None:
        """``serial`` is every zone's SOA serial unless ``zone_serials`` (network name ->
        serial) or ``apex_serial`` (the domain apex's) says otherwise: a zone that did
        not change keeps its serial, so its secondaries have nothing to fetch."""
        self.domain = DNSLabel(domain.strip(".").lower())
        self.serial = serial
        # name (lowercased DNSLabel) -> rtype -> list of RR data
        self.names: dict[DNSLabel, dict[int, list[object]]] = {}
        self.skipped: list[str] = []
        self.ns_name = self.domain.add("ns")
        self._add_nameserver(nameserver)
        self.apexes: list[DNSLabel] = [self.domain]
        self._add_apex(self.domain, serial if apex_serial is None else apex_serial)
        zone_serials = zone_serials or {}
        cname_origin: dict[DNSLabel, tuple[str, str]] = {}
        for zone in zones:
            network = zone.network.lower()
            if not _HOST_LABEL.match(network):
                self._skip(zone.network, "@", "zone", "not a host name label")
                continue
            apex = self.domain.add(network)
            self.apexes.append(apex)
            self._add_apex(apex, zone_serials.get(network, serial))
            for node in zone.nodes:
                name = node.name.lower()
                if not _HOST_LABEL.match(name):  # node names stay host names
                    self._skip(zone.network, node.name, "A/AAAA", "node name is not a host name")
                    continue
                if node.ipv4:
                    self._add_record(zone.network, name, "A", node.ipv4.split("/")[0], apex)
                if node.ipv6:
                    self._add_record(zone.network, name, "AAAA", node.ipv6.split("/")[0], apex)
            for rec in zone.records:
                try:  # what the API would refuse today is not served either
                    rec = validate_record(rec.rtype, rec.name, rec.value)
                except Invalid as exc:
                    self._skip(zone.network, rec.name, rec.rtype, exc.reason)
                    continue
                owner = self._add_record(zone.network, rec.name, rec.rtype, rec.value, apex)
                if owner is not None and rec.rtype == "CNAME":
                    cname_origin.setdefault(owner, (zone.network, rec.name))
        self._drop_cname_conflicts(cname_origin)
        # Empty non-terminals exist (NODATA, not NXDOMAIN: RFC 8020).
        self.empty_nonterminals: set[DNSLabel] = set()
        for owner in self.names:
            parts = owner.label
            for i in range(1, len(parts)):
                parent = DNSLabel(parts[i:])
                if parent not in self.names and parent.matchSuffix(self.domain):
                    self.empty_nonterminals.add(parent)
        self._glue = [RR(self.ns_name, rtype, rdata=d, ttl=TTL)
                      for rtype, datas in self.names.get(self.ns_name, {}).items()
                      if rtype in (QTYPE.A, QTYPE.AAAA) for d in datas]

    def _skip(self, network: str, name: str, rtype: str, reason: str) -> None:
        line = f"network {network!r} name {name!r} type {rtype}: {reason}"
        self.skipped.append(line)
        log.warning("meshdns: skipped a record it cannot serve: %s", line)

    def _add_record(self, network: str, name: str, rtype: str, value: str,
                    apex: DNSLabel) -> DNSLabel | None:
        """Encode one record as it will go on the wire; skip it if that fails."""
        try:
            owner = apex if name == "@" else apex.add(name.lower())
            data = _rdata(rtype, value)
            qtype = getattr(QTYPE, rtype)
            RR(owner, qtype, rdata=data, ttl=TTL).pack(DNSBuffer())
        # dnslib raises DNSError, DNSLabelError, UnicodeError (idna), ValueError,
        # struct.error, ...: whatever it is, this record is not served, the rest is.
        except Exception as exc:
            self._skip(network, name, rtype, str(exc)[:120] or type(exc).__name__)
            return None
        self._add(owner, qtype, data)
        return owner

    def _drop_cname_conflicts(self, origin: dict[DNSLabel, tuple[str, str]]) -> None:
        """A CNAME allows no other data at its name, nor a second CNAME (RFC 1034 §3.6.2,
        RFC 2181 §10.1); an old store may hold such a pair, and the other data wins."""
        for owner, (network, name) in origin.items():
            rrsets = self.names[owner]
            if len(rrsets) > 1:
                del rrsets[QTYPE.CNAME]
                self._skip(network, name, "CNAME", "other data at that name")
            elif len(rrsets[QTYPE.CNAME]) > 1:
                del rrsets[QTYPE.CNAME][1:]
                self._skip(network, name, "CNAME", "a second CNAME at that name")

    def _add(self, owner: DNSLabel, rtype: int, data: object) -> None:
        self.names.setdefault(owner, {}).setdefault(rtype, []).append(data)

    def _add_nameserver(self, nameserver: str | None) -> None:
        if not nameserver:
            return
        host = nameserver.strip("[]").split("%")[0]
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower().rstrip(".")
            if is_dns_name(name):
                # A host name resolves where it lives; the NS (and SOA MNAME) name it.
                self.ns_name = DNSLabel(name)
            else:
                self._skip("", "ns", "A", f"nameserver {nameserver!r} is neither address nor name")
            return
        if addr.is_unspecified:
            return
        self._add(self.ns_name, QTYPE.AAAA if addr.version == 6 else QTYPE.A,
                  _rdata("AAAA" if addr.version == 6 else "A", str(addr)))

    def _add_apex(self, apex: DNSLabel, serial: int) -> None:
        rrsets = self.names.setdefault(apex, {})
        rrsets[QTYPE.SOA] = [SOA(self.ns_name, self.domain.add("hostmaster"),
                                 (serial, 3600, 600, 86400, NEGATIVE_TTL))]
        rrsets[QTYPE.NS] = [NS(self.ns_name)]

    def serial_of(self, apex: DNSLabel) -> int:
        """The SOA serial of the zone at ``apex``."""
        return int(self.names[apex][QTYPE.SOA][0].times[0])  # type: ignore[attr-defined]

    def apex_of(self, qname: DNSLabel) -> DNSLabel | None:
        """The closest enclosing apex: which zone ``qname`` (lowercase) belongs to."""
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
        apex = self.apex_of(key)
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
                glue = self._glue if qtype == QTYPE.NS else []
                return Answer(RCODE.NOERROR, answers, additional=glue)
            if QTYPE.CNAME in rrsets:
                cname = rrsets[QTYPE.CNAME][0]
                answers.append(RR(owner_asked, QTYPE.CNAME, rdata=cname, ttl=TTL))
                target = DNSLabel(str(cname.label).lower())  # type: ignore[attr-defined]
                target_apex = self.apex_of(target)
                if target_apex is None:
                    return Answer(RCODE.NOERROR, answers)
                key, owner_asked, apex = target, target, target_apex
                continue
            return Answer(RCODE.NOERROR, answers, [self._soa(apex)])
        return Answer(RCODE.SERVFAIL, answers)

"""Zone transfers: meshdns as a hidden primary for real secondaries (NSD, BIND, Knot).

Theory of operation. :class:`Transfers` is sans-IO: a query's bytes, where it came
from and over what, in; the answer's messages (or None: "not mine, answer it as a
plain query") out. It handles three kinds of query:

- AXFR (RFC 5936) over TCP: the zone's SOA, every RR of the zone, the SOA again,
  split into messages of at most ``MESSAGE_BUDGET`` bytes (§2.2: a transfer may span
  many). Only for an apex meshdns serves (else NOTAUTH, §2.2.1), only to a source in
  the allow-list (default loopback) and, when a key is configured, only with a valid
  TSIG; everyone else is REFUSED. Over UDP it is REFUSED (§4.2: AXFR over UDP is not
  defined).
- IXFR (RFC 1995) over TCP: the differences from the client's serial to ours, from
  the last ``HISTORY`` versions kept; a serial we no longer hold (or one from before
  a restart) gets the whole zone in AXFR form (§4 allows it), a serial as new as ours
  gets our SOA alone (§2). Over UDP, our SOA alone: "transfer over TCP" (§2).
- Any TSIG-signed query (a secondary checks our SOA signed): verified, answered by
  the resolver, and the answer signed. A bad MAC, unknown key or skewed clock gets
  NOTAUTH with the TSIG error (RFC 8945 §5.2).

Each zone is the names whose closest apex is that zone's: ``mesh`` holds ``ns.mesh``,
and ``office.mesh`` (its own zone) holds its nodes and records.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from dnslib import (
    QTYPE,
    RCODE,
    RR,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from punchd.errors import TsigError

from . import tsig
from .zone import TTL, ZoneSet

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                   ipaddress.ip_network("::1/128"))
# Uncompressed RR bytes per message: far below the 65,535 a TCP message may carry
# (RFC 1035 §4.2.2), so a message stays small whatever compression achieves.
MESSAGE_BUDGET = 16_000
HISTORY = 16  # zone versions kept for IXFR
UDP_SIZE = 1232  # a signed UDP query's answer: as server.MAX_UDP_EDNS (the query's EDNS rules)
_OPCODE_QUERY = 0

RRKey = tuple[tuple[bytes, ...], int, bytes]  # owner labels (lowercase), type, packed RDATA


Entry = tuple[DNSLabel, int, object]  # owner, type, RDATA object


@dataclass(frozen=True)
class ZoneVersion:
    serial: int
    soa: RR
    rrs: frozenset[RRKey]  # all but the SOA
    by_key: dict[RRKey, Entry]

    def records(self, keys: Iterable[RRKey] | None = None) -> list[RR]:
        """RRs built when a transfer needs them (most versions are never sent)."""
        chosen = self.by_key.values() if keys is None else (self.by_key[k] for k in keys)
        return [RR(owner, rtype, rdata=data, ttl=TTL) for owner, rtype, data in chosen]


def versions_of(zones: ZoneSet, only: Collection[str] | None = None) -> dict[str, ZoneVersion]:
    """Every zone's version (by lowercase apex text), in one pass over the names;
    ``only`` those zones (the ones that changed)."""
    apexes = {apex.label: apex for apex in zones.apexes
              if only is None or str(apex).lower() in only}
    soas: dict[tuple[bytes, ...], RR] = {}
    entries: dict[tuple[bytes, ...], dict[RRKey, Entry]] = {label: {} for label in apexes}
    for owner, rrsets in zones.names.items():
        labels = owner.label
        apex = next((labels[i:] for i in range(len(labels) + 1) if labels[i:] in apexes), None)
        if apex is None:
            continue
        bucket = entries[apex]
        for rtype, datas in rrsets.items():
            if rtype == QTYPE.SOA and labels == apex:
                soas[apex] = RR(owner, rtype, rdata=datas[0], ttl=TTL)
                continue
            for data in datas:
                buf = DNSBuffer()
                data.pack(buf)  # type: ignore[attr-defined]
                bucket[(labels, rtype, bytes(buf.data))] = (owner, rtype, data)
    return {str(apexes[label]).lower(): ZoneVersion(soas[label].rdata.times[0], soas[label],
                                                     frozenset(bucket), bucket)
            for label, bucket in entries.items()}


def zone_rrs(zones: ZoneSet, apex: DNSLabel) -> list[RR]:
    """Every RR of the zone at ``apex``, SOA first (and only once)."""
    version = versions_of(zones)[str(apex).lower()]
    return [version.soa, *version.records()]


def _rr_size(rr: RR) -> int:
    buf = DNSBuffer()  # a fresh buffer compresses nothing: an upper bound
    rr.pack(buf)
    return len(buf.data)


def chunk(rrs: Sequence[RR], budget: int = MESSAGE_BUDGET) -> list[list[RR]]:
    """RRs in order, cut into runs of at most ``budget`` uncompressed bytes each."""
    out: list[list[RR]] = [[]]
    used = 0
    for rr in rrs:
        size = _rr_size(rr)
        if out[-1] and used + size > budget:
            out.append([])
            used = 0
        out[-1].append(rr)
        used += size
    return out


def _messages(request: DNSRecord, runs: Iterable[list[RR]]) -> list[bytes]:
    """RFC 5936 §2.2: the question in the first message only; AA set in each."""
    out = []
    for i, run in enumerate(runs):
        head = DNSHeader(id=request.header.id, qr=1, aa=1, opcode=_OPCODE_QUERY)
        msg = DNSRecord(head, q=request.questions[0] if i == 0 else None)
        if i != 0:
            msg.questions = []
        for rr in run:
            msg.add_answer(rr)
        out.append(bytes(msg.pack()))
    return out


def _error(request_id: int, question: DNSQuestion | None, rcode: int) -> bytes:
    msg = DNSRecord(DNSHeader(id=request_id, qr=1, opcode=_OPCODE_QUERY, rcode=rcode))
    if question is not None:
        msg.add_question(question)
    return bytes(msg.pack())


def header_answer(query: bytes, rcode: int) -> bytes:
    """An answer to a query we could not parse: the ID and opcode echoed, no sections."""
    flags = struct.unpack_from("!H", query, 2)[0]
    return query[:2] + struct.pack("!HHHHH", 0x8000 | (flags & 0x7800) | rcode, 0, 0, 0, 0)


def is_transfer(message: bytes) -> bool:
    """Whether a query's (first) question asks AXFR or IXFR, read without a full parse."""
    try:
        pos = 12
        for _ in range(128):
            length = message[pos]
            if length == 0 or length & 0xC0:
                pos += 1 if length == 0 else 2
                break
            pos += 1 + length
        qtype = struct.unpack_from("!H", message, pos)[0]
    except (IndexError, struct.error):
        return False
    return len(message) >= 12 and qtype in (QTYPE.AXFR, QTYPE.IXFR)


@dataclass(frozen=True)
class Secondaries:
    """meshdns as a hidden primary: who is told of changes (``notify``), who may
    transfer (``transfer_allow``), and the TSIG key both must use (docs/meshdns.md)."""

    notify: tuple[tuple[str, int], ...] = ()
    transfer_allow: tuple[IPNetwork, ...] = LOOPBACK
    tsig_key: tsig.TsigKey | None = None


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``--dns-transfer-allow`` values; ValueError names the one that is not a CIDR."""
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an address or CIDR prefix") from None
    return tuple(out)


class Transfers:
    """AXFR, IXFR and TSIG for one server (see the module docstring)."""

    def __init__(self, zones: Callable[[], ZoneSet], answer: Callable[[bytes, int | None],
                                                                        bytes | None], *,
                 allow: Sequence[IPNetwork] = LOOPBACK, key: tsig.TsigKey | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 budget: int = MESSAGE_BUDGET, keep_history: bool = True) -> None:
        """``zones`` gives the zones now served, ``answer`` answers a plain query
        (:meth:`Resolver.answer`); ``wall_clock`` is TSIG's time (tests fake it).
        ``keep_history`` False: versions are kept only after the first transfer."""
        self._zones = zones
        self._answer = answer
        self.allow = tuple(allow)
        self.key = key
        self._keys = {key.name: key} if key is not None else {}
        self.wall_clock = wall_clock
        self.budget = budget
        self.keep_history = keep_history
        # apex (lowercase text) -> versions, oldest first. Replaced whole, never
        # mutated: the listener threads read it while the trio side records.
        self.history: dict[str, tuple[ZoneVersion, ...]] = {}
        self.transfers = self.incremental = self.refused = self.notauth = 0
        self._cache: tuple[tuple[str, int, str, int], list[bytes]] | None = None

    def record(self, zones: ZoneSet, changed: Collection[str] | None = None) -> None:
        """A new zone version is served: keep it for IXFR (once secondaries are known:
        a server without any does not pay for the history on every change).
        ``changed``: the apexes (lowercase, trailing dot) that changed; None: all."""
        if not self.keep_history:
            return
        if changed is not None:
            changed = {name for name in changed if name in self.history} | \
                {str(a).lower() for a in zones.apexes if str(a).lower() not in self.history}
        fresh = versions_of(zones, changed)
        history = {}
        for apex in zones.apexes:  # a deleted network's zone goes
            name = str(apex).lower()
            version = fresh.get(name)
            old = self.history.get(name, ())
            if version is None:
                history[name] = old
                continue
            kept = tuple(v for v in old if v.serial != version.serial)
            history[name] = (*kept, version)[-HISTORY:]
        self.history = history

    def _version(self, zones: ZoneSet, apex: DNSLabel) -> ZoneVersion:
        kept = self.history.get(str(apex).lower())
        if kept and kept[-1].serial == zones.serial_of(apex):
            return kept[-1]
        return versions_of(zones)[str(apex).lower()]

    def _allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)

    def handle(self, query: bytes, source_ip: str, *, tcp: bool) -> list[bytes] | None:
        """The answer's messages, or None when ``query`` is a plain unsigned query (or
        not a query at all) that the resolver answers as usual."""
        if len(query) < 12:
            return None
        flags = struct.unpack_from("!H", query, 2)[0]
        if flags & 0x8000 or (flags >> 11) & 0xF != _OPCODE_QUERY:
            return None
        try:
            unsigned, record = tsig.split(query)
        except TsigError:
            return [header_answer(query, RCODE.FORMERR)] if is_transfer(query) else None
        if record is None and not is_transfer(unsigned):
            return None
        try:
            request = DNSRecord.parse(unsigned)
        except (DNSError, struct.error, IndexError, ValueError, UnicodeError):
            return [header_answer(query, RCODE.FORMERR)]
        if len(request.questions) != 1:
            return [header_answer(query, RCODE.FORMERR)]
        now = int(self.wall_clock())
        verified: tsig.Verified | None = None
        if record is not None:
            try:
                verified = tsig.verify(query, self._keys, now)
            except TsigError as exc:
                self.notauth += 1
                return [self._tsig_error(unsigned, record, now, exc.error)]
        messages = self._dispatch(request, unsigned, source_ip, tcp, signed=verified is not None)
        if verified is None or not messages:
            return messages
        return self._sign(messages, verified, now)

    def _tsig_error(self, unsigned: bytes, record: tsig.TsigRecord, now: int, error: int) -> bytes:
        request_id = struct.unpack_from("!H", unsigned, 0)[0]
        try:
            question: DNSQuestion | None = DNSRecord.parse(unsigned).questions[0]
        except Exception:
            question = None
        answer = _error(request_id, question, tsig.RCODE_NOTAUTH if error else RCODE.FORMERR)
        if error == tsig.BADTIME and self.key is not None:
            # §5.2.3: signed, with our time in Other Data so the client sees the skew.
            other = struct.pack("!HI", (now >> 32) & 0xFFFF, now & 0xFFFFFFFF)
            return tsig.sign(answer, self.key, now, request_mac=record.mac, error=error,
                             other=other)[0]
        return tsig.unsigned_error(answer, record, now, error or tsig.BADSIG)

    def _sign(self, messages: list[bytes], verified: tsig.Verified, now: int) -> list[bytes]:
        out = []
        mac = b""
        for i, msg in enumerate(messages):
            if i == 0:
                signed, mac = tsig.sign(msg, verified.key, now, request_mac=verified.mac)
            else:
                signed, mac = tsig.sign_next(msg, verified.key, now, mac)
            out.append(signed)
        return out

    def _dispatch(self, request: DNSRecord, unsigned: bytes, source_ip: str, tcp: bool, *,
                  signed: bool) -> list[bytes]:
        q = request.questions[0]
        if q.qtype not in (QTYPE.AXFR, QTYPE.IXFR):
            answer = self._answer(unsigned, None if tcp else UDP_SIZE)
            return [answer] if answer is not None else []
        zones = self._zones()
        apex = DNSLabel(str(q.qname).lower())
        if not self._allowed(source_ip) or (self.key is not None and not signed):
            self.refused += 1
            return [_error(request.header.id, q, RCODE.REFUSED)]
        if apex not in zones.apexes:
            self.notauth += 1
            return [_error(request.header.id, q, tsig.RCODE_NOTAUTH)]
        current = self._version(zones, apex)
        self.keep_history = True  # a secondary exists: from now on, IXFR history
        if q.qtype == QTYPE.IXFR:
            return self._ixfr(request, current, tcp)
        if not tcp:
            self.refused += 1
            return [_error(request.header.id, q, RCODE.REFUSED)]
        self.transfers += 1
        return self._full(request, current)

    def _full(self, request: DNSRecord, current: ZoneVersion) -> list[bytes]:
        """The whole zone, AXFR form; the unsigned messages of the last one are kept
        (secondaries all ask after one NOTIFY), only the ID patched in."""
        q = request.questions[0]  # echoed as asked (its case too) in the first message
        key = (str(current.soa.rname).lower(), current.serial, str(q.qname), q.qtype)
        cached = self._cache
        if cached is None or cached[0] != key:
            rrs = [current.soa, *current.records(), current.soa]
            cached = (key, _messages(request, chunk(rrs, self.budget)))
            self._cache = cached
        prefix = struct.pack("!H", request.header.id)
        return [prefix + m[2:] for m in cached[1]]

    def _ixfr(self, request: DNSRecord, current: ZoneVersion, tcp: bool) -> list[bytes]:
        client_serial = next((rr.rdata.times[0] for rr in request.auth
                              if rr.rtype == QTYPE.SOA), None)
        if not tcp or (client_serial is not None and _serial_ge(client_serial, current.serial)):
            return _messages(request, [[current.soa]])  # RFC 1995 §2: up to date / use TCP
        self.transfers += 1
        versions = list(self.history.get(str(current.soa.rname).lower(), ()))
        start = next((i for i, v in enumerate(versions) if v.serial == client_serial), None)
        if start is None or versions[-1].serial != current.serial:
            # RFC 1995 §4: no history for that serial: the whole zone, AXFR form.
            return self._full(request, current)
        self.incremental += 1
        # RFC 1995 §4: our SOA, then per version step: old SOA, deletions, new SOA,
        # additions; our SOA last.
        rrs = [current.soa]
        for old, new in zip(versions[start:], versions[start + 1:], strict=False):
            rrs.append(old.soa)
            rrs += old.records(sorted(old.rrs - new.rrs))
            rrs.append(new.soa)
            rrs += new.records(sorted(new.rrs - old.rrs))
        rrs.append(current.soa)
        return _messages(request, chunk(rrs, self.budget))


def _serial_ge(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: a >= b."""
    return a == b or 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000

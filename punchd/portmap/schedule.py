"""Port mapping, sans-IO: the NAT-PMP/PCP exchange and the schedule that races three protocols.

Theory of operation. Two objects, neither with a clock or a socket (every method that
needs the time takes ``now``, trio's clock in the adapter and a number in tests):

:class:`UdpMapper` speaks NAT-PMP (RFC 6886) and PCP (RFC 6887) to the gateway's UDP
port 5351 over one socket. The owner starts a *probe* (NAT-PMP's external-address
request and PCP's ANNOUNCE, both harmless: they map nothing), a *map* (a mapping request
for one protocol; sent again, it is also the renewal) or a *release* (the same request
with lifetime 0, RFC 6886 §3.4, RFC 6887 §15), sends what :meth:`~UdpMapper.datagrams_to_send`
returns, feeds every datagram from the gateway to :meth:`~UdpMapper.handle_datagram`, and
drains :meth:`~UdpMapper.events`. Requests are retransmitted as RFC 6886 §3.1 says —
first after 250 ms, the interval doubling — but the RFC's nine tries span 64 s and we
stop after :data:`REQUEST_BUDGET_S` (2 s, four requests at 0, 0.25, 0.75 and 1.75 s): a
port mapping only adds a candidate next to the STUN ones, the gateway is one LAN hop away
(an answer takes milliseconds, so four lost requests in a row mean it does not speak
the protocol), and punching must not wait a minute for it. We probe again on every
network change. PCP's own schedule (§8.1.1, 3 s initial) would allow one request in
that budget; we use NAT-PMP's faster one for both, on the same socket.

One socket serves both protocols because they share port 5351 and their answers differ
in the first byte (0 NAT-PMP, 2 PCP). Version negotiation (RFC 6887 §9) falls out of it:
a NAT-PMP-only gateway answers our PCP request with NAT-PMP's "unsupported version",
which ends PCP; a PCP-only server answers our NAT-PMP request with PCP's UNSUPP_VERSION,
which ends NAT-PMP; a gateway speaking both answers both.

Every answer's epoch is checked against the previous one of that protocol (RFC 6886
§3.6, RFC 6887 §8.5): an epoch that went backwards, or ran much slower or faster than
our own clock, means the gateway restarted and forgot our mapping, and the owner maps
again at once.

:class:`PortmapSchedule` decides, over all three protocols (UPnP's answers come from
the adapter's HTTP exchange, fed in as the same kinds of events):

1. probe all three at once; the first protocol whose probe answers is the one to map
   with (Tailscale probes in parallel too; mapping only after a probe means a gateway
   that speaks two protocols never holds two mappings for us);
2. if that mapping fails, try the next protocol that answered, in the order they did;
3. give up when every protocol is unavailable or has failed, or :data:`REQUEST_BUDGET_S`
   after the start with no answer at all: bounded, whatever the gateway does;
4. once mapped, renew at half the granted lifetime (RFC 6886 §3.3, RFC 6887 §11.2.1);
   a failed renewal is retried halfway to the expiry; at the expiry the mapping is gone
   and the schedule starts over with a fresh probe;
5. an epoch showing a restarted gateway maps again at once.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from typing import Literal

import msgspec

from punchd.errors import PortmapParseError

from ..wire.addr import Addr
from . import natpmp, pcp

Protocol = Literal["pcp", "nat-pmp", "upnp"]
PROTOCOLS: tuple[Protocol, ...] = ("pcp", "nat-pmp", "upnp")
UdpProtocol = Literal["pcp", "nat-pmp"]

INITIAL_RTO_S = 0.25  # RFC 6886 §3.1
MAX_TRIES = 9  # RFC 6886 §3.1 (the full 64 s); our budget ends it sooner
REQUEST_BUDGET_S = 2.0  # ours: see the module docstring
DEFAULT_LIFETIME_S = 7200  # RFC 6886 §3.3: the recommended lifetime
MIN_RETRY_S = 1.0  # a failed renewal is not retried sooner than this
GRACE_S = 0.1  # the schedule's own deadline trails the requests' by this much


# -- events ---------------------------------------------------------------------------


class Answered(msgspec.Struct, frozen=True, tag=True):
    """The protocol's probe was answered: the gateway speaks it."""

    protocol: Protocol


class Unavailable(msgspec.Struct, frozen=True, tag=True):
    """The gateway does not speak the protocol, or refuses it (no mapping will work)."""

    protocol: Protocol
    reason: str


class Mapped(msgspec.Struct, frozen=True, tag=True):
    protocol: Protocol
    external: Addr
    lifetime: int  # seconds; 0 for UPnP's permanent leases (then never renewed)


class MapFailed(msgspec.Struct, frozen=True, tag=True):
    protocol: Protocol
    reason: str


class Released(msgspec.Struct, frozen=True, tag=True):
    protocol: Protocol


class GatewayRestarted(msgspec.Struct, frozen=True, tag=True):
    """The epoch says the gateway lost its state (RFC 6886 §3.6, RFC 6887 §8.5)."""

    protocol: Protocol


Event = Answered | Unavailable | Mapped | MapFailed | Released | GatewayRestarted


def epoch_lost(prev_epoch: int, prev_at: float, epoch: int, now: float) -> bool:
    """RFC 6887 §8.5 (RFC 6886 §3.6 is its first half): did the gateway restart?

    Each side's elapsed time may be off by the other's by 1/16 plus 2 s before the
    client concludes the server's epoch is not the one it saw.
    """
    if epoch < prev_epoch:
        return True
    client_delta = now - prev_at
    server_delta = epoch - prev_epoch
    return (client_delta + 2 < server_delta - server_delta / 16
            or server_delta + 2 < client_delta - client_delta / 16)


class Request:
    """One request, retransmitted per RFC 6886 §3.1 within a budget."""

    def __init__(self, payload: bytes, now: float, *, budget: float = REQUEST_BUDGET_S,
                 rto: float = INITIAL_RTO_S, max_tries: int = MAX_TRIES) -> None:
        self.payload = payload
        self.rto = rto
        self.max_tries = max_tries
        self.sent = 0
        self._next = now
        self.give_up_at = now + budget

    def datagram_to_send(self, now: float) -> bytes | None:
        if self.sent >= self.max_tries or now < self._next or now >= self.give_up_at:
            return None
        self.sent += 1
        self._next = now + self.rto * 2 ** (self.sent - 1)  # 0, 0.25, 0.75, 1.75 s ...
        return self.payload

    def next_deadline(self) -> float:
        if self.sent >= self.max_tries:
            return self.give_up_at
        return min(self._next, self.give_up_at)

    def expired(self, now: float) -> bool:
        return now >= self.give_up_at


class UdpMapper:
    """NAT-PMP and PCP over one socket to the gateway's port 5351 (see the module doc)."""

    def __init__(self, client_ip: str, internal_port: int, *,
                 lifetime: int = DEFAULT_LIFETIME_S, nonce: bytes | None = None,
                 budget: float = REQUEST_BUDGET_S) -> None:
        ipaddress.IPv4Address(client_ip)  # NAT-PMP is IPv4 only; PCP here too
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.budget = budget
        # RFC 6887 §11.1: a random nonce per mapping, kept for its renewals and its delete.
        self.nonce = nonce if nonce is not None else secrets.token_bytes(pcp.NONCE_LENGTH)
        self._probes: dict[UdpProtocol, Request] = {}
        self._maps: dict[UdpProtocol, Request] = {}
        self._releases: dict[UdpProtocol, Request] = {}
        self._epochs: dict[UdpProtocol, tuple[int, float]] = {}
        self.external_ip: str | None = None  # NAT-PMP's answer to the probe (§3.2)
        self._natpmp_port: int | None = None  # the mapping answer, waiting for the address
        self._natpmp_lifetime = 0
        self._events: list[Event] = []
        self.malformed = 0  # datagrams that did not parse
        self.ignored = 0  # well-formed, but not an answer to anything asked

    # -- what the owner asks ----------------------------------------------------------

    def probe(self, now: float, protocols: Iterable[Protocol] = PROTOCOLS) -> None:
        if "nat-pmp" in protocols:
            self._probes["nat-pmp"] = Request(natpmp.external_address_request(), now,
                                              budget=self.budget)
        if "pcp" in protocols:
            self._probes["pcp"] = Request(pcp.announce_request(self.client_ip), now,
                                          budget=self.budget)

    def map(self, protocol: UdpProtocol, now: float) -> None:
        """A mapping request for WireGuard's port; the renewal is the same request."""
        self._maps[protocol] = Request(self._map_payload(protocol, self.lifetime), now,
                                       budget=self.budget)
        if protocol == "nat-pmp":
            # NAT-PMP's mapping answer has no address: ask for it with every mapping and
            # renewal, so a changed WAN address (RFC 6886 §3.2.1) is noticed.
            self.external_ip, self._natpmp_port = None, None
            self._probes["nat-pmp"] = Request(natpmp.external_address_request(), now,
                                              budget=self.budget)

    @property
    def releasing(self) -> bool:
        """A delete is still waiting for its answer (and has budget left)."""
        return bool(self._releases)

    def release(self, protocol: UdpProtocol, now: float) -> None:
        self._maps.pop(protocol, None)
        self._releases[protocol] = Request(self._map_payload(protocol, 0), now,
                                           budget=self.budget)

    def _map_payload(self, protocol: UdpProtocol, lifetime: int) -> bytes:
        if protocol == "nat-pmp":
            if lifetime == 0:
                return natpmp.delete_request(self.internal_port)
            return natpmp.map_request(self.internal_port, self.internal_port, lifetime)
        return pcp.map_request(self.client_ip, self.nonce, self.internal_port, lifetime,
                               external_port=self.internal_port if lifetime else 0)

    # -- the sans-IO loop ----------------------------------------------------------------

    def _requests(self) -> Iterable[Request]:
        yield from self._probes.values()
        yield from self._maps.values()
        yield from self._releases.values()

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return [d for r in self._requests() if (d := r.datagram_to_send(now)) is not None]

    def next_deadline(self) -> float | None:
        return min((r.next_deadline() for r in self._requests()), default=None)

    def handle_timer(self, now: float) -> None:
        for protocol, request in list(self._probes.items()):
            if request.expired(now):
                del self._probes[protocol]
                if protocol not in self._maps:
                    self._events.append(Unavailable(protocol, f"no answer after "
                                                    f"{request.sent} requests"))
        for protocol, request in list(self._maps.items()):
            if request.expired(now):
                del self._maps[protocol]
                self._events.append(MapFailed(protocol, f"no answer after {request.sent} "
                                              "requests"))
        for protocol, request in list(self._releases.items()):
            if request.expired(now):
                del self._releases[protocol]  # best effort: the lifetime ends it anyway

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def unreachable(self, reason: str) -> None:
        """The gateway's port 5351 is closed (ICMP port unreachable): neither protocol."""
        protocols: tuple[UdpProtocol, ...] = ("pcp", "nat-pmp")
        for protocol in protocols:
            probe, mapping = self._probes.pop(protocol, None), self._maps.pop(protocol, None)
            if mapping is not None:  # a renewal, say: the schedule retries it
                self._events.append(MapFailed(protocol, reason))
            elif probe is not None:
                self._events.append(Unavailable(protocol, reason))
        self._releases.clear()

    def handle_datagram(self, data: bytes, now: float) -> None:
        """A datagram from the gateway's port 5351 (the adapter checks the source)."""
        try:
            if data[:1] == b"\x00":
                self._natpmp_answer(natpmp.parse_response(data), now)
            elif data[:1] == bytes((pcp.VERSION,)):
                self._pcp_answer(pcp.parse_response(data), now)
            else:
                raise PortmapParseError("neither a NAT-PMP nor a PCP answer")
        except PortmapParseError:
            self.malformed += 1

    def _epoch(self, protocol: UdpProtocol, epoch: int, now: float) -> None:
        previous = self._epochs.get(protocol)
        self._epochs[protocol] = (epoch, now)
        if previous is not None and epoch_lost(previous[0], previous[1], epoch, now):
            self._events.append(GatewayRestarted(protocol))

    def _natpmp_answer(self, answer: natpmp.Response, now: float) -> None:
        if answer.result == natpmp.Result.UNSUPPORTED_VERSION:
            # We only ever send version 0 to NAT-PMP, so this answers our PCP (version 2)
            # request: a NAT-PMP-only gateway (RFC 6887 §9). PCP is over, NAT-PMP is not.
            probe, mapping = self._probes.pop("pcp", None), self._maps.pop("pcp", None)
            if probe is not None or mapping is not None:
                self._events.append(Unavailable("pcp", "the gateway speaks NAT-PMP only"))
            else:
                self.ignored += 1
            return
        if isinstance(answer, natpmp.ExternalAddressResponse):
            if self._probes.pop("nat-pmp", None) is None:
                self.ignored += 1
                return
            self._epoch("nat-pmp", answer.epoch, now)
            if answer.result != natpmp.Result.SUCCESS or answer.address is None:
                reason = natpmp.result_name(answer.result)
                if self._maps.pop("nat-pmp", None) is not None:
                    self._events.append(MapFailed("nat-pmp", f"external address: {reason}"))
                else:
                    self._events.append(Unavailable("nat-pmp", reason))
                return
            self.external_ip = answer.address
            self._events.append(Answered("nat-pmp"))
            self._natpmp_mapped()
            return
        if answer.opcode != natpmp.OP_MAP_UDP or answer.internal_port not in (
                0, self.internal_port):
            self.ignored += 1
            return
        if "nat-pmp" in self._releases and answer.lifetime == 0:
            del self._releases["nat-pmp"]
            self._epoch("nat-pmp", answer.epoch, now)
            self._events.append(Released("nat-pmp"))
            return
        if "nat-pmp" not in self._maps:
            self.ignored += 1
            return
        self._epoch("nat-pmp", answer.epoch, now)
        if answer.result != natpmp.Result.SUCCESS:
            del self._maps["nat-pmp"]
            self._events.append(MapFailed("nat-pmp", natpmp.result_name(answer.result)))
            return
        self._natpmp_port = answer.external_port
        self._natpmp_lifetime = answer.lifetime
        self._natpmp_mapped()

    def _natpmp_mapped(self) -> None:
        """A NAT-PMP mapping is complete with both answers: the port and the address."""
        port = self._natpmp_port
        if port is None or self.external_ip is None or "nat-pmp" not in self._maps:
            return
        del self._maps["nat-pmp"]
        self._natpmp_port = None
        self._events.append(Mapped("nat-pmp", (self.external_ip, port), self._natpmp_lifetime))

    def _pcp_answer(self, answer: pcp.Response, now: float) -> None:
        if answer.result == pcp.Result.UNSUPP_VERSION:
            # A PCP server refusing our NAT-PMP request (version 0): RFC 6887 §9.
            probe = self._probes.pop("nat-pmp", None) if answer.version == pcp.VERSION else None
            if probe is not None:
                self._events.append(Unavailable("nat-pmp", "the gateway speaks PCP only"))
            else:
                self.ignored += 1  # a version this client does not speak
            return
        if answer.opcode == pcp.OP_ANNOUNCE:
            if self._probes.pop("pcp", None) is None:
                self.ignored += 1
                return
            self._epoch("pcp", answer.epoch, now)
            if answer.result == pcp.Result.SUCCESS:
                self._events.append(Answered("pcp"))
            else:
                self._events.append(Unavailable("pcp", pcp.result_name(answer.result)))
            return
        if answer.nonce is not None and answer.nonce != self.nonce:
            self.ignored += 1  # §11.3: a MAP answer is ours only with our nonce
            return
        if "pcp" in self._releases and answer.lifetime == 0 and (
                answer.result == pcp.Result.SUCCESS):
            del self._releases["pcp"]
            self._epoch("pcp", answer.epoch, now)
            self._events.append(Released("pcp"))
            return
        if "pcp" not in self._maps:
            self.ignored += 1
            return
        self._epoch("pcp", answer.epoch, now)
        del self._maps["pcp"]
        if answer.result != pcp.Result.SUCCESS:
            self._events.append(MapFailed("pcp", pcp.result_name(answer.result)))
            return
        if answer.nonce is None or answer.external_address is None or answer.protocol != (
                pcp.PROTO_UDP) or answer.internal_port != self.internal_port:
            self._events.append(MapFailed("pcp", "MAP answer for another mapping"))
            return
        self._events.append(Mapped("pcp", (answer.external_address, answer.external_port),
                                   answer.lifetime))


# -- the schedule over all three ------------------------------------------------------


class Map(msgspec.Struct, frozen=True, tag=True):
    protocol: Protocol


class Probe(msgspec.Struct, frozen=True, tag=True):
    """Probe all protocols again (the mapping expired, or a retry after giving up)."""


class GiveUp(msgspec.Struct, frozen=True, tag=True):
    reason: str


Action = Map | Probe | GiveUp
State = Literal["probing", "mapping", "mapped", "failed"]


class PortmapSchedule:
    """Which protocol maps, when to renew, when to give up (see the module doc)."""

    def __init__(self, now: float, *, budget: float = REQUEST_BUDGET_S,
                 protocols: tuple[Protocol, ...] = PROTOCOLS) -> None:
        self.state: State = "probing"
        self.protocols = protocols
        self.budget = budget
        self._probe_deadline: float | None = now + budget + GRACE_S
        self.answered: list[Protocol] = []
        self.unavailable: dict[Protocol, str] = {}
        self.failed: dict[Protocol, str] = {}
        self.current: Protocol | None = None
        self.external: Addr | None = None
        self.lifetime = 0
        self.renew_at: float | None = None
        self.expires_at: float | None = None
        self.renewals = 0
        self.remaps = 0
        self.reason: str | None = None

    def next_deadline(self) -> float | None:
        if self.state == "probing":
            return self._probe_deadline
        if self.state == "mapped":
            return self.renew_at
        return None

    def _summary(self) -> str:
        parts = [f"{p}: {self.failed.get(p) or self.unavailable.get(p) or 'no answer'}"
                 for p in self.protocols]
        return "; ".join(parts)

    def _next_candidate(self) -> Protocol | None:
        return next((p for p in self.answered if p not in self.failed), None)

    def _advance(self, now: float, *, timer: bool = False) -> list[Action]:
        """Start the next mapping, wait for more answers, or give up.

        Only the timer gives up for lack of answers, and only :data:`GRACE_S` after the
        budget: each protocol's own verdict at the budget comes in first, so the reason
        names them all.
        """
        if self.state in ("mapping", "mapped"):
            return []
        candidate = self._next_candidate()
        if candidate is not None:
            self.state, self.current = "mapping", candidate
            return [Map(candidate)]
        settled = all(p in self.unavailable or p in self.failed for p in self.protocols)
        if settled or timer:
            self.state = "failed"
            self.reason = f"no port mapping from the gateway ({self._summary()})"
            return [GiveUp(self.reason)]
        self.state = "probing"
        return []

    def handle(self, event: Event, now: float) -> list[Action]:
        if self.state == "failed":
            return []
        if isinstance(event, Answered):
            if event.protocol not in self.answered:
                self.answered.append(event.protocol)
            return self._advance(now)
        if isinstance(event, Unavailable):
            if event.protocol not in self.answered:
                self.unavailable[event.protocol] = event.reason
            return self._advance(now)
        if event.protocol != self.current:
            return []
        if isinstance(event, Mapped):
            if self.state == "mapped":
                self.renewals += 1
            self.state, self.external, self.lifetime = "mapped", event.external, event.lifetime
            # RFC 6886 §3.3 / RFC 6887 §11.2.1: renew at half the granted lifetime.
            self.renew_at = now + event.lifetime / 2 if event.lifetime else None
            self.expires_at = now + event.lifetime if event.lifetime else None
            return []
        if isinstance(event, MapFailed):
            if self.state == "mapped":
                return self._renewal_failed(now)
            self.failed[event.protocol] = event.reason
            self.state, self.current = "probing", None
            return self._advance(now)
        if isinstance(event, GatewayRestarted) and self.state == "mapped":
            self.remaps += 1
            return [Map(event.protocol)]
        return []

    def _renewal_failed(self, now: float) -> list[Action]:
        if self.expires_at is not None and now + MIN_RETRY_S < self.expires_at:
            self.renew_at = max(now + MIN_RETRY_S, now + (self.expires_at - now) / 2)
            return []
        return self._lost(now)

    def _lost(self, now: float) -> list[Action]:
        """The mapping expired without a renewal: start over, as at start-up."""
        self.remaps += 1
        return self.restart(now)

    def stop(self) -> None:
        """The owner is deleting the mapping: no more renewals, no more actions."""
        self.state, self.external, self.reason = "failed", None, "closed"
        self.renew_at = self.expires_at = self._probe_deadline = None

    def restart(self, now: float) -> list[Action]:
        """Forget everything and probe again (after a network change, or to retry)."""
        self.external = None
        self.state, self.current, self.reason = "probing", None, None
        self.answered.clear()
        self.failed.clear()
        self.unavailable.clear()
        self._probe_deadline = now + self.budget + GRACE_S
        self.renew_at = self.expires_at = None
        return [Probe()]

    def handle_timer(self, now: float) -> list[Action]:
        if self.state == "probing" and self._probe_deadline is not None and (
                now >= self._probe_deadline):
            return self._advance(now, timer=True)
        if self.state == "mapped" and self.renew_at is not None and now >= self.renew_at:
            if self.expires_at is not None and now >= self.expires_at:
                return self._lost(now)
            self.renew_at = None  # set again by the answer, or by a failed renewal
            assert self.current is not None
            return [Map(self.current)]
        return []


def default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway from the text of ``/proc/net/route``.

    Columns: Iface, Destination, Gateway, Flags, ...; addresses are little-endian hex.
    The default route has destination 0 and the RTF_GATEWAY flag (0x2); the lowest
    metric wins when there are several.
    """
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 7:
            continue
        try:
            dest, gateway, flags, metric = (int(fields[1], 16), int(fields[2], 16),
                                            int(fields[3], 16), int(fields[6]))
        except ValueError:
            continue
        if dest != 0 or not flags & 0x2 or not flags & 0x1 or gateway == 0:
            continue  # RTF_UP (0x1) and RTF_GATEWAY (0x2)
        address = str(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
        if best is None or metric < best[0]:
            best = (metric, address)
    return None if best is None else best[1]

"""Path policy, sans-IO: which endpoint WireGuard uses for each peer, and what status shows.

Theory of operation. :class:`PathPolicy` takes facts and returns decisions; it reads no
clock (every method that needs the time takes ``now``, wall-clock seconds like
WireGuard's handshake times) and does no I/O. The network agent feeds it:

* the peers (the server's model), and per peer what the punch session and the relay
  say right now (:class:`PeerFacts`, from :func:`peer_facts`), with WireGuard's observed
  device, to :meth:`PathPolicy.update`;
* the punch session's verdicts (:meth:`path_found`), and what reconciliation applied to
  WireGuard (:meth:`endpoint_set`, :meth:`peer_removed`).

It answers with the per-peer :class:`PathDecision`, the desired WireGuard device
(:meth:`desired`), what ``punchctl status`` shows (:meth:`shown_path`) and the next time
a decision changes by itself (:meth:`next_deadline`).

The rules, each with its own test in ``tests/test_policy.py``:

1. *Punched path.* A session's selected pair is the endpoint (kind direct, or relay when
   the selected pair is the relay).
2. *Pending.* While punching is under way and WireGuard was never given an endpoint for
   the peer, there is no endpoint: guessing one would send a handshake before the NATs
   are open, lost for WireGuard's 5 s retry.
3. *Candidate guess.* Without punching, the peer's best published candidate
   (:func:`choose_endpoint`), kept while the peer still offers it.
4. *No allowed IPs while pending.* Traffic to a peer without an endpoint makes WireGuard
   try a handshake that goes nowhere, and a tried handshake is not tried again for 5 s
   (REKEY_TIMEOUT), so the one due when the path is found would wait. A peer that shook
   hands with us already keeps its allowed IPs.
5. *One initiator.* On a punched path only one side starts the handshake — the one with
   the larger probe key, as in the punch session — because two initiations that cross
   make each side answer the other's and drop the answer to its own, and neither
   handshake completes until the 5 s retry. The other side turns its keepalive on (which
   makes WireGuard send at once) when the handshake has happened, or ``HANDSHAKE_WAIT_S``
   after the path was found. No keepalive before the first endpoint either.
6. *Insist on a changed endpoint.* When the decided endpoint changes, WireGuard is told
   even if it roamed elsewhere (``force_endpoint``).
7. *Relay roaming.* WireGuard follows the source of the peer's packets; a peer still
   sending through the relay would pull our direct path back onto it. Insisting on the
   direct endpoint makes the peer's WireGuard follow us onto the direct path.
8. *Probation.* Probes can pass where WireGuard does not (a firewall that knows
   WireGuard's message types), so a punched path is on probation until WireGuard itself
   proves it: a handshake after the switch, or bytes received while WireGuard's endpoint
   is that path. Bytes received while WireGuard's endpoint is elsewhere prove nothing.
9. *Distrust.* If WireGuard sends on a path on probation for ``CONFIRM_S`` (one
   handshake retry) without that proof, the path is distrusted for ``DISTRUST_S`` and the
   peer goes through the relay, when it has one.
10. *Status follows WireGuard.* The path shown is the one WireGuard uses: none without a
    live handshake, relay when WireGuard's endpoint is the peer's relay, direct
    otherwise; the RTT only when WireGuard's endpoint is the decided one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from punchd.punch.session import PunchSession
from punchd.wg.base import WgDeviceState, WgPeer, WgPeerState
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr

from .paths import HANDSHAKE_ALIVE_S, PathDecision, PathKind, choose_endpoint
from .reconcile import DesiredDevice

HANDSHAKE_WAIT_S = 1.0  # the responder waits this long for the initiator's handshake
CONFIRM_S = 6.0  # WireGuard retries a handshake after 5 s: one retry's worth of proof
DISTRUST_S = 60.0

LocalNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SessionFacts(msgspec.Struct, frozen=True):
    """What a peer's punch session says now; addresses formatted ``ip:port``."""

    state: str
    selected: str | None = None
    selected_kind: str | None = None  # the selected pair's kind ("relay" for the relay pair)
    selected_rtt: float | None = None  # seconds
    relay: str | None = None  # the session's relay pair


class PeerFacts(msgspec.Struct, frozen=True):
    session: SessionFacts | None = None  # None: no punch session for the peer
    relay: str | None = None  # our bound side of the peer's relay allocation


def peer_facts(session: PunchSession | None, relay: Addr | None) -> PeerFacts:
    """The facts of a peer's punch session and bound relay side, as the policy reads them."""
    return PeerFacts(
        session=None if session is None else SessionFacts(
            state=session.state, selected=_format(session.selected),
            selected_kind=session.selected_kind, selected_rtt=session.selected_rtt,
            relay=_format(session.relay)),
        relay=_format(relay))


def _format(addr: Addr | None) -> str | None:
    return format_addr(addr) if addr else None


class Distrusted(msgspec.Struct, frozen=True):
    """Rule 9 fired: WireGuard gets nothing back on ``endpoint`` although probes pass."""

    node_id: str
    endpoint: str
    seconds: float


@dataclass
class _Probation:
    """A punched endpoint WireGuard has not proven yet, and its counters at the switch."""

    endpoint: str
    since: float
    rx: int
    tx: int
    confirmed: bool = False


def probe_key(node: api.Node) -> bytes:
    """The node's probe public key, raw; empty if it does not decode."""
    return _decode_probe_key(node.probe_public_key)


def allowed_ips(peer: api.Node) -> tuple[str, ...]:
    """The peer's mesh addresses as host routes."""
    return _host_routes(peer.ipv4, peer.ipv6)


# Both run for every peer on every reconcile pass; their inputs change rarely, so they
# are parsed once (issue #22: a pass over unchanged peers must be cheap).
@functools.lru_cache(maxsize=8192)
def _decode_probe_key(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


@functools.lru_cache(maxsize=8192)
def _host_routes(ipv4: str | None, ipv6: str | None) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_interface(a).ip) + ("/128" if ":" in a else "/32")
                 for a in (ipv4, ipv6) if a)


class PathPolicy:
    def __init__(self, own_probe_key: bytes) -> None:
        self._own_probe_key = own_probe_key
        self.paths: dict[str, PathDecision] = {}  # by peer node id
        self._facts: Mapping[str, PeerFacts] = {}
        self._found_at: dict[str, float] = {}  # peer id -> when its session found a path
        self._probation: dict[str, _Probation] = {}
        self._distrusted: dict[str, tuple[str, float]] = {}  # peer id -> (endpoint, until)
        self._applied: dict[str, str] = {}  # WireGuard key -> endpoint punchd set

    # -- events ------------------------------------------------------------------------

    def path_found(self, node_id: str, now: float) -> None:
        self._found_at[node_id] = now

    def endpoint_set(self, public_key: str, endpoint: str) -> None:
        self._applied[public_key] = endpoint

    def peer_removed(self, public_key: str) -> None:
        self._applied.pop(public_key, None)

    # -- decisions -----------------------------------------------------------------------

    def initiator(self, peer: api.Node) -> bool:
        """Whether this node starts WireGuard's first handshake with ``peer`` (rule 5)."""
        return self._own_probe_key > probe_key(peer)

    def update(self, peers: Mapping[str, api.Node], facts: Mapping[str, PeerFacts],
               actual: WgDeviceState | None, now: float, *, punching: bool,
               local_networks: Sequence[LocalNetwork] = (), local_only: bool = False
               ) -> list[Distrusted]:
        """Decide every peer's path from the facts; returns the paths distrusted now."""
        self._facts = facts
        self._decide(peers, now, punching, local_networks, local_only)
        if actual is None:
            return []
        distrusted = self._judge(peers, actual, now)
        if distrusted:
            self._decide(peers, now, punching, local_networks, local_only)
        return distrusted

    def _decide(self, peers: Mapping[str, api.Node], now: float, punching: bool,
                local_networks: Sequence[LocalNetwork], local_only: bool) -> None:
        for peer in peers.values():
            facts = self._facts.get(peer.id, PeerFacts())
            session = facts.session
            if session is not None and session.selected is not None:
                self.paths[peer.id] = self._punched(peer.id, session, now)
                continue
            # No session yet means one is about to start (rule 2).
            punching_soon = punching and (session is None or session.state == "punching")
            if punching_soon and peer.wg_public_key not in self._applied:
                self.paths[peer.id] = PathDecision(endpoint=None, kind="direct",
                                                   source="pending")
                continue
            current = self.paths.get(peer.id)
            guess = choose_endpoint(peer, local_networks, local_only=local_only)
            if current is not None and current.source == "candidate" and current.endpoint \
                    and any(c.address == current.endpoint for c in peer.candidates) \
                    and (not local_only or current.endpoint == guess):
                continue  # keep a chosen endpoint while the peer still offers it (rule 3),
                # unless the network went local only and it is not a LAN one
            self.paths[peer.id] = PathDecision(endpoint=guess, kind="direct")
        for gone in set(self.paths) - set(peers):
            del self.paths[gone]
        for table in (self._found_at, self._probation, self._distrusted):
            for gone in set(table) - set(peers):
                del table[gone]

    def _punched(self, node_id: str, session: SessionFacts, now: float) -> PathDecision:
        """Rules 1 and 9."""
        relayed = session.selected_kind == "relay"
        distrusted = self._distrusted.get(node_id)
        if not relayed and session.relay is not None and distrusted is not None \
                and distrusted[0] == session.selected and now < distrusted[1]:
            return PathDecision(endpoint=session.relay, kind="relay", source="relay")
        rtt = session.selected_rtt
        return PathDecision(endpoint=session.selected, kind="relay" if relayed else "direct",
                            source="relay" if relayed else "punch",
                            rtt_ms=round(rtt * 1000, 2) if rtt is not None else None)

    def _judge(self, peers: Mapping[str, api.Node], actual: WgDeviceState, now: float
               ) -> list[Distrusted]:
        """Rules 8 and 9: probation of punched endpoints."""
        by_key = {p.public_key: p for p in actual.peers}
        distrusted = []
        for peer in peers.values():
            decision, wg = self.paths.get(peer.id), by_key.get(peer.wg_public_key)
            if decision is None or decision.source != "punch" or decision.endpoint is None \
                    or wg is None:
                self._probation.pop(peer.id, None)
                continue
            probation = self._probation.get(peer.id)
            if probation is None or probation.endpoint != decision.endpoint:
                self._probation[peer.id] = _Probation(decision.endpoint, now, wg.rx_bytes,
                                                      wg.tx_bytes)
                continue
            if probation.confirmed:
                continue
            if wg.endpoint != probation.endpoint:
                # WireGuard followed the peer elsewhere (the relay) and is being put back:
                # bytes received meanwhile came that other way and prove nothing. The
                # clock runs on, so a peer that never follows us ends on the relay.
                probation.rx = wg.rx_bytes
            elif (wg.last_handshake or 0) > probation.since or wg.rx_bytes > probation.rx:
                probation.confirmed = True
                continue
            if now - probation.since > CONFIRM_S and wg.tx_bytes > probation.tx:
                known = self._distrusted.get(peer.id)
                if known is not None and known[0] == decision.endpoint and now < known[1]:
                    continue  # said already, and no relay to go to
                self._distrusted[peer.id] = (decision.endpoint, now + DISTRUST_S)
                del self._probation[peer.id]
                distrusted.append(Distrusted(peer.id, decision.endpoint, DISTRUST_S))
        return distrusted

    def desired(self, peers: Mapping[str, api.Node], actual: WgDeviceState | None,
                now: float, *, private_key_public: str, listen_port: int, keepalive: int
                ) -> DesiredDevice:
        """The WireGuard device for the current decisions (rules 4 to 7)."""
        handshaken = {p.public_key for p in actual.peers if p.last_handshake} if actual else set()
        wanted = []
        for peer in peers.values():
            if not peer.approved:
                continue
            decision = self.paths.get(peer.id)
            endpoint = decision.endpoint if decision else None
            allowed = allowed_ips(peer)
            if decision is not None and decision.source == "pending" \
                    and peer.wg_public_key not in handshaken:
                allowed = ()  # rule 4; the peer stays in WireGuard, so its handshake is answered
            known = endpoint is not None or peer.wg_public_key in self._applied
            found = self._found_at.get(peer.id)
            if known and decision is not None and decision.source in ("punch", "relay") \
                    and found is not None and peer.wg_public_key not in handshaken \
                    and not self.initiator(peer) and now - found < HANDSHAKE_WAIT_S:
                known = False  # rule 5
            wanted.append(WgPeer(public_key=peer.wg_public_key, endpoint=endpoint,
                                 allowed_ips=allowed,
                                 persistent_keepalive=keepalive if known else 0))
        force = frozenset(p.public_key for p in wanted if p.endpoint is not None
                          and self._applied.get(p.public_key) not in (None, p.endpoint))
        force |= self._roamed_onto_relay(peers, actual)
        return DesiredDevice(private_key_public=private_key_public, listen_port=listen_port,
                             peers=tuple(sorted(wanted, key=lambda p: p.public_key)),
                             force_endpoint=force)

    def _roamed_onto_relay(self, peers: Mapping[str, api.Node], actual: WgDeviceState | None
                           ) -> frozenset[str]:
        """Rule 7: WireGuard keys of peers with a punched direct path whose WireGuard
        endpoint is the relay."""
        if actual is None:
            return frozenset()
        wg_endpoint = {p.public_key: p.endpoint for p in actual.peers}
        return frozenset(
            peer.wg_public_key for peer in peers.values()
            if (decision := self.paths.get(peer.id)) is not None and decision.source == "punch"
            and self._is_relay(peer.id, wg_endpoint.get(peer.wg_public_key)))

    def _is_relay(self, node_id: str, endpoint: str | None) -> bool:
        """Whether ``endpoint`` is our bound side of the relay for this peer."""
        relay = self._facts.get(node_id, PeerFacts()).relay
        return endpoint is not None and endpoint == relay

    def next_deadline(self, now: float) -> float:
        """The next time after ``now`` at which a decision changes without a new fact:
        a responder's handshake wait ends, or a probation or distrust runs out."""
        times = [found + HANDSHAKE_WAIT_S for found in self._found_at.values()]
        times += [p.since + CONFIRM_S for p in self._probation.values() if not p.confirmed]
        times += [until for _, until in self._distrusted.values()]
        return min((t for t in times if t > now), default=math.inf)

    # -- what status shows ---------------------------------------------------------------

    def kind_of(self, node_id: str, endpoint: str | None) -> PathKind:
        """What an address is for this peer: the relay, or the peer itself."""
        decision = self.paths.get(node_id)
        if self._is_relay(node_id, endpoint) or (
                decision is not None and decision.kind == "relay"
                and endpoint is not None and endpoint == decision.endpoint):
            return "relay"
        return "direct"

    def shown_path(self, node_id: str, wg: WgPeerState | None, now: float) -> PathKind:
        """Rule 10: the path WireGuard uses, proven by a live handshake."""
        if wg is None or wg.last_handshake is None \
                or now - wg.last_handshake > HANDSHAKE_ALIVE_S:
            return "none"
        return self.kind_of(node_id, wg.endpoint)

    def shown_rtt_ms(self, node_id: str, wg: WgPeerState | None) -> float | None:
        decision = self.paths.get(node_id)
        if decision is None or wg is None or decision.endpoint != wg.endpoint:
            return None
        return decision.rtt_ms

    def confirmed(self, node_id: str) -> bool:
        probation = self._probation.get(node_id)
        return probation is not None and probation.confirmed

"""The punch session: one per peer, sans-IO (no sockets, no clock, no trio).

Theory of operation
===================

Inputs are ``punch(now)`` (the server's rendezvous request, or our own decision to
re-punch), ``handle_datagram(data, src, now)`` (a probe from the peer arrived on
WireGuard's port) and ``handle_timer(now)`` (the time given by ``next_deadline()``
came). Outputs are drained with ``datagrams_to_send()`` and ``events()``. Every
datagram leaves from WireGuard's port, so the NAT mapping we punch is WireGuard's.

States. The session's state changes in one place, :data:`TRANSITIONS` (applied by
``PunchSession._transition``); a trigger the table does not list for a state leaves
the state as it is. The table, as the tests check it against this text::

    idle       --attempt-->         punching
    punching   --attempt-->         punching
    failed     --attempt-->         punching
    connected  --attempt-->         connected
    idle       --give-up-->         failed
    punching   --give-up-->         failed
    failed     --give-up-->         failed
    connected  --give-up-->         connected
    punching   --pair-succeeded-->  connected
    failed     --pair-succeeded-->  connected
    connected  --pair-succeeded-->  connected
    connected  --path-lost-->       punching
    failed     --peer-check-->      punching

``attempt``: an attempt starts with pairs to check (``punch()``, the retry timer, the
peer's ping while idle or failed, ``set_relay``, a lost path); a connected session
keeps its path meanwhile. ``give-up``: the attempt ends, or cannot start, without a
direct pair; connected, that is through the relay, which stays selected. A path
lost (no pong for ``LOST_AFTER``) is followed at once by an attempt. ``peer-check``:
the peer's ping got through although the attempt was judged hopeless; its pair is
checked. Each candidate pair has a state of its own, in :data:`PAIR_TRANSITIONS`:
``waiting`` (not checked yet this attempt), ``in-progress`` (pinging), ``succeeded``
(a pong came back), ``failed`` (its check ended unanswered, or was stopped), as in
RFC 8445 §6.1.2.6.

Checks. The peer's candidates become pairs (one per remote address, RFC 8445
§6.1.2.4), ordered by pair priority (§6.1.2.3). A new check starts every ``TA``
(50 ms, §14.2 pacing); a started check sends a ping and retransmits it with capped
exponential backoff (a hole punch needs retransmits: the first pings are dropped by
the peer's NAT until the peer's own pings open it). A ping from an address that is
not a pair yet makes a peer-reflexive pair (§7.3.1.3) checked at once (a triggered
check, §7.3.1.4). Each transmission has a fresh transaction id, so RTTs are exact.

Success. A pair succeeds when a pong for our ping comes back from the address the ping
went to (RFC 8445 §7.2.5.2: a check succeeds on its response): that round trip used
WireGuard's 5-tuple through both NATs, both ways. Waiting for the peer's own ping
as well would cost a keepalive interval whenever our attempt restarted after the
peer had already connected. The first pair to succeed is selected (PathFound); checks
go on until the attempt's deadline, and a later pair replaces the selection
(PathChanged) only with hysteresis: a LAN (host) pair over a public one at once; a
pair of the same class only when its RTT is lower by 30 % and 5 ms, at most once per
``SWITCH_HOLD``.

Port prediction. When the peer's NAT maps per destination (not endpoint-independent,
RFC 4787 §4.1) its pings to us leave from a port we have not seen. If our NAT lets
them in (endpoint-independent or address-dependent filtering) that port shows up as a
peer-reflexive pair by itself. If our NAT filters per address and port, we spray
pings at predicted ports (the peer's server-reflexive port plus multiples of the
port delta discovery measured, :mod:`punchd.punch.prediction`), bounded by
``SPRAY_BUDGET``; each spray opens our
filter for that port. When both NATs map per destination, both spray, which meets
only if both step predictably and one maps per address (its guesses share a port).
Otherwise (both symmetric, or the peer's ports are random and we filter per port)
the attempt gives up on public pairs at once, tries LAN pairs for ``LAN_TIMEOUT``
(two hosts behind one NAT) and fails with the reason, so the pair goes to the relay;
both sides reach the same verdict from the same two NAT reports (:func:`assess`).

The relay. When this node holds a relay allocation for the peer (``set_relay``), its
own side of it — the relay address it sends to — is one more pair, of kind
``relay``: probes sent there come out at the peer from the relay, the peer's pongs go
back the same way, so the relay path is proven like any other before WireGuard is
pointed at it. Its check starts first in every attempt (a lost direct path falls back
to it within a round trip) and it ranks below every direct pair: a LAN pair beats a
public one, a public one beats the relay, at once; within a rank only a clearly lower
RTT switches. While connected through the relay, direct checks go on: an attempt
that ends without a direct pair schedules the next with the usual backoff, forever.

Failure and retry. No pair within ``PUNCH_TIMEOUT`` -> PunchFailed(reason) and a
retry after a backoff (10 s doubling to 5 min; 60 s first when it cannot work); never
a tight loop. Keepalive: once connected, a ping on the selected path keeps the NAT
mappings alive and proves the path; no pong for the pace's loss time -> PathLost and
a new attempt.

Keepalive pace. A fresh path (for ``FRESH_FOR`` after it is selected), a path that
carries traffic (``note_traffic``: WireGuard's counters moved, for ``TRAFFIC_FOR``)
and the relay path are pinged every ``KEEPALIVE`` and lost after ``LOST_AFTER``
without a pong: a dead path carrying traffic falls back within ~2 s. An idle direct
path needs far less: NATs keep a UDP mapping for 30 s or more (RFC 4787 REQ-5 asks
2 min), and WireGuard's own keepalives and handshakes refresh it too; so it is pinged
every ``KEEPALIVE_IDLE`` (Tailscale's 3 s heartbeat) and lost after
``LOST_AFTER_IDLE``: the same one-second grace after the keepalive that went
unanswered (retried every ``KEEPALIVE_RETRY`` meanwhile). At a thousand peers that
is ~330 pings a second instead of 2,000 (issue #22). First contact is not slowed:
checks run at ``TA`` pacing with their own retransmits.

Replays and spoofing: probes are NaCl boxes between the two probe keys; a pong counts
only for an outstanding transaction id from the address the ping went to; a ping
only once (timestamp window + seen-id cache, :class:`punchd.wire.probe.ReplayGuard`).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections import deque
from typing import Literal

from msgspec import Struct
from nacl.public import PrivateKey, PublicKey

from punchd.errors import ProbeParseError
from punchd.wire import probe as wire
from punchd.wire.api import Candidate, CandidateKind, NatReport

from ..wire.addr import Addr
from .candidates import MAX_PAIRS, candidate_priority, form_pairs, pair_priority
from .prediction import SPRAY_BUDGET, SPRAY_BURST, assess, predicted_ports

# RFC 8445 §14.2: Ta, the pacing of new checks. 50 ms is the RFC's default.
TA = 0.05
# Retransmission of one check: the first retransmit soon (a simultaneous open loses the
# first pings by design), then doubling, capped so a late opening is still caught.
RTO_INITIAL = 0.1
RTO_MAX = 1.0
PUNCH_TIMEOUT = 5.0  # an attempt without any successful pair fails after this
LAN_TIMEOUT = 1.0  # when only LAN pairs can work: their answer comes fast or never
# RFC 4787 REQ-5 allows NATs 2 min; many use 30 s. Cheap (one ~100-byte probe), and
# it is also how a dead path is noticed: fall back to the relay within ~2 s.
KEEPALIVE = 0.5  # a fresh path, one carrying traffic, the relay path
LOST_AFTER = 1.5  # at that pace: no pong on the selected path for this long -> lost
KEEPALIVE_RETRY = 0.25  # keepalive pace while a pong is overdue
# An idle direct path (see the header): Tailscale's heartbeat, and the same grace
# after an unanswered keepalive as at the fast pace.
KEEPALIVE_IDLE = 3.0
LOST_AFTER_IDLE = KEEPALIVE_IDLE + (LOST_AFTER - KEEPALIVE)
FRESH_FOR = 5.0  # a newly selected path is kept at the fast pace this long
TRAFFIC_FOR = 10.0  # after note_traffic(), the fast pace this long
RETRY_FIRST = 10.0
RETRY_FIRST_HOPELESS = 60.0
RETRY_MAX = 300.0
SWITCH_HOLD = 10.0
RTT_SWITCH_RATIO = 0.7
RTT_SWITCH_MIN = 0.005
TX_LIFETIME = 10.0  # outstanding transaction ids are forgotten after this

State = Literal["idle", "punching", "connected", "failed"]
Trigger = Literal["attempt", "give-up", "pair-succeeded", "path-lost", "peer-check"]

# The session's state changes here and only here (see the header's table).
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    ("idle", "attempt"): "punching",
    ("punching", "attempt"): "punching",
    ("failed", "attempt"): "punching",
    ("connected", "attempt"): "connected",  # the path stays while the attempt runs
    ("idle", "give-up"): "failed",
    ("punching", "give-up"): "failed",
    ("failed", "give-up"): "failed",
    ("connected", "give-up"): "connected",  # through the relay, which stays selected
    ("punching", "pair-succeeded"): "connected",
    ("failed", "pair-succeeded"): "connected",  # a late pong of the attempt that failed
    ("connected", "pair-succeeded"): "connected",
    ("connected", "path-lost"): "punching",
    ("failed", "peer-check"): "punching",
}

# RFC 8445 §6.1.2.6 pair states (no Frozen: one component, so no pair waits on another).
PairState = Literal["waiting", "in-progress", "succeeded", "failed"]
PairInput = Literal["start", "stop", "answer"]

# A pair's state changes here and only here. Unlisted: the input leaves it as it is (a
# waiting pair that is "stopped" can still be checked when the peer's ping triggers it).
PAIR_TRANSITIONS: dict[tuple[PairState, PairInput], PairState] = {
    ("waiting", "start"): "in-progress",
    ("failed", "start"): "in-progress",  # triggered check (RFC 8445 §7.3.1.4)
    ("in-progress", "stop"): "failed",  # unanswered by the end, or no longer useful
    ("waiting", "answer"): "succeeded",  # a pong for the previous attempt's ping
    ("in-progress", "answer"): "succeeded",
    ("failed", "answer"): "succeeded",  # a late pong
}

_LAN_NETS = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10")]


@functools.lru_cache(maxsize=8192)
def _private(ip_text: str) -> bool:
    """In private space (RFC 1918, ULA, link-local); parsed once per address."""
    ip = ipaddress.ip_address(ip_text)
    return any(ip in net for net in _LAN_NETS if net.version == ip.version)


class PathFound(Struct, frozen=True, tag=True):
    addr: Addr
    rtt: float


class PathChanged(Struct, frozen=True, tag=True):
    old: Addr
    new: Addr
    rtt: float


class PathLost(Struct, frozen=True, tag=True):
    addr: Addr


class PunchFailed(Struct, frozen=True, tag=True):
    reason: str
    retry_at: float


PunchEvent = PathFound | PathChanged | PathLost | PunchFailed


class Pong(Struct, frozen=True):
    """One answered ping: for ``punchctl ping``, which shows each probe's path."""

    txid: bytes
    addr: Addr
    rtt: float


class SessionStatistics(Struct, frozen=True):
    probes_sent: int
    probes_received: int
    rejected: int  # did not parse or authenticate
    replays: int  # authentic but replayed, duplicated or stale
    attempts: int
    pairs: int


class _Pair:
    __slots__ = ("kind", "next_tx", "priority", "remote", "rto", "rtt", "state", "stop_at")

    def __init__(self, remote: Addr, kind: CandidateKind, priority: int) -> None:
        self.remote = remote
        self.kind = kind
        self.priority = priority
        self.reset()

    def reset(self) -> None:
        self.state: PairState = "waiting"
        self.next_tx = 0.0  # the next retransmission, while in progress
        self.stop_at = 0.0  # the check ends unanswered at this time
        self.rto = RTO_INITIAL
        self.rtt: float | None = None

    def apply(self, event: PairInput) -> bool:
        """Move by :data:`PAIR_TRANSITIONS`; False when the table leaves the state."""
        new = PAIR_TRANSITIONS.get((self.state, event))
        if new is None:
            return False
        self.state = new
        return True

    @property
    def rank(self) -> int:
        """2 LAN, 1 public direct, 0 relay: a higher rank replaces a lower one at once."""
        if self.kind == "relay":
            return 0
        return 2 if self.lan else 1

    @property
    def lan(self) -> bool:
        """A host candidate, or a peer-reflexive one in private space (RFC 1918, ULA,
        link-local): a path that does not cross a NAT."""
        if self.kind == "host":
            return True
        if self.kind != "prflx":
            return False
        return _private(self.remote[0])


class PunchSession:
    def __init__(self, *, local_key: PrivateKey, peer_key: PublicKey,
                 local_candidates: list[Candidate], peer_candidates: list[Candidate],
                 peer_nat: NatReport | None, now: float, rng: random.Random,
                 local_nat: NatReport | None = None, wall_offset: float = 0.0) -> None:
        self._codec = wire.ProbeCodec(local_key, peer_key)
        self._controlling = bytes(local_key.public_key) > bytes(peer_key)
        self._rng = rng
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (probe timestamps)
        self.local_candidates = list(local_candidates)
        self.peer_candidates = list(peer_candidates)
        self.local_nat = local_nat
        self.peer_nat = peer_nat
        self._state: State = "idle"
        self._pairs: dict[Addr, _Pair] = {}
        self._waiting: list[_Pair] = []  # to be started by the pacer, best first
        self._outstanding: dict[bytes, tuple[Addr, float]] = {}
        self._replay = wire.ReplayGuard()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[PunchEvent] = []
        self.selected: Addr | None = None
        self.selected_rtt: float | None = None
        self.relay: Addr | None = None  # our side of the relay allocation for this peer
        self.observed: Addr | None = None  # where the peer sees us (from its pongs)
        self.failure: str | None = None
        self._hopeless: str | None = None  # assess()'s verdict for this attempt
        self._last_switch = float("-inf")
        self._last_pong = 0.0
        self._fast_until = 0.0  # the selected path is at KEEPALIVE's pace until then
        self._lost_floor = 0.0  # not judged lost before (the pace just turned fast)
        self._next_keepalive: float | None = None
        self._ka_sent = 0.0
        self._next_pace: float | None = None
        self._deadline: float | None = None  # attempt deadline while punching
        self._retry_at: float | None = None
        self._backoff = 0.0
        self._attempts = 0
        self._sent = self._received = self._rejected = self._replays = 0
        self.pongs: deque[Pong] = deque(maxlen=64)  # the latest answered pings

    # -- public surface ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(self._sent, self._received, self._rejected, self._replays,
                                 self._attempts, len(self._pairs))

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[PunchEvent]:
        out, self._events = self._events, []
        return out

    def update_peer(self, candidates: list[Candidate], nat: NatReport | None) -> None:
        """New peer candidates/NAT report; they take effect at the next attempt."""
        self.peer_candidates = list(candidates)
        self.peer_nat = nat

    def update_local(self, candidates: list[Candidate], nat: NatReport | None) -> None:
        self.local_candidates = list(candidates)
        self.local_nat = nat

    def punch(self, now: float) -> None:
        """Start an attempt now (rendezvous request, rebinding, new address)."""
        self._start_attempt(now)

    def set_relay(self, relay: Addr | None, now: float) -> None:
        """Our relay address for this peer (bound and ready), or None; checked at once."""
        if relay == self.relay:
            return
        old, self.relay = self.relay, relay
        if old is not None and old in self._pairs and old != self.selected:
            del self._pairs[old]
        if relay is not None:
            self._start_attempt(now)

    @property
    def selected_kind(self) -> CandidateKind | None:
        pair = self._pairs.get(self.selected) if self.selected is not None else None
        return pair.kind if pair is not None else None

    def ping_now(self, now: float, limit: int = 8) -> list[bytes]:
        """A user's ping: on the selected path, else on the pairs being checked.

        Returns the transaction ids; their answers appear in :attr:`pongs`.
        """
        if self.selected is not None and self.selected in self._pairs:
            targets = [self._pairs[self.selected]]
        else:
            targets = sorted((p for p in self._pairs.values() if p.state != "waiting"),
                             key=lambda p: -p.priority)[:limit]
        return [self._send_ping(pair, now) for pair in targets]

    def next_deadline(self) -> float | None:
        times: list[float] = []
        if self._retry_at is not None:
            times.append(self._retry_at)
        if self._deadline is not None:
            times.append(self._deadline)
        if self._next_pace is not None and self._waiting:
            times.append(self._next_pace)
        if self._next_keepalive is not None:
            times.append(self._next_keepalive)
            times.append(self._lost_at())
        times.extend(p.next_tx for p in self._pairs.values() if p.state == "in-progress")
        return min(times, default=None)

    def path_overdue(self, now: float) -> bool:
        """Connected, and the selected path's pong is overdue: the next timer loses it."""
        return (self._state == "connected" and self.selected is not None
                and now >= self._lost_at())

    def note_traffic(self, now: float) -> None:
        """WireGuard carried traffic with the peer (its counters moved): keep the path at
        the fast pace for ``TRAFFIC_FOR``, so its loss is noticed within ~2 s."""
        if self._state != "connected" or self.selected is None:
            return
        was_idle = self._idle(now)
        self._fast_until = max(self._fast_until, now + TRAFFIC_FOR)
        if was_idle:
            # The last pong may be ~3 s old: ask now, and judge by this answer.
            self._lost_floor = now + LOST_AFTER
            if self._next_keepalive is not None:
                self._next_keepalive = min(self._next_keepalive, now)

    def handle_timer(self, now: float) -> None:
        if self._retry_at is not None and now >= self._retry_at:
            self._start_attempt(now)
        if self._next_pace is not None and self._waiting and now >= self._next_pace:
            self._pace(now)
        for pair in list(self._pairs.values()):
            if pair.state == "in-progress" and now >= pair.next_tx:
                if now >= pair.stop_at:
                    pair.apply("stop")  # check over, unanswered
                    continue
                self._send_ping(pair, now)
                pair.rto = min(pair.rto * 2, RTO_MAX)
                pair.next_tx = now + pair.rto
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            on_relay = self._state == "connected" and self.selected_kind == "relay"
            if on_relay:
                self._fail(now, self._hopeless or "no direct pair answered within "
                           f"{PUNCH_TIMEOUT:g} s", RETRY_FIRST_HOPELESS if self._hopeless
                           else RETRY_FIRST)
            elif self._state == "punching" and self._hopeless is not None:
                self._fail(now, self._hopeless, RETRY_FIRST_HOPELESS)
            elif self._state == "punching":
                self._fail(now, "no candidate pair answered both ways within "
                           f"{PUNCH_TIMEOUT:g} s", RETRY_FIRST)
        if self._state == "connected" and self.selected is not None:
            if now >= self._lost_at():
                lost = self.selected
                self._events.append(PathLost(lost))
                self.selected = self.selected_rtt = None
                self._next_keepalive = None
                self._transition("path-lost")
                self._start_attempt(now)
            elif self._next_keepalive is not None and now >= self._next_keepalive:
                # The timer fires KEEPALIVE_RETRY after each keepalive: answered -> the
                # next one a pace after it; unanswered -> ask again at once, so a
                # lost datagram or two is not mistaken for a lost path.
                pace = KEEPALIVE_IDLE if self._idle(now) else KEEPALIVE
                if self._last_pong >= self._ka_sent and now < self._ka_sent + pace:
                    self._next_keepalive = self._ka_sent + pace
                else:
                    self._send_ping(self._pairs[self.selected], now)
                    self._ka_sent = now
                    self._next_keepalive = now + KEEPALIVE_RETRY
        self._expire_transactions(now)

    def handle_datagram(self, data: bytes, src: Addr, now: float) -> None:
        try:
            msg = self._codec.open(data)
        except ProbeParseError:
            self._rejected += 1
            return
        self._received += 1
        if msg.kind == "ping":
            self._on_ping(msg, src, now)
        else:
            self._on_pong(msg, src, now)

    # -- attempts --------------------------------------------------------------------

    def _start_attempt(self, now: float) -> None:
        self._attempts += 1
        self._retry_at = None
        self.failure = None
        spray_delta, hopeless = assess(self.local_nat, self.peer_nat)
        if hopeless and any(c.kind == "portmap"
                            for c in (*self.local_candidates, *self.peer_candidates)):
            hopeless = None  # a mapped port takes anyone's first packet (punch/why.py)
        self._hopeless = hopeless
        keep = {a: p for a, p in self._pairs.items() if p.kind == "prflx"}
        self._pairs = {}
        self._waiting = []
        for cp in form_pairs(self.local_candidates, self.peer_candidates,
                             controlling=self._controlling):
            self._pairs[cp.remote] = _Pair(cp.remote, cp.kind, cp.priority)
        for addr, pair in keep.items():  # the peer's NAT may map it again the same way
            if addr not in self._pairs and len(self._pairs) < MAX_PAIRS:
                pair.reset()
                self._pairs[addr] = pair
        if spray_delta is not None:
            # Nearer guesses first: the peer's next mappings come next.
            prio = candidate_priority("predicted")
            for addr, step in predicted_ports(self.peer_candidates, self.peer_nat,
                                              spray_delta, taken=self._pairs):
                self._pairs[addr] = _Pair(addr, "predicted", prio - step)
        if self.selected is not None and self.selected not in self._pairs:
            self._pairs[self.selected] = _Pair(self.selected, "prflx",
                                               self._prflx_priority())
        if self.relay is not None:
            self._pairs[self.relay] = _Pair(self.relay, "relay", 0)
        if hopeless is not None:
            # Through the NATs it cannot work; two hosts on one LAN still can, directly,
            # and the relay can. A path already proven stays: it is kept alive on its pair.
            self._pairs = {a: p for a, p in self._pairs.items()
                           if p.lan or p.kind == "relay" or a == self.selected}
            if not self._pairs:
                self._fail(now, hopeless, RETRY_FIRST_HOPELESS)
                return
        if not self._pairs:
            self._fail(now, "the peer has no usable candidates", RETRY_FIRST)
            return
        for pair in self._pairs.values():
            pair.reset()
        self._waiting = sorted(self._pairs.values(), key=lambda p: -p.priority)
        self._transition("attempt")
        self._deadline = now + (PUNCH_TIMEOUT if hopeless is None else LAN_TIMEOUT)
        if self.relay is not None and self.relay in self._pairs:
            # The fallback is checked first, unpaced: after a lost path it is the way on.
            relay = self._pairs[self.relay]
            self._waiting.remove(relay)
            self._start_check(relay, now)
        self._next_pace = now
        self._pace(now)

    def _fail(self, now: float, reason: str, first: float) -> None:
        """No direct pair this attempt: schedule the next. Connected (through the relay),
        the path stays selected and kept alive meanwhile."""
        self._backoff = first if self._backoff == 0 else min(self._backoff * 2, RETRY_MAX)
        self._backoff = max(self._backoff, first)
        jitter = self._rng.uniform(0.9, 1.1)  # two peers' retries stay close, not lockstep
        self._retry_at = now + self._backoff * jitter
        self._deadline = None
        self._next_pace = None
        self._waiting = []
        for pair in self._pairs.values():
            pair.apply("stop")
        self._transition("give-up")
        self.failure = reason
        self._events.append(PunchFailed(reason, self._retry_at))

    def _pace(self, now: float) -> None:
        """Start the next check (or a burst of predicted ones) and schedule the next."""
        if not self._waiting:
            self._next_pace = None
            return
        burst = SPRAY_BURST if self._waiting[0].kind == "predicted" else 1
        for _ in range(burst):
            if not self._waiting:
                break
            self._start_check(self._waiting.pop(0), now)
        self._next_pace = now + TA

    def _start_check(self, pair: _Pair, now: float) -> None:
        if not pair.apply("start"):  # succeeded already, on a late pong of the last attempt
            return
        pair.stop_at = now + PUNCH_TIMEOUT
        pair.rto = RTO_INITIAL
        self._send_ping(pair, now)
        pair.next_tx = now + pair.rto

    def _transition(self, trigger: Trigger) -> None:
        """The one place the session's state changes, by :data:`TRANSITIONS`."""
        self._state = TRANSITIONS.get((self._state, trigger), self._state)

    # -- probes ----------------------------------------------------------------------

    def _send_ping(self, pair: _Pair, now: float) -> bytes:
        txid = self._rng.randbytes(wire.TXID_LEN)
        self._outstanding[txid] = (pair.remote, now)
        nonce = self._rng.randbytes(wire.NONCE_LEN)
        ping = wire.Probe("ping", txid, now + self.wall_offset)
        self._out.append((self._codec.seal(ping, nonce), pair.remote))
        self._sent += 1
        return txid

    def _on_ping(self, msg: wire.Probe, src: Addr, now: float) -> None:
        if not self._replay.accept(msg, now + self.wall_offset):
            self._replays += 1
            return
        pong = wire.Probe("pong", msg.txid, now + self.wall_offset, observed=src)
        self._out.append((self._codec.seal(pong, self._rng.randbytes(wire.NONCE_LEN)), src))
        self._sent += 1
        if self._state in ("idle", "failed"):
            self._start_attempt(now)  # the peer is punching: join in
        pair = self._pairs.get(src)
        if pair is None:
            if len(self._pairs) >= MAX_PAIRS + SPRAY_BUDGET:
                return
            pair = self._pairs[src] = _Pair(src, "prflx", self._prflx_priority())
        if pair.state == "in-progress":
            # In progress but unanswered: our earlier pings may have met a closed NAT or
            # a peer not listening yet. The peer's ping says it listens now: ask again
            # at once instead of waiting out the backoff (RFC 8445 §7.3.1.4).
            self._send_ping(pair, now)
            pair.rto = RTO_INITIAL
            pair.next_tx = now + pair.rto
        elif pair.state in ("waiting", "failed"):
            # Triggered check (RFC 8445 §7.3.1.4): answer their ping with ours at once.
            if pair in self._waiting:
                self._waiting.remove(pair)
            self._start_check(pair, now)
            if self._state == "failed":
                # Judged hopeless, yet the peer's ping got through: try this pair.
                self._transition("peer-check")
                self._retry_at = None
                self._deadline = now + PUNCH_TIMEOUT

    def _on_pong(self, msg: wire.Probe, src: Addr, now: float) -> None:
        tx = self._outstanding.get(msg.txid)
        if tx is None or tx[0] != src:
            self._replays += 1  # not ours, already answered, or from elsewhere
            return
        del self._outstanding[msg.txid]
        pair = self._pairs.get(src)
        if pair is None:
            return
        rtt = now - tx[1]
        self.pongs.append(Pong(msg.txid, src, rtt))
        pair.rtt = rtt if pair.rtt is None else 0.75 * pair.rtt + 0.25 * rtt
        self.observed = msg.observed
        if src == self.selected:
            self._last_pong = now
            self.selected_rtt = pair.rtt
        self._maybe_succeed(pair, pair.rtt, now)

    # -- selection -------------------------------------------------------------------

    def _maybe_succeed(self, pair: _Pair, rtt: float, now: float) -> None:
        if not pair.apply("answer"):  # succeeded before: its RTT is updated, no more
            return
        if self.selected is None:
            self._select(pair, now)
            self._events.append(PathFound(pair.remote, rtt))
            return
        current = self._pairs.get(self.selected)
        if current is None or self._better(pair, current, now):
            old = self.selected
            self._select(pair, now)
            self._last_switch = now
            self._events.append(PathChanged(old, pair.remote, rtt))

    def _better(self, new: _Pair, cur: _Pair, now: float) -> bool:
        if new.rank != cur.rank:
            return new.rank > cur.rank
        if cur.rtt is None or new.rtt is None or now - self._last_switch < SWITCH_HOLD:
            return False
        return new.rtt < cur.rtt * RTT_SWITCH_RATIO and cur.rtt - new.rtt > RTT_SWITCH_MIN

    def _select(self, pair: _Pair, now: float) -> None:
        # Guesses are only worth their datagrams until a direct path works; and nothing
        # replaces a path but one of the same or a higher rank.
        def useless(other: _Pair) -> bool:
            return (other.kind == "predicted" and pair.rank > 0) or other.rank < pair.rank

        for other in self._pairs.values():
            if useless(other):
                other.apply("stop")
        self._waiting = [p for p in self._waiting if not useless(p)]
        self.selected = pair.remote
        self.selected_rtt = pair.rtt
        self._transition("pair-succeeded")
        if pair.rank > 0:  # direct: done; through the relay, direct attempts go on
            self.failure = None
            self._backoff = 0.0
            self._retry_at = None
        self._last_pong = self._ka_sent = now
        self._fast_until = now + FRESH_FOR
        self._lost_floor = 0.0
        self._next_keepalive = now + KEEPALIVE

    # -- keepalive pace (see the header) ---------------------------------------------

    def _direct(self) -> bool:
        kind = self.selected_kind
        return kind is not None and kind != "relay"

    def _idle(self, now: float) -> bool:
        """An idle direct path: kept alive at KEEPALIVE_IDLE's pace."""
        return now >= self._fast_until and self._direct()

    def _lost_at(self) -> float:
        """When the selected path counts as lost without another pong: at the fast
        pace's loss time while that pace holds, else at the idle pace's."""
        fast = max(self._last_pong + LOST_AFTER, self._lost_floor)
        if fast < self._fast_until or not self._direct():
            return fast
        return max(self._last_pong + LOST_AFTER_IDLE, self._lost_floor)

    def _prflx_priority(self) -> int:
        local = candidate_priority("host")
        remote = candidate_priority("prflx")
        g, d = (local, remote) if self._controlling else (remote, local)
        return pair_priority(g, d)

    def _expire_transactions(self, now: float) -> None:
        if len(self._outstanding) < 256:
            return
        cutoff = now - TX_LIFETIME
        self._outstanding = {t: v for t, v in self._outstanding.items() if v[1] >= cutoff}

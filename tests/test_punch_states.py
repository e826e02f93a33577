"""Every (state, input) pair of the punch session, h2-style: drive a session into each
state (by each way there is), apply each input, and check the state it ends in against
both a literal expectation and the transition table, with the invariants; then random
input sequences, which must never raise nor break an invariant. Times, seeds, garbage
and orders come from hypothesis; the peer is hand-played on float time."""

from __future__ import annotations

import heapq
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punchd.punch import session as sess
from punchd.punch.candidates import candidate
from punchd.punch.session import (
    FRESH_FOR,
    KEEPALIVE,
    KEEPALIVE_IDLE,
    LOST_AFTER_IDLE,
    PAIR_TRANSITIONS,
    PUNCH_TIMEOUT,
    TRANSITIONS,
    PunchFailed,
    PunchSession,
    State,
    Trigger,
)
from punchd.wire import probe as w
from punchd.wire.addr import Addr
from punchd.wire.api import Candidate, NatReport

from .test_prediction import APDM, nat
from .test_probe import A, B

B_CODEC = w.ProbeCodec(B, A.public_key)
LAN_B, PUB_B, NEW_B = ("10.0.0.3", 51820), ("203.0.113.1", 51820), ("203.0.113.1", 61000)
RELAY, RELAY2 = ("192.0.2.20", 40000), ("192.0.2.20", 40002)
SYMMETRIC = nat(APDM, APDM, (7, 93))  # random ports: hopeless against another such


class Peer:
    """The session under test and a hand-played peer: it answers our pings sent to the
    addresses in ``answering`` after ``rtt``; time is a float moved by :meth:`run`."""

    def __init__(self, peer_candidates: list[Candidate], nats: NatReport | None,
                 seed: int, t0: float) -> None:
        self.s = PunchSession(
            local_key=A, peer_key=B.public_key,
            local_candidates=[candidate("host", ("10.0.0.2", 51820))],
            peer_candidates=peer_candidates, peer_nat=nats, local_nat=nats,
            now=t0, rng=random.Random(seed))
        self.now = t0
        self.answering: set[Addr] = set()
        self.rtt = 0.01
        self.pings: list[tuple[bytes, Addr]] = []  # (txid, destination), in order sent
        self._due: list[tuple[float, int, bytes, Addr]] = []  # pongs on their way
        self._n = 0

    def pump(self) -> None:
        for data, dest in self.s.datagrams_to_send():
            msg = B_CODEC.open(data)
            if msg.kind != "ping":
                continue
            self.pings.append((msg.txid, dest))
            if dest in self.answering:
                pong = B_CODEC.seal(w.Probe("pong", msg.txid, self.now, ("192.0.2.1", 1)))
                self._n += 1
                heapq.heappush(self._due, (self.now + self.rtt, self._n, pong, dest))

    def run(self, until: float) -> None:
        """Timers and the peer's pongs, in time order, up to ``until``."""
        for _ in range(10_000):
            deadline = self.s.next_deadline()
            pong_at = self._due[0][0] if self._due else None
            t = min((x for x in (deadline, pong_at) if x is not None), default=None)
            if t is None or t > until:
                break
            self.now = max(self.now, t)
            if pong_at is not None and pong_at <= self.now:
                _, _, data, src = heapq.heappop(self._due)
                self.s.handle_datagram(data, src, self.now)
            else:
                self.s.handle_timer(self.now)
            self.pump()
        else:
            raise AssertionError("the schedule did not settle")
        self.now = max(self.now, until)


# -- the states, and the ways into them ------------------------------------------------------

TWO = [candidate("host", LAN_B), candidate("srflx", PUB_B)]
WAYS: dict[str, State] = {
    "idle": "idle",
    "idle-empty": "idle",  # the peer has no candidates (yet)
    "punching": "punching",
    "connected-direct": "connected",
    "connected-relay": "connected",
    "failed-timeout": "failed",  # no pair answered within PUNCH_TIMEOUT
    "failed-empty": "failed",  # no candidates: at once
    "failed-hopeless": "failed",  # both NATs symmetric with random ports: at once
}


def into(way: str, seed: int, t0: float) -> Peer:
    empty = way in ("idle-empty", "failed-empty")
    if way == "failed-hopeless":
        p = Peer([candidate("srflx", PUB_B)], SYMMETRIC, seed, t0)
    else:
        p = Peer([] if empty else TWO, None, seed, t0)
    if way == "connected-direct":
        p.answering = {PUB_B}  # the LAN pair stays unanswered: a public path
    elif way == "connected-relay":
        p.answering = {RELAY}
        p.s.set_relay(RELAY, p.now)
    if way not in ("idle", "idle-empty"):
        p.s.punch(p.now)
        p.pump()
    if way.startswith("connected"):
        p.run(t0 + 0.3)
    elif way == "failed-timeout":
        p.run(t0 + PUNCH_TIMEOUT + 0.1)
    p.s.events()
    assert p.s.state == WAYS[way]
    return p


# -- the inputs ---------------------------------------------------------------------------

INPUTS = ["punch", "timer", "ping", "pong", "garbage", "update_peer", "update_local",
          "relay", "relay-none", "wait", "silence", "hopeless-punch", "traffic"]


def apply(p: Peer, kind: str, data: st.DataObject) -> None:
    s = p.s
    if kind == "punch":
        s.punch(p.now)
    elif kind == "timer":  # the next deadline comes (or any time, with none)
        deadline = s.next_deadline()
        p.now = max(p.now, deadline if deadline is not None else p.now)
        s.handle_timer(p.now)
    elif kind == "ping":  # from a pair's address, or one the peer's NAT just made
        src = data.draw(st.sampled_from([PUB_B, NEW_B]), label="ping from")
        txid = data.draw(st.binary(min_size=16, max_size=16), label="txid")
        s.handle_datagram(B_CODEC.seal(w.Probe("ping", txid, p.now)), src, p.now)
    elif kind == "pong":  # the peer answers our latest check, or sends one unasked
        checks = [(t, d) for t, d in p.pings if d != s.selected] or p.pings
        txid, dest = checks[-1] if checks else (b"\0" * 16, PUB_B)
        p.now += data.draw(st.floats(0.0, 0.2), label="pong rtt")
        s.handle_datagram(B_CODEC.seal(w.Probe("pong", txid, p.now, ("192.0.2.1", 1))),
                          dest, p.now)
    elif kind == "garbage":
        junk = data.draw(st.binary(max_size=200) | st.just(w.MAGIC + bytes(60)),
                         label="garbage")
        s.handle_datagram(junk, PUB_B, p.now)
    elif kind == "update_peer":
        cands = data.draw(st.lists(st.sampled_from(
            [*TWO, candidate("srflx", NEW_B), candidate("relay", RELAY)]), max_size=3))
        s.update_peer(cands, data.draw(st.sampled_from([None, SYMMETRIC])))
    elif kind == "update_local":
        s.update_local(s.local_candidates, data.draw(st.sampled_from([None, SYMMETRIC])))
    elif kind == "relay":
        if data.draw(st.booleans(), label="relay answers"):
            p.answering.add(RELAY2)
        s.set_relay(RELAY2, p.now)
    elif kind == "relay-none":
        s.set_relay(None, p.now)
    elif kind == "wait":  # an attempt's worth of time, the peer answering as before
        p.run(p.now + PUNCH_TIMEOUT + 0.1)
    elif kind == "silence":  # the peer stops answering, for longer than any loss time
        p.answering.clear()
        p.run(p.now + LOST_AFTER_IDLE + 0.3)
    elif kind == "traffic":  # WireGuard's counters moved: never a change of state
        s.note_traffic(p.now)
    elif kind == "hopeless-punch":  # rediscovery: both NATs now symmetric; then punch
        s.update_local(s.local_candidates, SYMMETRIC)
        s.update_peer(s.peer_candidates, SYMMETRIC)
        s.punch(p.now)
    else:
        raise AssertionError(kind)
    p.pump()


def check_invariants(p: Peer) -> None:
    s = p.s
    assert (s.state == "connected") is (s.selected is not None)
    if s.state == "connected":
        assert s.selected_kind is not None  # the path's pair is kept (and kept alive)
    deadline = s.next_deadline()
    if s.state in ("punching", "connected", "failed"):
        assert deadline is not None and deadline < float("inf")
    if s.state == "idle":
        assert deadline is None
    if s.state == "failed":
        assert s.failure
        # No check outstanding: nothing is due before the retry.
        pairs = s._pairs.values()  # (inspecting the core: pair states are not public)
        assert all(pair.state != "in-progress" for pair in pairs)
    for event in s.events():
        if isinstance(event, PunchFailed):
            assert event.retry_at > p.now  # never a tight loop


# -- every (way into a state, input): triggers the input fires there, and the end state ---

N: tuple[Trigger, ...] = ()
EXPECTED: dict[tuple[str, str], tuple[tuple[Trigger, ...], State]] = {}


def expect(way: str, default: State, **special: tuple[tuple[Trigger, ...], State]) -> None:
    for kind in INPUTS:
        EXPECTED[way, kind] = special.get(kind.replace("-", "_"), (N, default))


expect("idle", "idle", punch=(("attempt",), "punching"), ping=(("attempt",), "punching"),
       relay=(("attempt",), "punching"), hopeless_punch=(("attempt",), "punching"))
expect("idle-empty", "idle", punch=(("give-up",), "failed"),
       hopeless_punch=(("give-up",), "failed"),
       ping=(("give-up", "peer-check"), "punching"), relay=(("attempt",), "punching"))
expect("punching", "punching", punch=(("attempt",), "punching"),
       hopeless_punch=(("attempt",), "punching"),  # the LAN pair is still worth a try
       pong=(("pair-succeeded",), "connected"), relay=(("attempt",), "punching"),
       wait=(("give-up",), "failed"))
for way, ends in (("connected-direct", N), ("connected-relay", ("give-up",))):
    expect(way, "connected", punch=(("attempt",), "connected"),
           hopeless_punch=(("attempt",), "connected"),  # the proven path stays
           pong=(("pair-succeeded",), "connected"),  # a better pair: PathChanged
           relay=(("attempt",), "connected"), wait=(ends, "connected"),
           silence=(("path-lost", "attempt"), "punching"))
expect("failed-timeout", "failed", punch=(("attempt",), "punching"),
       hopeless_punch=(("attempt",), "punching"),
       timer=(("attempt",), "punching"), ping=(("attempt",), "punching"),
       pong=(("pair-succeeded",), "connected"), relay=(("attempt",), "punching"))
for way in ("failed-empty", "failed-hopeless"):
    expect(way, "failed", punch=(("give-up",), "failed"), timer=(("give-up",), "failed"),
           hopeless_punch=(("give-up",), "failed"),
           ping=(("give-up", "peer-check"), "punching"), relay=(("attempt",), "punching"))


def fold(state: State, triggers: tuple[Trigger, ...]) -> State:
    for trigger in triggers:
        state = TRANSITIONS.get((state, trigger), state)
    return state


def test_the_expectations_are_the_table_and_use_every_row() -> None:
    used: set[tuple[State, Trigger]] = set()
    for (way, _kind), (triggers, end) in EXPECTED.items():
        assert fold(WAYS[way], triggers) == end
        state = WAYS[way]
        for trigger in triggers:
            if (state, trigger) in TRANSITIONS:
                used.add((state, trigger))
            state = TRANSITIONS.get((state, trigger), state)
    assert used == set(TRANSITIONS)
    assert len(EXPECTED) == len(WAYS) * len(INPUTS)


@pytest.mark.parametrize(("way", "kind"), list(EXPECTED))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), t0=st.floats(0.0, 1e6), data=st.data())
def test_every_state_and_input(way: str, kind: str, seed: int, t0: float,
                               data: st.DataObject) -> None:
    p = into(way, seed, t0)
    check_invariants(p)
    apply(p, kind, data)
    triggers, end = EXPECTED[way, kind]
    assert p.s.state == end == fold(WAYS[way], triggers)
    check_invariants(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(way=st.sampled_from(list(WAYS)), seed=st.integers(0, 2**32 - 1),
       t0=st.floats(0.0, 1e6), kinds=st.lists(st.sampled_from(INPUTS), max_size=12),
       data=st.data())
def test_random_input_sequences_never_raise_and_keep_the_invariants(
        way: str, seed: int, t0: float, kinds: list[str], data: st.DataObject) -> None:
    p = into(way, seed, t0)
    for kind in kinds:
        before = p.s.state
        apply(p, kind, data)
        check_invariants(p)
        if kind in ("garbage", "update_peer", "update_local", "traffic"):
            assert p.s.state == before  # these never move the state


def keepalive_gaps(p: Peer, seconds: float) -> list[float]:
    """Times between the pings on the selected path over ``seconds``, peer answering."""
    selected = p.s.selected
    times: list[float] = []
    end = p.now + seconds
    for _ in range(10_000):
        before = len(p.pings)
        p.run(min(end, (p.s.next_deadline() or end)))
        times += [p.now] * sum(1 for _, d in p.pings[before:] if d == selected)
        if p.now >= end:
            break
    return [b - a for a, b in itertools.pairwise(times)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), t0=st.floats(0.0, 1e6),
       idle_for=st.floats(0.0, 120.0), traffic=st.booleans())
def test_keepalive_pace_is_the_nats_for_an_idle_direct_path(
        seed: int, t0: float, idle_for: float, traffic: bool) -> None:
    """The rule (issue #22): a connected direct path, past FRESH_FOR and without
    traffic, is pinged every KEEPALIVE_IDLE; with traffic (or on the relay), every
    KEEPALIVE. Fails if the idle pace is removed or applied to a busy path."""
    p = into("connected-direct", seed, t0)
    p.run(p.now + FRESH_FOR + idle_for)
    if traffic:
        p.s.note_traffic(p.now)
    gaps = keepalive_gaps(p, 30.0 if not traffic else 5.0)
    assert p.s.state == "connected" and gaps
    pace = KEEPALIVE if traffic else KEEPALIVE_IDLE
    assert all(abs(g - pace) < 0.05 for g in gaps[1:]), (pace, gaps)


def test_the_relay_path_keeps_the_fast_pace() -> None:
    p = into("connected-relay", 1, 0.0)
    p.run(p.now + FRESH_FOR + 30.0)
    gaps = keepalive_gaps(p, 10.0)
    # (an attempt's check of the relay pair may come between: never slower)
    assert gaps and all(g <= KEEPALIVE + 0.05 for g in gaps)


# -- the tables and the header -------------------------------------------------------------

def test_the_header_shows_the_table() -> None:
    rows = [f"    {a:<10} --{t}-->{' ' * (16 - len(t))}{b}"
            for (a, t), b in TRANSITIONS.items()]
    assert "\n".join(rows) in (sess.__doc__ or "")


def test_the_pair_table() -> None:
    # RFC 8445 §6.1.2.6 names; succeeded is final within an attempt.
    assert {a for a, _ in PAIR_TRANSITIONS} | set(PAIR_TRANSITIONS.values()) == {
        "waiting", "in-progress", "succeeded", "failed"}
    assert not any(a == "succeeded" for a, _ in PAIR_TRANSITIONS)
    assert PAIR_TRANSITIONS["in-progress", "answer"] == "succeeded"
    assert ("waiting", "stop") not in PAIR_TRANSITIONS  # a pair not checked yet stays so

"""The punch session alone (hand-fed probes), on the simulated network (path loss,
rebinding, retry backoff), the candidate arithmetic, and the trio driver under
MockClock."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from punchd.punch import session as sess
from punchd.punch.candidates import (
    candidate,
    candidate_priority,
    form_pairs,
    pair_priority,
)
from punchd.punch.driver import PunchDriver
from punchd.punch.prediction import SPRAY_BUDGET
from punchd.punch.session import (
    FRESH_FOR,
    KEEPALIVE,
    KEEPALIVE_IDLE,
    LOST_AFTER,
    LOST_AFTER_IDLE,
    PUNCH_TIMEOUT,
    RETRY_MAX,
    TA,
    PathChanged,
    PathFound,
    PathLost,
    PunchEvent,
    PunchFailed,
    PunchSession,
)
from punchd.wire import probe as w
from punchd.wire.addr import Addr, parse_addr
from punchd.wire.api import Candidate

from .natsim import Node, Simulation, build_pair, discover
from .test_prediction import APDM, nat
from .test_probe import A, B

LAN_B, PUB_B, PUB_B2 = ("10.0.0.3", 51820), ("203.0.113.1", 51820), ("203.0.113.1", 40000)


# -- candidates ---------------------------------------------------------------------------

def test_candidate_priority_is_rfc_8445() -> None:
    # §5.1.2.1 with the recommended type preferences, local preference 65535, component 1
    assert candidate_priority("host") == 2130706431  # the well-known ICE host value
    assert candidate_priority("srflx") == (100 << 24) + (65535 << 8) + 255 == 1694498815
    assert candidate_priority("prflx") == (110 << 24) + (65535 << 8) + 255
    assert candidate_priority("relay") == 16777215
    assert candidate_priority("host", 0, 2) == (126 << 24) + 254
    with pytest.raises(ValueError):
        candidate_priority("host", 70000)


def test_pair_priority_is_rfc_8445() -> None:
    # §6.1.2.3: 2^32·MIN(G,D) + 2·MAX(G,D) + (G>D?1:0)
    assert pair_priority(10, 20) == (10 << 32) + 40
    assert pair_priority(20, 10) == (10 << 32) + 40 + 1
    assert pair_priority(7, 7) == (7 << 32) + 14


def test_pairs_are_pruned_ordered_and_limited() -> None:
    local = [candidate("host", ("10.0.0.2", 51820)), candidate("srflx", ("198.51.100.1", 5))]
    remote = [candidate("srflx", ("203.0.113.1", 51820)), candidate("host", LAN_B),
              candidate("prflx", ("203.0.113.1", 51820)),  # same address: best kept
              candidate("relay", ("192.0.2.99", 3478)),  # the relay is not punched
              candidate("host", ("2001:db8::3", 51820)),  # no local IPv6
              Candidate(kind="host", address="garbage")]
    pairs = form_pairs(local, remote, controlling=True)
    assert [(p.remote, p.kind) for p in pairs] == [
        (LAN_B, "host"), (("203.0.113.1", 51820), "prflx")]
    many = [candidate("srflx", ("203.0.113.1", port)) for port in range(1000, 1300)]
    assert len(form_pairs(local, many, controlling=False)) == 100  # RFC 8445 §6.1.2.5


# -- the session, hand-fed -----------------------------------------------------------------

def a_session(peer_candidates: list[Candidate] | None = None) -> PunchSession:
    return PunchSession(
        local_key=A, peer_key=B.public_key,
        local_candidates=[candidate("host", ("10.0.0.2", 51820))],
        peer_candidates=peer_candidates if peer_candidates is not None else [
            candidate("host", LAN_B), candidate("srflx", PUB_B), candidate("srflx", PUB_B2)],
        peer_nat=None, now=0.0, rng=random.Random(5))


B_CODEC = w.ProbeCodec(B, A.public_key)


def peer_ping(txid: bytes = b"p" * 16, ts: float = 0.0) -> bytes:
    return B_CODEC.seal(w.Probe("ping", txid, ts))


def drive_to(s: PunchSession, until: float) -> list[tuple[float, Addr]]:
    """Run a session's timers alone (no answers); the (time, destination) it sent."""
    sent: list[tuple[float, Addr]] = [(0.0, d) for _, d in s.datagrams_to_send()]
    while (t := s.next_deadline()) is not None and t <= until:
        s.handle_timer(t)
        sent.extend((t, d) for _, d in s.datagrams_to_send())
    return sent


def test_idle_until_punched() -> None:
    s = a_session()
    assert (s.state, s.next_deadline(), s.datagrams_to_send(), s.events()) == (
        "idle", None, [], [])


def test_checks_are_paced_by_ta_and_retransmitted_with_backoff() -> None:
    s = a_session()
    s.punch(0.0)
    sent = drive_to(s, 10.0)
    first: dict[Addr, float] = {}
    for t, d in sent:
        first.setdefault(d, t)
    # priority order (host first), one new check every Ta (RFC 8445 §14.2)
    assert list(first) == [LAN_B, PUB_B2, PUB_B] or list(first) == [LAN_B, PUB_B, PUB_B2]
    assert sorted(first.values()) == pytest.approx([0.0, TA, 2 * TA])
    lan = [t for t, d in sent if d == LAN_B]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(lan)]
    assert gaps[:5] == [0.1, 0.2, 0.4, 0.8, 1.0]  # doubling, capped
    assert max(lan) < PUNCH_TIMEOUT  # each check ends with the attempt
    failed = [e for e in s.events() if isinstance(e, PunchFailed)]
    assert len(failed) == 1 and s.state == "failed"
    assert 9.0 <= failed[0].retry_at - PUNCH_TIMEOUT <= 11.0  # retry backoff, jittered


def state(s: PunchSession) -> str:
    return s.state  # (a fresh read: mypy would keep an earlier narrowing)


class Fed:
    """A session whose sent pings are remembered, answered by hand as the peer."""

    def __init__(self, s: PunchSession) -> None:
        self.s = s
        self.pings: dict[Addr, list[w.Probe]] = {}

    def pump(self) -> None:
        for data, to in self.s.datagrams_to_send():
            msg = B_CODEC.open(data)
            if msg.kind == "ping":
                self.pings.setdefault(to, []).append(msg)

    def complete(self, dest: Addr, now: float, rtt: float, tag: bytes) -> None:
        """The peer pings us from ``dest`` and answers our latest ping to it."""
        self.s.handle_datagram(peer_ping(tag * 16, now), dest, now)
        self.pump()
        txid = self.pings[dest][-1].txid
        self.s.handle_datagram(B_CODEC.seal(w.Probe("pong", txid, now, ("192.0.2.1", 1))),
                               dest, now + rtt)
        self.pump()


def test_path_found_then_lan_replaces_public_at_once() -> None:
    f = Fed(a_session())
    f.s.punch(0.0)
    f.pump()
    while (t := f.s.next_deadline()) is not None and t < 0.3:
        f.s.handle_timer(t)
        f.pump()
    assert set(f.pings) == {LAN_B, PUB_B, PUB_B2}
    # a pong from elsewhere is not a path; the pong from the address pinged is one
    f.s.handle_datagram(B_CODEC.seal(w.Probe("pong", f.pings[PUB_B][-1].txid, 0.3,
                                             ("192.0.2.1", 1))), PUB_B2, 0.31)
    assert state(f.s) == "punching"
    f.s.handle_datagram(B_CODEC.seal(w.Probe("pong", f.pings[PUB_B][-1].txid, 0.3,
                                             ("192.0.2.1", 1))), PUB_B, 0.32)
    assert state(f.s) == "connected" and f.s.selected == PUB_B
    assert [type(e) for e in f.s.events()] == [PathFound]
    f.pump()
    # then the LAN pair completes, with a worse RTT even: LAN replaces public at once
    f.complete(LAN_B, 0.4, 0.080, b"b")
    [changed] = f.s.events()
    assert isinstance(changed, PathChanged) and (changed.old, changed.new) == (PUB_B, LAN_B)
    assert f.s.selected == LAN_B
    # and nothing public replaces a LAN path
    f.complete(PUB_B2, 20.0, 0.001, b"c")
    assert f.s.events() == [] and f.s.selected == LAN_B


def test_rtt_switch_needs_a_clear_margin_and_holds() -> None:
    def fed() -> Fed:
        f = Fed(a_session([candidate("srflx", PUB_B), candidate("srflx", PUB_B2)]))
        f.s.punch(0.0)
        f.pump()
        return f

    # The first pair was pinged at 0 (and the second not yet): answered after 50 ms.
    f = fed()
    first, second = PUB_B2, PUB_B  # equal priority: by address
    assert list(f.pings) == [first]
    f.complete(first, 0.0, 0.050, b"a")
    assert f.s.selected == first
    f.complete(second, 0.2, 0.045, b"b")  # 10 % better: not enough
    assert f.s.selected == first
    assert [type(e) for e in f.s.events()] == [PathFound]
    f = fed()
    f.complete(first, 0.0, 0.050, b"a")
    f.complete(second, 0.2, 0.010, b"b")  # 5x better: switch
    assert f.s.selected == second
    assert [type(e) for e in f.s.events()] == [PathFound, PathChanged]


def test_a_peers_ping_makes_a_prflx_pair_and_wakes_an_idle_session() -> None:
    s = a_session([candidate("srflx", PUB_B)])
    elsewhere = ("203.0.113.1", 61000)  # the peer's NAT mapped its ping anew
    s.handle_datagram(peer_ping(), elsewhere, 0.0)
    assert s.state == "punching"
    out = s.datagrams_to_send()
    kinds = {(B_CODEC.open(d).kind, to) for d, to in out}
    assert ("pong", elsewhere) in kinds and ("ping", elsewhere) in kinds  # triggered check
    pong = next(B_CODEC.open(d) for d, to in out if to == elsewhere and
                B_CODEC.open(d).kind == "pong")
    assert pong.observed == elsewhere
    ping = next(B_CODEC.open(d) for d, to in out if to == elsewhere and
                B_CODEC.open(d).kind == "ping")
    s.handle_datagram(B_CODEC.seal(w.Probe("pong", ping.txid, 0.0, ("192.0.2.1", 1))),
                      elsewhere, 0.03)
    [found] = s.events()
    assert isinstance(found, PathFound) and s.selected == found.addr == elsewhere
    assert found.rtt == pytest.approx(0.03)


def test_a_peers_ping_on_an_unanswered_pair_asks_again_at_once() -> None:
    # Our first pings met a peer that was not listening yet; its ping says it is now:
    # a new ping goes out at once, not after the backoff has grown.
    s = a_session([candidate("srflx", PUB_B)])
    s.punch(0.0)
    for t in (0.1, 0.3, 0.7):
        s.handle_timer(t)
    assert (s.next_deadline() or 0) > 1.0  # backed off
    s.datagrams_to_send()
    s.handle_datagram(peer_ping(), PUB_B, 0.9)
    out = [(B_CODEC.open(d).kind, to) for d, to in s.datagrams_to_send()]
    assert out == [("pong", PUB_B), ("ping", PUB_B)]
    assert s.next_deadline() == pytest.approx(0.9 + sess.RTO_INITIAL)


def test_a_hopeless_verdict_keeps_the_path_already_proven() -> None:
    # Connected on a public pair, then new NAT reports say punching cannot work (both map
    # per destination): the next attempt checks only LAN and relay pairs, but the proven
    # path stays selected and kept alive (it used to drop out of the pairs, and the next
    # keepalive raised KeyError).
    f = Fed(a_session([candidate("srflx", PUB_B)]))
    f.s.punch(0.0)
    f.pump()
    f.complete(PUB_B, 0.0, 0.020, b"a")
    assert state(f.s) == "connected" and f.s.selected == PUB_B
    symmetric = nat(APDM, APDM, (7, 93))
    f.s.update_local(f.s.local_candidates, symmetric)
    f.s.update_peer(f.s.peer_candidates, symmetric)
    f.s.punch(1.0)
    f.pump()
    for _ in range(100):  # bounded: a stuck schedule must fail, not spin
        t = f.s.next_deadline()
        if t is None or t >= 3.0:
            break
        f.s.handle_timer(t)
        f.pump()
        for ping in f.pings.get(PUB_B, [])[-1:]:  # the peer answers the keepalive
            f.s.handle_datagram(B_CODEC.seal(w.Probe("pong", ping.txid, t,
                                                     ("192.0.2.1", 1))), PUB_B, t + 0.01)
    assert state(f.s) == "connected" and f.s.selected == PUB_B
    assert f.s.selected_kind == "srflx"
    assert not any(isinstance(e, PathLost) for e in f.s.events())


def test_no_candidates_fails_at_once() -> None:
    s = a_session([])
    s.punch(0.0)
    [event] = s.events()
    assert isinstance(event, PunchFailed) and "no usable candidates" in event.reason


# -- on the simulated network ----------------------------------------------------------------

def connected(sim: Simulation, a: Node, b: Node) -> None:
    a.punch(sim.now)
    b.punch(sim.now)
    assert sim.run_until(sim.now + 1.0, stop=lambda: a.s.state == b.s.state == "connected")


def kinds(node: Node, since: float = 0.0) -> list[type[PunchEvent]]:
    return [type(e) for t, e in node.log if t >= since]


def test_keepalive_keeps_the_path_and_the_mappings() -> None:
    # NAT mappings that expire after 30 s unless refreshed by outbound traffic
    sim, a, b = build_pair("prc", "prc")
    for n in (a, b):
        assert n.nat is not None
        n.nat.timeout = 30.0
    connected(sim, a, b)
    sent = sim.net.stats.sent
    sim.run_until(300.0)
    assert kinds(a) == kinds(b) == [PathFound]
    # roughly one ping and one pong per side per KEEPALIVE, no more
    per_side = (sim.net.stats.sent - sent) / 2
    assert per_side <= 2 * 300 / KEEPALIVE * 1.1


def test_an_idle_direct_path_is_kept_alive_at_the_nats_pace() -> None:
    """Issue #22's rule: past FRESH_FOR, an idle direct path is pinged every
    KEEPALIVE_IDLE (not every KEEPALIVE), still well inside a 30 s NAT timeout."""
    sim, a, b = build_pair("prc", "prc")
    for n in (a, b):
        assert n.nat is not None
        n.nat.timeout = 30.0
    connected(sim, a, b)
    sim.run_until(FRESH_FOR + 1.0)
    sent, start = sim.net.stats.sent, sim.now
    sim.run_until(start + 300.0)
    assert kinds(a) == kinds(b) == [PathFound]  # no loss at the slower pace
    per_side = (sim.net.stats.sent - sent) / 2  # each side's pings and pongs
    assert per_side <= 2 * 300 / KEEPALIVE_IDLE * 1.1
    assert per_side >= 2 * 300 / KEEPALIVE_IDLE * 0.9  # and it does keep it alive
    assert KEEPALIVE_IDLE < 30.0 / 3  # three tries inside the shortest common NAT timeout


def test_a_path_carrying_traffic_is_kept_at_the_fast_pace() -> None:
    sim, a, b = build_pair("prc", "prc")
    connected(sim, a, b)
    sim.run_until(FRESH_FOR + 10.0)  # idle by now
    a.s.note_traffic(sim.now)  # WireGuard's counters moved
    b.s.note_traffic(sim.now)
    sent, start = sim.net.stats.sent, sim.now
    sim.run_until(start + 5.0)
    assert (sim.net.stats.sent - sent) / 2 >= 2 * 5.0 / KEEPALIVE * 0.9
    sim.net.down = True
    died = sim.now
    assert sim.run_until(died + 10.0, stop=lambda: PathLost in kinds(a))
    assert sim.now - died <= LOST_AFTER + 0.1  # the ~2 s fallback of a busy path


def test_short_outage_is_not_path_loss() -> None:
    sim, a, b = build_pair("prc", "prc")
    connected(sim, a, b)
    sim.run_until(10.0)
    sim.net.down = True
    sim.run_until(10.0 + LOST_AFTER / 2)  # a blip, shorter than what counts as loss
    sim.net.down = False
    sim.run_until(30.0)
    assert kinds(a) == kinds(b) == [PathFound]


def test_path_loss_is_detected_and_repunched() -> None:
    sim, a, b = build_pair("cone", "sym")
    connected(sim, a, b)
    sim.run_until(10.0)
    sim.net.down = True
    start = sim.now
    assert sim.run_until(40.0, stop=lambda: PathLost in kinds(a) and PathLost in kinds(b))
    assert sim.now - start <= LOST_AFTER_IDLE + 0.1  # idle: at the NAT's pace
    assert a.s.state == "punching"  # straight into a new attempt
    sent_during = sim.net.stats.sent
    sim.run_until(sim.now + 60.0)  # still down: attempts fail, retries back off
    assert PunchFailed in kinds(a)
    assert sim.net.stats.sent - sent_during < 400  # never a tight loop
    sim.net.down = False
    up = sim.now
    assert sim.run_until(up + 120.0, stop=lambda: a.s.state == b.s.state == "connected")
    assert kinds(a, since=up)[-1] in (PathFound, PathChanged)
    assert sim.now - up <= 60.0  # the next retry finds it


def test_nat_rebinding_recovers_after_rediscovery() -> None:
    """conntrack -F on both NATs, whose ports are sequential: the old mappings are gone
    and new ones use other ports. The path is lost; the daemon re-runs discovery and
    re-punches with the new candidates."""
    sim, a, b = build_pair("prc", "prc")
    for n in (a, b):
        assert n.nat is not None
        n.nat.ports = "sequential"
    connected(sim, a, b)
    sim.run_until(5.0)
    for n in (a, b):
        assert n.nat is not None
        n.nat.flush()
    assert sim.run_until(30.0, stop=lambda: PathLost in kinds(a) or PathLost in kinds(b))
    lost_at = sim.now
    for n in (a, b):  # what the daemon does on path loss: rediscover
        assert n.nat is not None
        n.report = discover(n.nat, n.addr, sim.now)
        assert n.report.public_endpoint is not None
        n.candidates = [candidate("host", n.addr),
                        candidate("srflx", parse_addr(n.report.public_endpoint))]
    for me, peer in ((a, b), (b, a)):
        me.s.update_local(me.candidates, me.report)
        me.s.update_peer(peer.candidates, peer.report)
    a.punch(sim.now)
    b.punch(sim.now)
    assert sim.run_until(lost_at + 2.0, stop=lambda: a.s.state == b.s.state == "connected")
    assert b.nat is not None and a.s.selected is not None
    assert a.s.selected[1] != 51820  # the new mapping


def test_hopeless_pair_retries_with_backoff_never_a_tight_loop() -> None:
    sim, a, b = build_pair("sym", "sym", share_nat_reports=False)
    a.punch(0.0)
    b.punch(0.0)
    sim.run_until(3600.0)
    fails = [(t, e) for t, e in a.log if isinstance(e, PunchFailed)]
    assert PathFound not in kinds(a)
    gaps = [e.retry_at - t for t, e in fails]
    assert gaps[0] == pytest.approx(10.0, rel=0.11)
    assert all(g2 >= g1 * 0.8 for g1, g2 in itertools.pairwise(gaps))
    assert max(gaps) <= RETRY_MAX * 1.1
    assert len(fails) <= 20  # an hour: 10, 20, 40, 80, 160, then every 5 min
    assert sim.net.stats.sent < 2000


def test_spray_is_bounded() -> None:
    sim, a, b = build_pair("prc", "symseq")
    prc_side = a
    connected(sim, a, b)
    assert prc_side.s.statistics().pairs <= 100 + SPRAY_BUDGET


# -- the trio driver -------------------------------------------------------------------------

async def test_driver_connects_two_sessions_over_channels(
        autojump_clock: trio.testing.MockClock) -> None:
    """Two drivers joined by memory channels, on trio's MockClock (autojump)."""
    addr_a, addr_b = ("192.0.2.1", 51820), ("192.0.2.2", 51820)
    cands_a, cands_b = [candidate("host", addr_a)], [candidate("host", addr_b)]
    now = trio.current_time()
    sa = PunchSession(local_key=A, peer_key=B.public_key, local_candidates=cands_a,
                      peer_candidates=cands_b, peer_nat=None, now=now, rng=random.Random(1))
    sb = PunchSession(local_key=B, peer_key=A.public_key, local_candidates=cands_b,
                      peer_candidates=cands_a, peer_nat=None, now=now, rng=random.Random(2))
    to_a_send, to_a = trio.open_memory_channel[tuple[bytes, Addr]](100)
    to_b_send, to_b = trio.open_memory_channel[tuple[bytes, Addr]](100)
    events: dict[str, list[tuple[float, PunchEvent]]] = {"a": [], "b": []}

    def wire(me: Addr, other: Addr, chan: trio.MemorySendChannel[tuple[bytes, Addr]]):  # type: ignore[no-untyped-def]
        async def send(data: bytes, dest: Addr) -> None:
            await trio.sleep(0.01)  # one-way latency
            if dest == other:
                await chan.send((data, me))
        return send

    def sink(name: str):  # type: ignore[no-untyped-def]
        return lambda e: events[name].append((trio.current_time(), e))

    da = PunchDriver(sa, wire(addr_a, addr_b, to_b_send), sink("a"))
    db = PunchDriver(sb, wire(addr_b, addr_a, to_a_send), sink("b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(da.run, to_a)
        await nursery.start(db.run, to_b)
        await trio.sleep(1.0)
        assert sa.state == sb.state == "idle"  # nothing until punched
        start = trio.current_time()
        da.punch()
        db.punch()
        await trio.sleep(0.5)
        for name in "ab":
            [(t, event)] = events[name]
            assert isinstance(event, PathFound) and t - start < 0.1
        await trio.sleep(60.0)  # keepalives flow
        assert state(sa) == state(sb) == "connected"
        assert sa.statistics().probes_sent < 2 * 60 / KEEPALIVE + 10
        to_a_send.close()  # the owner closes the channels: the drivers return
        to_b_send.close()


async def test_driver_survives_garbage_and_send_errors(
        autojump_clock: trio.testing.MockClock) -> None:
    s = a_session([candidate("host", LAN_B)])
    send_chan, recv = trio.open_memory_channel[tuple[bytes, Addr]](10)

    async def send(data: bytes, dest: Addr) -> None:
        raise OSError("network unreachable")

    d = PunchDriver(s, send)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run, recv)
        await send_chan.send((b"junk", LAN_B))
        d.punch()
        await trio.sleep(10.0)
        assert s.statistics().rejected == 1
        assert d.send_errors >= 5 and s.state == "failed"
        send_chan.close()


@pytest.mark.parametrize("judge_after_draining", [True, False])
async def test_a_reader_backlog_is_not_a_lost_path(
        autojump_clock: trio.testing.MockClock, judge_after_draining: bool) -> None:
    """Issue #22: A's shared-port reader falls behind (its pongs wait in the socket's
    backlog). Judged only once the reader has caught up, the path stays; judged on the
    clock alone (no ``caught_up``), the same backlog is a lost path."""
    addr_a, addr_b = ("192.0.2.1", 51820), ("192.0.2.2", 51820)
    cands_a, cands_b = [candidate("host", addr_a)], [candidate("host", addr_b)]
    now = trio.current_time()
    sa = PunchSession(local_key=A, peer_key=B.public_key, local_candidates=cands_a,
                      peer_candidates=cands_b, peer_nat=None, now=now, rng=random.Random(1))
    sb = PunchSession(local_key=B, peer_key=A.public_key, local_candidates=cands_b,
                      peer_candidates=cands_a, peer_nat=None, now=now, rng=random.Random(2))
    to_a_send, to_a = trio.open_memory_channel[tuple[bytes, Addr]](1000)
    to_b_send, to_b = trio.open_memory_channel[tuple[bytes, Addr]](1000)
    backlog: list[tuple[bytes, Addr]] = []
    behind = False

    async def a_sends(data: bytes, dest: Addr) -> None:
        await trio.sleep(0.01)
        await to_b_send.send((data, addr_a))

    async def b_sends(data: bytes, dest: Addr) -> None:
        await trio.sleep(0.01)
        if behind:
            backlog.append((data, addr_b))  # in the kernel's queue, not read yet
        else:
            await to_a_send.send((data, addr_b))

    lost: list[PunchEvent] = []
    da = PunchDriver(sa, a_sends, lambda e: lost.append(e) if isinstance(e, PathLost) else None,
                     caught_up=(lambda since: not behind) if judge_after_draining else None)
    db = PunchDriver(sb, b_sends)
    async with trio.open_nursery() as nursery:
        await nursery.start(da.run, to_a)
        await nursery.start(db.run, to_b)
        da.punch()
        db.punch()
        await trio.sleep(2.0)
        assert sa.state == "connected" and not lost
        behind = True
        for _ in range(200):  # until A's pong is overdue (bounded: the control never waits)
            if da.catch_up_waits or trio.current_time() - now > 2.0 + LOST_AFTER + 2 * KEEPALIVE:
                break
            await trio.sleep(0.05)
        await trio.sleep(0.2)
        behind = False  # the reader catches up: the backlog is handed on
        for item in backlog:
            to_a_send.send_nowait(item)
        await trio.sleep(LOST_AFTER)
        if judge_after_draining:
            assert da.catch_up_waits >= 1 and not lost and sa.state == "connected"
        else:
            assert lost  # the clock alone took the backlog for a lost path
        nursery.cancel_scope.cancel()  # (closing a channel mid-send would raise)

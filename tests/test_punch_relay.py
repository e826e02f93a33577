"""The punch session with a relay pair, on the simulated network: connected through the
relay when punching cannot work or has not yet, upgraded to direct when it does,
back to the relay within ~2 s when the direct path dies, and direct attempts retried
with backoff forever."""

from __future__ import annotations

import itertools

from punchd.punch.session import (
    KEEPALIVE,
    LOST_AFTER,
    RETRY_MAX,
    PathChanged,
    PathFound,
    PathLost,
    PunchFailed,
)

from .natsim import Node, SimRelay, Simulation, build_pair


def relayed(kind_a: str, kind_b: str) -> tuple[Simulation, Node, Node, SimRelay]:
    sim, a, b = build_pair(kind_a, kind_b)
    relay = SimRelay(sim.net)
    relay.bind(0, a, sim.now)
    relay.bind(1, b, sim.now)
    return sim, a, b, relay


def events(node: Node, kind: type) -> list[tuple[float, object]]:
    return [(t, e) for t, e in node.log if isinstance(e, kind)]


def test_symmetric_pair_connects_through_the_relay_at_once() -> None:
    sim, a, b, relay = relayed("sym", "sym")
    a.punch(sim.now)
    b.punch(sim.now)
    assert sim.run_until(0.5, stop=lambda: a.s.state == b.s.state == "connected")
    assert a.s.selected == relay.addrs[0] and b.s.selected == relay.addrs[1]
    assert a.s.selected_kind == b.s.selected_kind == "relay"
    assert relay.forwarded >= 4  # a ping and a pong each way
    [(_, found)] = events(a, PathFound)
    assert found.addr == relay.addrs[0]  # type: ignore[attr-defined]
    # The direct part is judged hopeless, and said so, but the path stays.
    sim.run_until(5.0)
    assert "relay" in (a.s.failure or "") and a.s.state == "connected"


def test_direct_attempts_go_on_forever_with_backoff_while_on_the_relay() -> None:
    sim, a, b, _relay = relayed("sym", "sym")
    a.punch(sim.now)
    b.punch(sim.now)
    sim.run_until(3600.0)
    fails = [t for t, _ in events(a, PunchFailed)]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(fails)]
    assert len(fails) >= 10  # still trying after an hour
    assert max(gaps) <= RETRY_MAX * 1.1 + 2 and gaps[-1] > gaps[0]  # backing off
    assert a.s.state == "connected" and a.s.selected_kind == "relay"
    assert events(a, PathLost) == []  # the relay path itself never dropped


def test_relay_first_then_direct_when_the_path_opens() -> None:
    sim, a, b, relay = relayed("prc", "prc")
    assert a.nat is not None and b.nat is not None
    sim.net.block(a.nat.public_ip, b.nat.public_ip)  # punching is "delayed"
    a.punch(sim.now)
    b.punch(sim.now)
    assert sim.run_until(0.5, stop=lambda: a.s.selected_kind == b.s.selected_kind == "relay")
    sim.run_until(8.0)
    assert a.s.selected_kind == "relay"
    sim.net.unblock(a.nat.public_ip, b.nat.public_ip)
    opened = sim.now
    assert sim.run_until(opened + 30.0, stop=lambda: a.s.selected_kind == b.s.selected_kind
                         == "srflx")
    [(t, changed)] = events(a, PathChanged)
    assert changed.old == relay.addrs[0]  # type: ignore[attr-defined]
    assert t - opened <= 15.0  # the first retry after the first failed attempt (~10 s)


def test_a_dead_direct_path_falls_back_to_the_relay_within_two_seconds() -> None:
    sim, a, b, _relay = relayed("prc", "cone")
    assert a.nat is not None and b.nat is not None
    a.punch(sim.now)
    b.punch(sim.now)
    assert sim.run_until(1.0, stop=lambda: a.s.selected_kind == b.s.selected_kind == "srflx")
    sim.run_until(9.0)
    a.s.note_traffic(sim.now)  # the path carries traffic (an idle one is slower to judge)
    b.s.note_traffic(sim.now)
    sim.run_until(10.0)
    sim.net.block(a.nat.public_ip, b.nat.public_ip)
    died = sim.now
    assert sim.run_until(died + 5.0, stop=lambda: a.s.selected_kind == b.s.selected_kind
                         == "relay")
    assert sim.now - died <= 2.0, sim.now - died
    assert sim.now - died >= LOST_AFTER - KEEPALIVE  # not before the loss is real
    # and direct again once the path is back
    sim.net.unblock(a.nat.public_ip, b.nat.public_ip)
    assert sim.run_until(sim.now + 30.0, stop=lambda: a.s.selected_kind == "srflx")


def test_the_relay_never_replaces_a_direct_path() -> None:
    sim, a, b, relay = relayed("cone", "cone")
    a.punch(sim.now)
    b.punch(sim.now)
    sim.run_until(30.0)
    assert a.s.selected_kind != "relay" and b.s.selected_kind != "relay"
    assert all(e.new != relay.addrs[0] for _, e in events(a, PathChanged))  # type: ignore[attr-defined]

"""Two punch sessions across the whole NAT matrix, on simulated time.

Each side is one of natsim.NAT_KINDS (none, full cone, address-restricted cone,
port-restricted cone, address-dependent mapping, symmetric with sequential ports,
symmetric with random ports); each node's NAT report comes from the real discovery
classifier through its simulated NAT, so this is the report punchd would publish.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from punchd.punch.session import LAN_TIMEOUT, PUNCH_TIMEOUT, PathFound, PunchFailed

from .natsim import NAT_KINDS, Node, Simulation, build_pair

KINDS = list(NAT_KINDS)
DEPENDENT = {"adm", "symseq", "sym"}  # mapping not endpoint-independent
PREDICTABLE = {"adm", "symseq"}  # sequential ports: discovery sees a constant delta


def expected_direct(a: str, b: str, *, reports: bool = True) -> bool:
    if a in DEPENDENT and b in DEPENDENT:
        # both guess: meets when both step predictably and one maps per address only
        return reports and {a, b} <= PREDICTABLE and "adm" in (a, b)
    for dep, other in ((a, b), (b, a)):
        if dep in DEPENDENT and other == "prc":
            # the prc side must guess the port: only with the peer's report, if predictable
            return reports and dep in PREDICTABLE
    return True


def punch(sim: Simulation, a: Node, b: Node, until: float = 30.0) -> None:
    a.punch(sim.now)
    b.punch(sim.now)
    sim.run_until(until, stop=lambda: all(
        n.first(PathFound) or n.first(PunchFailed) for n in (a, b)))


def public_address_of(node: Node) -> tuple[str, int | None]:
    return (node.nat.public_ip, None) if node.nat else (node.addr[0], node.addr[1])


PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.mark.parametrize(("ka", "kb"), PAIRS)
def test_matrix_with_nat_reports(ka: str, kb: str) -> None:
    sim, a, b = build_pair(ka, kb)
    punch(sim, a, b)
    if expected_direct(ka, kb):
        for me, peer in ((a, b), (b, a)):
            found = me.first(PathFound)
            assert found is not None, f"{me.name} did not go direct"
            t, event = found
            assert isinstance(event, PathFound)
            assert t <= 0.5  # the goal: direct within 0.5 s
            ip, port = public_address_of(peer)
            assert event.addr[0] == ip and (port is None or event.addr[1] == port)
            assert me.s.state == "connected" and me.s.selected == event.addr
            assert me.first(PunchFailed) is None
    else:
        for me in (a, b):
            failed = me.first(PunchFailed)
            assert failed is not None and me.first(PathFound) is None
            t, event = failed
            assert isinstance(event, PunchFailed)
            assert t <= LAN_TIMEOUT + 0.01  # said at once, so the pair goes to the relay
            assert "relay" in event.reason
            assert event.retry_at - t >= 50  # not a tight loop
            assert me.s.state == "failed"
    # the guesses a prc side sprays at a symmetric peer are bounded
    assert sim.net.stats.sent < 400


@pytest.mark.parametrize(("ka", "kb"), PAIRS)
def test_matrix_without_nat_reports(ka: str, kb: str) -> None:
    """Before discovery has run (no reports): no fail-fast verdict and no port
    prediction; what can work still goes direct and the rest fails by the deadline."""
    sim, a, b = build_pair(ka, kb, share_nat_reports=False)
    punch(sim, a, b)
    for me in (a, b):
        if expected_direct(ka, kb, reports=False):
            found = me.first(PathFound)
            assert found is not None and found[0] <= 0.5
        else:
            failed = me.first(PunchFailed)
            assert failed is not None and me.first(PathFound) is None
            assert PUNCH_TIMEOUT <= failed[0] <= PUNCH_TIMEOUT + 0.5
            assert "within" in failed[1].reason  # type: ignore[union-attr]


@pytest.mark.parametrize(("ka", "kb"), PAIRS)
def test_matrix_knowing_only_the_peers_report(ka: str, kb: str) -> None:
    """Each side knows the peer's NAT report, not its own: port prediction still works;
    a hopeless pair is still found out, by whichever side can tell, or by the deadline."""
    sim, a, b = build_pair(ka, kb, own_report=False)
    punch(sim, a, b)
    for me in (a, b):
        found, failed = me.first(PathFound), me.first(PunchFailed)
        if expected_direct(ka, kb):
            assert found is not None and found[0] <= 0.5
        else:
            assert failed is not None and found is None
            assert failed[0] <= PUNCH_TIMEOUT + 0.5


@pytest.mark.parametrize(("ka", "kb"), [
    ("prc", "prc"), ("cone", "sym"), ("cone", "prc"), ("none", "sym"), ("prc", "symseq")])
def test_lossy_network_still_goes_direct(ka: str, kb: str) -> None:
    """20 % loss each way, jitter, duplication and reordering, over several seeds."""
    times = []
    for seed in range(8):
        sim, a, b = build_pair(ka, kb, seed=seed, loss=0.2, jitter=0.02, duplicate=0.05,
                               reorder=0.1)
        punch(sim, a, b)
        for me in (a, b):
            found = me.first(PathFound)
            assert found is not None, f"seed {seed}: {me.name} did not go direct"
            times.append(found[0])
    assert max(times) < PUNCH_TIMEOUT
    assert statistics.median(times) < 1.0


@pytest.mark.parametrize("kind", ["prc", "sym"])
def test_two_hosts_behind_one_nat_go_direct_on_the_lan(kind: str) -> None:
    sim, a, b = build_pair(kind, kind, same_nat=True)
    punch(sim, a, b)
    for me, peer in ((a, b), (b, a)):
        found = me.first(PathFound)
        assert found is not None and found[0] < 0.05
        assert me.s.selected == peer.addr  # the LAN address, not a hairpin


def test_matrix_summary_counts() -> None:
    """The matrix as a table: which of the 28 NAT pairs go direct."""
    direct = {(a, b) for a, b in PAIRS if expected_direct(a, b)}
    assert len(PAIRS) == 28
    assert len(direct) == 23
    assert set(PAIRS) - direct == {("prc", "sym"), ("symseq", "symseq"), ("symseq", "sym"),
                                   ("adm", "sym"), ("sym", "sym")}

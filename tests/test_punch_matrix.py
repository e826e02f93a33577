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

from punchd.punch.prediction import assess
from punchd.punch.session import LAN_TIMEOUT, PUNCH_TIMEOUT, PathFound, PunchFailed

from .natsim import NAT_KINDS, Node, Simulation, build_pair

KINDS = list(NAT_KINDS)
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))

# The matrix as a table: the NAT pairs that cannot go direct; every other pair does.
# With NAT reports: both sides map per destination and cannot meet (they can only when
# both step predictably and one maps per address: adm/adm, adm/symseq), or one maps per
# destination with random ports and the other filters per address and port.
RELAY_ONLY = {("prc", "sym"), ("adm", "sym"), ("symseq", "symseq"), ("symseq", "sym"),
              ("sym", "sym")}
# Without reports nobody predicts ports: a side that maps per destination reaches a
# port-restricted peer, or another such side, only by a guess.
RELAY_ONLY_WITHOUT_REPORTS = RELAY_ONLY | {
    ("prc", "adm"), ("prc", "symseq"), ("adm", "adm"), ("adm", "symseq")}


def expected_direct(a: str, b: str, *, reports: bool = True) -> bool:
    return (a, b) not in (RELAY_ONLY if reports else RELAY_ONLY_WITHOUT_REPORTS)


def punch(sim: Simulation, a: Node, b: Node, until: float = 30.0) -> None:
    a.punch(sim.now)
    b.punch(sim.now)
    sim.run_until(until, stop=lambda: all(
        n.first(PathFound) or n.first(PunchFailed) for n in (a, b)))


def public_address_of(node: Node) -> tuple[str, int | None]:
    return (node.nat.public_ip, None) if node.nat else (node.addr[0], node.addr[1])


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


def test_the_matrix_is_the_table() -> None:
    """All 28 NAT pairs through the simulator and the real sessions: the pairs that went
    direct are exactly the table's, and assess() gives the same verdict from the two
    published reports, the same both ways round."""
    direct = set()
    for ka, kb in PAIRS:
        sim, a, b = build_pair(ka, kb)
        punch(sim, a, b)
        if a.s.state == b.s.state == "connected":
            direct.add((ka, kb))
        hopeless = assess(a.report, b.report)[1] is not None
        assert (assess(b.report, a.report)[1] is not None) is hopeless
        assert hopeless is ((ka, kb) in RELAY_ONLY), (ka, kb)
    assert len(PAIRS) == 28
    assert set(PAIRS) - direct == RELAY_ONLY

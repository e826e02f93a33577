"""Port prediction alone: the fail-fast verdict (:func:`assess`), the step of a
sequential allocator (:func:`predictable_delta`) and the ports to spray."""

from __future__ import annotations

import pytest

from punchd.punch.candidates import candidate
from punchd.punch.prediction import (
    MAX_PORT_DELTA,
    SPRAY_BUDGET,
    assess,
    predictable_delta,
    predicted_ports,
)
from punchd.wire.api import Candidate, NatReport

# -- assess: the fail-fast verdict (symmetric: both sides agree) ------------------------------------------------------------

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"


def nat(mapping: str, filtering: str, deltas: tuple[int, ...] = ()) -> NatReport:
    return NatReport(mapping=mapping, filtering=filtering,  # type: ignore[arg-type]
                     port_deltas=deltas)


@pytest.mark.parametrize(("local", "peer", "spray", "hopeless"), [
    (None, None, None, False),
    (nat(EIM, APDM), nat(EIM, APDM), None, False),
    (nat(EIM, APDM), nat(APDM, APDM, (1, 1)), 1, False),  # peer predictable: spray
    (nat(APDM, APDM, (1, 1)), nat(EIM, APDM), None, False),  # the peer sprays at us
    (nat(EIM, APDM), nat(ADM, APDM, (2, 0)), 2, False),
    (nat(EIM, APDM), nat(APDM, APDM, (517, -2000)), None, True),  # random ports
    (nat(EIM, APDM), nat(APDM, APDM, (500, 500)), None, True),  # too far to guess
    (nat(APDM, APDM, (7, 93)), nat(EIM, APDM), None, True),  # same verdict, other side
    (nat(EIM, ADM), nat(APDM, APDM, (7, 93)), None, False),  # ADF lets it in
    (nat(EIM, EIM), nat(APDM, APDM, (7, 93)), None, False),
    (nat(APDM, EIM, (1, 1)), nat(APDM, APDM, (1, 1)), None, True),  # both symmetric
    (nat(APDM, EIM, (1, 1)), nat(ADM, APDM, (1, 0)), 1, False),  # both guess, can meet
    (nat(ADM, APDM, (3, 0)), nat(ADM, APDM, (1, 0)), 1, False),
    (nat(ADM, APDM, (3, 0)), nat(APDM, APDM, (7, 93)), None, True),
    (None, nat(APDM, APDM, (1, 1)), 1, False),  # our own NAT unknown: guess anyway
    (nat(APDM, APDM, (1, 1)), None, None, False),
])
def test_assess(local: NatReport | None, peer: NatReport | None, spray: int | None,
                hopeless: bool) -> None:
    got_spray, reason = assess(local, peer)
    assert got_spray == spray
    assert (reason is not None) is hopeless
    assert (assess(peer, local)[1] is not None) is hopeless  # both sides agree


@pytest.mark.parametrize(("deltas", "expected"), [
    ((), None),  # not measured
    ((1, 1), 1),
    ((2, 0), 2),  # a zero is a mapping reused (address-dependent), not a step
    ((0, 0), None),
    ((-3, -3), -3),  # allocators may step down
    ((1, 2), None),  # inconsistent: not sequential
    ((MAX_PORT_DELTA, MAX_PORT_DELTA), MAX_PORT_DELTA),
    ((MAX_PORT_DELTA + 1,), None),  # too far to be a sequential allocator
])
def test_predictable_delta(deltas: tuple[int, ...], expected: int | None) -> None:
    assert predictable_delta(nat(APDM, APDM, deltas)) == expected


PEER_PUBLIC = ("203.0.113.1", 40000)


def test_predicted_ports_step_from_each_public_address_nearest_first() -> None:
    peer = [candidate("host", ("10.0.2.2", 51820)), candidate("srflx", PEER_PUBLIC)]
    got = predicted_ports(peer, None, 2)
    assert got[:3] == [(("203.0.113.1", 40002), 1), (("203.0.113.1", 40004), 2),
                       (("203.0.113.1", 40006), 3)]
    assert len(got) == SPRAY_BUDGET  # bounded
    assert all(addr[0] == "203.0.113.1" for addr, _ in got)  # never the host candidate


def test_predicted_ports_skip_taken_and_impossible_ports_and_bad_input() -> None:
    peer = [Candidate(kind="srflx", address="not an address", priority=1),
            candidate("portmap", ("203.0.113.1", 65530))]
    report = NatReport(mapping=APDM, filtering=APDM,  # type: ignore[arg-type]
                       public_endpoint="203.0.113.9:100")
    got = dict(predicted_ports(peer, report, 3, taken=[("203.0.113.9", 103)]))
    assert [a for a in got if a[0] == "203.0.113.1"] == [("203.0.113.1", 65533)]  # < 65536
    assert ("203.0.113.9", 103) not in got and got[("203.0.113.9", 106)] == 2
    assert len(got) == SPRAY_BUDGET


def test_predicted_ports_of_no_public_address_are_none() -> None:
    assert predicted_ports([candidate("host", ("10.0.2.2", 51820))], None, 1) == []

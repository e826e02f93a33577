"""punchctl why: the explanation, as a table over the lab's NAT kinds (the cells the
lab and `bench matrix` measure), and in agreement with the punch session's own rule."""

from __future__ import annotations

import itertools

import pytest

from punchd.punch.prediction import assess
from punchd.punch.why import PORT_MAPPING_HELPS, Side, explain
from punchd.wire.api import NatReport

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
NATS = {  # the lab's NAT kinds (netns_tests/lab/nat.py), as discovery reports them
    "none": NatReport(public_endpoint="203.0.113.5:51820", mapping=EIM, filtering=EIM),
    "cone": NatReport(public_endpoint="198.51.100.1:51820", mapping=EIM, filtering=EIM),
    "rc": NatReport(public_endpoint="198.51.100.1:51820", mapping=EIM, filtering=ADM),
    "prc": NatReport(public_endpoint="198.51.100.1:51820", mapping=EIM, filtering=APDM),
    "sym": NatReport(public_endpoint="198.51.100.1:40211", mapping=APDM, filtering=APDM,
                     port_deltas=(913, -20417)),
    "seq": NatReport(public_endpoint="198.51.100.1:40211", mapping=APDM, filtering=APDM,
                     port_deltas=(1, 1)),
    "adm-seq": NatReport(public_endpoint="198.51.100.1:40211", mapping=ADM, filtering=APDM,
                         port_deltas=(2, 2)),
}
# The verdict per pair without port mapping: what the lab shows (netns_tests/test_punch.py
# DIRECT_PAIRS/RELAY_PAIRS) and what prediction adds for sequential allocators.
RELAY = {("prc", "sym"), ("sym", "sym"), ("sym", "seq"), ("seq", "seq"),
         ("adm-seq", "sym")}


def verdict_of(a: str, b: str) -> str:
    return "relay" if (a, b) in RELAY or (b, a) in RELAY else "direct"


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations_with_replacement(NATS, 2)))
def test_the_verdict_for_each_pair_of_nat_kinds(a: str, b: str) -> None:
    got = explain(Side("A", NATS[a]), Side("B", NATS[b]))
    assert got.verdict == verdict_of(a, b), got
    assert explain(Side("B", NATS[b]), Side("A", NATS[a])).verdict == got.verdict  # symmetric
    if got.verdict == "relay":
        assert PORT_MAPPING_HELPS in got.would_help and got.reason


@pytest.mark.parametrize(("a", "b"), sorted(RELAY))
def test_port_mapping_on_either_side_makes_every_relayed_pair_direct(a: str, b: str) -> None:
    for mapped_a, mapped_b in ((True, False), (False, True)):
        got = explain(Side("A", NATS[a], mapped_a), Side("B", NATS[b], mapped_b))
        assert got.verdict == "direct" and "maps a port" in got.reason


@pytest.mark.parametrize(("a", "b"), list(itertools.product(NATS, repeat=2)))
def test_it_agrees_with_the_rule_the_punch_session_acts_on(a: str, b: str) -> None:
    _, failure = assess(NATS[a], NATS[b])
    assert (failure is not None) == (explain(Side("A", NATS[a]), Side("B", NATS[b])).verdict
                                     == "relay")


def test_the_reason_names_both_behaviours_as_the_issue_asks() -> None:
    got = explain(Side("A", NATS["prc"]), Side("B", NATS["sym"]))
    assert got.reason == ("B's NAT maps per destination address and port with unpredictable "
                          "ports and A's NAT filters by address and port: no direct path "
                          "without port mapping on either gateway")


def test_an_unmeasured_side_is_unknown_not_a_guess() -> None:
    got = explain(Side("A", None), Side("B", NATS["sym"]))
    assert got.verdict == "unknown" and "A has not measured" in got.reason
    assert explain(Side("A", NatReport(public_endpoint="1.2.3.4:5")),
                   Side("B", NATS["cone"])).verdict == "unknown"

"""RFC 5780 classification through every simulated NAT behaviour, on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from punchd.discovery.classify import NatClassifier
from signal_server.stun_server import StunCore

from .natsim import Nat

P, A = ("192.0.2.10", 3478), ("192.0.2.11", 3479)
LOCAL = ("10.0.0.2", 51820)
AUX = ("10.0.0.2", 40001)  # the classifier's auxiliary port (its filtering tests)
WORDS = {"eim": "endpoint-independent", "adm": "address-dependent",
         "apdm": "address-and-port-dependent", "eif": "endpoint-independent",
         "adf": "address-dependent", "apdf": "address-and-port-dependent"}


def classify(nat: Nat | None, alternate: tuple[str, int] = A) -> NatClassifier:
    server = StunCore(P, alternate)
    clf = NatClassifier(P, LOCAL[1], now=0.0)
    now = 0.0
    for _ in range(200):
        while (out := clf.datagram_to_send(now)) is not None:
            data, dest = out
            local = AUX if clf.via == "aux" else LOCAL
            src = nat.outbound(local, dest) if nat else local
            answer = server.handle(data, src, dest)
            if answer is None:
                continue
            reply, reply_from, _ = answer
            delivered = nat.inbound(reply_from, src[1]) if nat else local
            if delivered == local:
                clf.handle_datagram(reply, reply_from, now + 0.005)
        if clf.done:
            return clf
        deadline = clf.next_deadline()
        assert deadline is not None
        now = deadline
        clf.handle_timer(now)
    raise AssertionError("classifier did not finish")


@pytest.mark.parametrize(("mapping", "filtering"),
                         list(itertools.product(["eim", "adm", "apdm"], ["eif", "adf", "apdf"])))
def test_every_mapping_and_filtering_is_classified(mapping: str, filtering: str) -> None:
    clf = classify(Nat("198.51.100.1", mapping=mapping, filtering=filtering))
    report = clf.report()
    assert clf.error is None
    assert (report.mapping, report.filtering) == (WORDS[mapping], WORDS[filtering])
    assert report.public_endpoint == "198.51.100.1:51820"
    assert report.port_preserved is True


def test_a_router_that_takes_unsolicited_input_is_not_mistaken_for_a_symmetric_nat(
        ) -> None:
    # Filtered answers from the alternate address reach the router itself and claim
    # (alternate, public port): from WireGuard's port, a later flow toward it would get
    # another port. The filtering tests therefore leave from another port, last.
    nat = Nat("198.51.100.1", mapping="eim", filtering="apdf", accepts_input=True)
    report = classify(nat).report()
    assert (report.mapping, report.filtering) == ("endpoint-independent",
                                                  "address-and-port-dependent"), report
    assert nat.claimed and all(port != LOCAL[1] for _, port in nat.claimed)
    assert report.port_deltas == (0,)


def test_no_nat_is_endpoint_independent_and_preserved() -> None:
    report = classify(None).report()
    assert (report.mapping, report.filtering, report.port_preserved) == (
        "endpoint-independent", "endpoint-independent", True)
    assert report.public_endpoint == "10.0.0.2:51820"


def test_sequential_ports_give_deltas_for_prediction() -> None:
    clf = classify(Nat("198.51.100.1", mapping="apdm", filtering="apdf", ports="sequential"))
    report = clf.report()
    assert report.port_preserved is False
    assert report.port_deltas == (1, 1)


def test_filtered_answers_cost_seconds_not_the_full_stun_timeout() -> None:
    server = StunCore(P, A)
    nat = Nat("198.51.100.1", filtering="apdf")
    clf = NatClassifier(P, LOCAL[1], now=0.0)
    now = 0.0
    while not clf.done:
        while (out := clf.datagram_to_send(now)) is not None:
            src = nat.outbound(LOCAL, out[1])
            answer = server.handle(out[0], src, out[1])
            if answer and nat.inbound(answer[1], src[1]) == LOCAL:
                clf.handle_datagram(answer[0], answer[1], now)
        if clf.done:
            break
        now = clf.next_deadline() or now
        clf.handle_timer(now)
    assert now < 5.0  # two filtered tests at ~1.75 s each


def test_server_without_second_address_gives_the_endpoint_only() -> None:
    server = StunCore(P)
    clf = NatClassifier(P, LOCAL[1], now=0.0)
    data, dest = clf.datagram_to_send(0.0) or (b"", P)
    reply = server.handle(data, ("198.51.100.1", 4000), dest)
    assert reply is not None
    clf.handle_datagram(reply[0], reply[1], 0.01)
    assert clf.done and clf.report().public_endpoint == "198.51.100.1:4000"
    assert clf.report().mapping is None

"""The sans-IO port mapping schedule: RFC 6886 retransmits, version negotiation, epochs,
the race between protocols, renewals, giving up in bounded time; all on a number clock."""

from __future__ import annotations

import pytest

from punchd.portmap import natpmp, pcp
from punchd.portmap.schedule import (
    Answered,
    Event,
    GatewayRestarted,
    GiveUp,
    Map,
    MapFailed,
    Mapped,
    PortmapSchedule,
    Probe,
    Released,
    Request,
    UdpMapper,
    Unavailable,
    default_gateway,
    epoch_lost,
)

from .portmap_fake import FakeGateway

CLIENT = ("198.18.0.10", 40123)
WG = 51820


def run(mapper: UdpMapper, gateway: FakeGateway, start: float = 0.0,
        until: float = 10.0) -> tuple[list[Event], list[float]]:
    """Drive the mapper against the fake gateway; every answer takes 1 ms."""
    now, events, sent_at = start, [], []
    for _ in range(1000):
        for data in mapper.datagrams_to_send(now):
            sent_at.append(now)
            reply = gateway.handle(data, CLIENT, now)
            if reply is not None:
                mapper.handle_datagram(reply, now + 0.001)
        events += mapper.events()
        deadline = mapper.next_deadline()
        if deadline is None or deadline > until:
            break
        now = max(now, deadline)
        mapper.handle_timer(now)
    events += mapper.events()
    return events, sent_at


def test_request_schedule_is_rfc6886_within_our_budget() -> None:
    # RFC 6886 §3.1: 250 ms, doubling; our 2 s budget leaves four requests.
    request = Request(b"x", 10.0)
    sent, now = [], 10.0
    while not request.expired(now):
        if request.datagram_to_send(now) is not None:
            sent.append(round(now - 10.0, 3))
        now = request.next_deadline()
    assert sent == [0.0, 0.25, 0.75, 1.75] and now == 12.0
    # With the RFC's own budget, the nine tries span 63.75 s.
    full = Request(b"x", 0.0, budget=64.0)
    times, now = [], 0.0
    while not full.expired(now):
        if full.datagram_to_send(now) is not None:
            times.append(now)
        now = full.next_deadline()
    assert times == [0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 63.75]


def test_silent_gateway_ends_both_protocols_after_two_seconds() -> None:
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    events, sent = run(mapper, FakeGateway(silent=True))
    assert sorted(sent) == [0, 0, 0.25, 0.25, 0.75, 0.75, 1.75, 1.75]
    assert {(e.protocol, type(e)) for e in events} == {("pcp", Unavailable),
                                                      ("nat-pmp", Unavailable)}
    assert mapper.next_deadline() is None


def test_natpmp_only_gateway_ends_pcp_by_version_negotiation() -> None:
    gateway = FakeGateway(speaks=("nat-pmp",))
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    events, sent = run(mapper, gateway)
    assert Answered("nat-pmp") in events
    assert Unavailable("pcp", "the gateway speaks NAT-PMP only") in events
    assert sent == [0.0, 0.0]  # no retransmits: both answered at once
    mapper.map("nat-pmp", 1.0)
    events, _ = run(mapper, gateway, start=1.0)
    assert Mapped("nat-pmp", ("192.0.2.1", WG), 7200) in events
    assert gateway.mappings == {(CLIENT[0], WG): (WG, 7200)}


def test_pcp_only_gateway_ends_natpmp_by_version_negotiation() -> None:
    gateway = FakeGateway(speaks=("pcp",), port_offset=7)
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    events, _ = run(mapper, gateway)
    assert Answered("pcp") in events
    assert Unavailable("nat-pmp", "the gateway speaks PCP only") in events
    mapper.map("pcp", 1.0)
    events, _ = run(mapper, gateway, start=1.0)
    assert Mapped("pcp", ("192.0.2.1", WG + 7), 7200) in events
    # The request asked for WireGuard's own port as the external one (RFC 6887 §11.1).
    request = pcp.parse_request(gateway.requests[-1][1])
    assert (request.internal_port, request.external_port, request.nonce) == (
        WG, WG, mapper.nonce)


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp"])
def test_release_deletes_the_mapping(protocol: str) -> None:
    gateway = FakeGateway()
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    run(mapper, gateway)
    mapper.map(protocol, 1.0)  # type: ignore[arg-type]
    run(mapper, gateway, start=1.0)
    assert gateway.mappings
    mapper.release(protocol, 2.0)  # type: ignore[arg-type]
    assert mapper.releasing
    events, _ = run(mapper, gateway, start=2.0)
    assert Released(protocol) in events  # type: ignore[arg-type]
    assert gateway.mappings == {} and not mapper.releasing


def test_refused_mapping_fails_with_the_rfc_name() -> None:
    mapper = UdpMapper(CLIENT[0], WG)
    gateway = FakeGateway(map_result=natpmp.Result.NOT_AUTHORIZED)
    mapper.probe(0.0)
    run(mapper, gateway)
    mapper.map("nat-pmp", 1.0)
    mapper.map("pcp", 1.0)
    events, _ = run(mapper, gateway, start=1.0)
    assert MapFailed("nat-pmp", "NOT_AUTHORIZED") in events
    assert MapFailed("pcp", "NOT_AUTHORIZED") in events  # PCP's code 2 has the same name


def test_garbage_is_counted_and_never_taken() -> None:
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    events, _ = run(mapper, FakeGateway(garbage=True))
    assert mapper.malformed == 8 and all(isinstance(e, Unavailable) for e in events)


def test_answers_nobody_asked_for_are_ignored() -> None:
    mapper = UdpMapper(CLIENT[0], WG, nonce=b"n" * 12)
    for data in (natpmp.encode_external_address(1, "192.0.2.1"),
                 natpmp.encode_map(1, 1, WG, WG, 60),
                 pcp.encode_response(pcp.OP_ANNOUNCE, 0, 0, 1),
                 pcp.encode_response(pcp.OP_MAP, 0, 60, 1,
                                     map_data=(b"n" * 12, 17, WG, WG, "192.0.2.1")),
                 natpmp.encode_error(0, natpmp.Result.UNSUPPORTED_VERSION, 1)):
        mapper.handle_datagram(data, 0.0)
    assert mapper.ignored == 5 and mapper.events() == []
    mapper.probe(0.0)
    mapper.map("pcp", 0.0)
    other = pcp.encode_response(pcp.OP_MAP, 0, 60, 1,
                                map_data=(b"x" * 12, 17, WG, WG, "192.0.2.1"))
    mapper.handle_datagram(other, 0.0)  # RFC 6887 §11.3: not our nonce
    assert mapper.ignored == 6
    mapper.handle_datagram(b"\x07hello", 0.0)
    assert mapper.malformed == 1


def test_mapping_answer_waits_for_the_natpmp_address() -> None:
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.map("nat-pmp", 0.0)
    mapper.handle_datagram(natpmp.encode_map(1, 5, WG, 40000, 3600), 0.0)
    assert mapper.events() == []
    mapper.handle_datagram(natpmp.encode_external_address(5, "192.0.2.9"), 0.0)
    assert mapper.events() == [Answered("nat-pmp"), Mapped("nat-pmp", ("192.0.2.9", 40000),
                                                           3600)]


def test_a_restarted_gateway_is_noticed_by_its_epoch() -> None:
    gateway = FakeGateway()
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    run(mapper, gateway)
    mapper.map("pcp", 100.0)
    events, _ = run(mapper, gateway, start=100.0)
    assert not any(isinstance(e, GatewayRestarted) for e in events)
    gateway.restart(150.0)
    mapper.map("pcp", 200.0)
    events, _ = run(mapper, gateway, start=200.0)
    assert GatewayRestarted("pcp") in events


@pytest.mark.parametrize(("prev", "prev_at", "epoch", "now", "lost"), [
    (100, 0.0, 200, 100.0, False),  # in step
    (100, 0.0, 193, 100.0, False),  # 7 s slow over 100 s: within 1/16 (6.25 s) + 2 s
    (100, 0.0, 190, 100.0, True),  # 10 s slow: state was lost (RFC 6887 §8.5)
    (100, 0.0, 230, 100.0, True),  # 30 s fast: not the same epoch either
    (100, 0.0, 99, 0.5, True),  # went backwards (RFC 6886 §3.6)
    (0, 0.0, 1, 2.9, False),  # small deltas get the 2 s allowance
])
def test_epoch_lost(prev: int, prev_at: float, epoch: int, now: float, lost: bool) -> None:
    assert epoch_lost(prev, prev_at, epoch, now) is lost


def test_a_closed_port_fails_a_pending_renewal_instead_of_dropping_it() -> None:
    mapper = UdpMapper(CLIENT[0], WG)
    mapper.probe(0.0)
    run(mapper, FakeGateway())
    mapper.map("nat-pmp", 10.0)
    mapper.unreachable("closed")
    # The probe that came with the mapping is dropped too; PCP had nothing pending.
    assert mapper.events() == [MapFailed("nat-pmp", "closed")]
    assert mapper.next_deadline() is None


def test_stop_ends_renewals() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle(Answered("pcp"), 0.0)
    schedule.handle(Mapped("pcp", ("192.0.2.1", WG), 60), 0.0)
    schedule.stop()
    assert schedule.next_deadline() is None and schedule.external is None
    assert schedule.handle_timer(30.0) == [] and schedule.handle(Answered("upnp"), 31.0) == []


def test_address_mismatch_when_the_client_ip_is_wrong() -> None:
    mapper = UdpMapper("198.18.0.99", WG)  # not what the gateway sees as our source
    mapper.probe(0.0)
    mapper.map("pcp", 0.0)
    events, _ = run(mapper, FakeGateway(speaks=("pcp",)))
    assert Unavailable("pcp", "ADDRESS_MISMATCH") in events


# -- the schedule over three protocols --------------------------------------------------


def test_first_answer_maps_and_later_answers_wait() -> None:
    schedule = PortmapSchedule(0.0)
    assert schedule.handle(Answered("upnp"), 0.01) == [Map("upnp")]
    assert schedule.handle(Answered("pcp"), 0.02) == []  # never two mappings at once
    assert schedule.handle(Mapped("upnp", ("192.0.2.1", WG), 3600), 0.05) == []
    assert schedule.state == "mapped" and schedule.external == ("192.0.2.1", WG)
    assert schedule.next_deadline() == pytest.approx(1800.05)  # half the lifetime


def test_a_failed_mapping_falls_back_to_the_next_that_answered() -> None:
    schedule = PortmapSchedule(0.0)
    assert schedule.handle(Answered("pcp"), 0.0) == [Map("pcp")]
    schedule.handle(Answered("nat-pmp"), 0.0)
    assert schedule.handle(MapFailed("pcp", "NO_RESOURCES"), 0.1) == [Map("nat-pmp")]
    assert schedule.handle(MapFailed("nat-pmp", "NOT_AUTHORIZED"), 0.2) == []  # upnp may come
    assert schedule.handle(Unavailable("upnp", "no SSDP answer"), 2.0) == [GiveUp(
        "no port mapping from the gateway (pcp: NO_RESOURCES; nat-pmp: NOT_AUTHORIZED; "
        "upnp: no SSDP answer)")]
    assert schedule.state == "failed" and schedule.next_deadline() is None


def test_nothing_answers_gives_up_at_the_budget() -> None:
    schedule = PortmapSchedule(5.0)
    assert schedule.next_deadline() == pytest.approx(7.1)  # the budget and GRACE_S
    assert schedule.handle(Unavailable("pcp", "no answer after 4 requests"), 7.0) == []
    assert schedule.handle_timer(7.0) == []
    actions = schedule.handle_timer(7.1)
    assert len(actions) == 1 and isinstance(actions[0], GiveUp)
    assert "pcp: no answer after 4 requests; nat-pmp: no answer; upnp: no answer" in \
        actions[0].reason


def test_all_unavailable_gives_up_before_the_budget() -> None:
    schedule = PortmapSchedule(0.0, protocols=("pcp", "nat-pmp"))
    schedule.handle(Unavailable("pcp", "closed"), 0.01)
    assert isinstance(schedule.handle(Unavailable("nat-pmp", "closed"), 0.01)[0], GiveUp)


def test_renewal_at_half_life_and_a_failed_renewal_retries_until_expiry() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle(Answered("nat-pmp"), 0.0)
    schedule.handle(Mapped("nat-pmp", ("192.0.2.1", WG), 120), 0.0)
    assert schedule.handle_timer(59.0) == []
    assert schedule.handle_timer(60.0) == [Map("nat-pmp")]  # RFC 6886 §3.3
    schedule.handle(Mapped("nat-pmp", ("192.0.2.1", WG + 1), 120), 60.1)
    assert schedule.renewals == 1 and schedule.external == ("192.0.2.1", WG + 1)
    assert schedule.handle_timer(120.1) == [Map("nat-pmp")]
    schedule.handle(MapFailed("nat-pmp", "no answer after 4 requests"), 122.1)
    assert schedule.state == "mapped" and schedule.renew_at == pytest.approx(151.1)
    assert schedule.handle_timer(151.1) == [Map("nat-pmp")]
    schedule.handle(MapFailed("nat-pmp", "no answer after 4 requests"), 153.1)
    assert schedule.renew_at == pytest.approx(166.6)
    assert schedule.handle_timer(166.6) == [Map("nat-pmp")]
    # The last retry fails with less than a second left: the mapping is gone; probe again.
    schedule.handle(MapFailed("nat-pmp", "no answer"), 179.5)
    assert schedule.state == "probing" and schedule.external is None
    assert schedule.remaps == 1 and schedule.next_deadline() == pytest.approx(181.6)


def test_expiry_without_any_answer_starts_over() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle(Answered("pcp"), 0.0)
    schedule.handle(Mapped("pcp", ("192.0.2.1", WG), 10), 0.0)
    assert schedule.handle_timer(5.0) == [Map("pcp")]
    schedule.handle(MapFailed("pcp", "x"), 7.0)
    assert schedule.handle_timer(8.5) == [Map("pcp")]
    assert schedule.handle_timer(10.0) == []  # renew_at is unset while that request runs
    assert schedule.state == "mapped"


def test_restarted_gateway_maps_again_at_once() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle(Answered("pcp"), 0.0)
    schedule.handle(Mapped("pcp", ("192.0.2.1", WG), 7200), 0.0)
    assert schedule.handle(GatewayRestarted("pcp"), 10.0) == [Map("pcp")]
    assert schedule.handle(GatewayRestarted("nat-pmp"), 10.0) == []  # not ours
    assert schedule.remaps == 1


def test_permanent_upnp_lease_is_never_renewed() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle(Answered("upnp"), 0.0)
    schedule.handle(Mapped("upnp", ("192.0.2.1", WG), 0), 0.0)
    assert schedule.next_deadline() is None


def test_restart_probes_again_after_giving_up() -> None:
    schedule = PortmapSchedule(0.0)
    schedule.handle_timer(2.1)
    assert schedule.state == "failed" and schedule.handle(Answered("pcp"), 3.0) == []
    assert schedule.restart(60.0) == [Probe()]
    assert schedule.handle(Answered("pcp"), 60.1) == [Map("pcp")]


ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0112A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
wlan0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0012A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0
"""


def test_default_gateway_from_proc_net_route() -> None:
    assert default_gateway(ROUTE) == "192.168.0.1"  # the lower metric wins
    assert default_gateway(ROUTE.splitlines()[0] + "\n" + ROUTE.splitlines()[1]) == \
        "192.168.18.1"
    assert default_gateway(ROUTE.splitlines()[0] + "\n" + ROUTE.splitlines()[3]) is None
    assert default_gateway("") is None
    assert default_gateway("header\nbad line\neth0 zz zz zz 0 0 x\n") is None

"""open_port_mapping on trio's MockClock against an in-process fake gateway on loopback:
mapping, renewal at half the lifetime, delete on close, garbage, silence, UPnP faults."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from punchd.errors import PortmapError
from punchd.portmap import natpmp, pcp
from punchd.portmap.client import Gateway, find_gateway, open_port_mapping

from .portmap_fake import FakeGateway, FakeIgd, bound_udp, serve_ssdp, serve_udp

WG = 51820


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_gateway(nursery: trio.Nursery, fake: FakeGateway) -> int:
    """The fake on loopback (its socket is closed when the nursery is cancelled)."""
    sock, port = await bound_udp()
    nursery.start_soon(serve_udp, fake, sock)
    return port


@asynccontextmanager
async def fake_on_loopback(fake: FakeGateway) -> AsyncIterator[Gateway]:
    """The fake's NAT-PMP/PCP port; nothing answers SSDP."""
    async with trio.open_nursery() as nursery:
        port = await start_gateway(nursery, fake)
        yield Gateway("127.0.0.1", port=port, ssdp_port=closed_udp_port())
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("speaks", [("nat-pmp",), ("pcp",), ("nat-pmp", "pcp")])
async def test_maps_renews_at_half_life_and_deletes_on_close(
        autojump_clock: trio.testing.MockClock, speaks: tuple[str, ...]) -> None:
    fake = FakeGateway(speaks=speaks)
    async with trio.open_nursery() as nursery:
        port = await start_gateway(nursery, fake)
        gateway = Gateway("127.0.0.1", port=port, ssdp_port=closed_udp_port())
        start = trio.current_time()
        async with open_port_mapping(WG, gateway=gateway, lifetime=120) as mapping:
            assert trio.current_time() - start < 0.01  # answered at once: no retransmit
            assert mapping.protocol in speaks  # the first to answer (both: NAT-PMP, sent first)
            assert mapping.external == ("192.0.2.1", WG)
            assert fake.mappings == {("127.0.0.1", WG): (WG, 120)}
            maps_before = len(fake.requests)
            await trio.sleep(59)
            assert len(fake.requests) == maps_before  # nothing before half the lifetime
            await trio.sleep(2)
            assert len(fake.requests) > maps_before
            renewal_at = fake.requests[maps_before][0] - start
            assert renewal_at == pytest.approx(60, abs=0.01)  # RFC 6886 §3.3
            stats = mapping.statistics()
            assert stats.renewals == 1 and stats.external == f"192.0.2.1:{WG}"
            assert stats.protocol == mapping.protocol and stats.gateway == "127.0.0.1"
            protocol = mapping.protocol
        assert fake.mappings == {}
        last = fake.requests[-1][1]
        if protocol == "pcp":
            assert pcp.parse_request(last).lifetime == 0  # RFC 6887 §15
        else:
            assert natpmp.parse_request(last) == (1, WG, 0, 0)  # RFC 6886 §3.4
        assert mapping.external is None
        nursery.cancel_scope.cancel()


async def test_a_moved_port_at_renewal_is_announced(
        autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeGateway(speaks=("pcp",))
    async with fake_on_loopback(fake) as gateway, \
            open_port_mapping(WG, gateway=gateway, lifetime=100) as mapping:
        fake.port_offset = 3
        with trio.fail_after(51):
            await mapping.wait_changed()
        assert mapping.external == ("192.0.2.1", WG + 3)


async def test_a_lost_mapping_is_announced_and_made_again_when_the_gateway_returns(
        autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeGateway(speaks=("nat-pmp",))
    async with fake_on_loopback(fake) as gateway:
        async with open_port_mapping(WG, gateway=gateway, lifetime=20,
                                     protocols=("nat-pmp",)) as mapping:
            start = trio.current_time()
            fake.silent = True  # renewals at 10 s, then halfway to the expiry, all unanswered
            await mapping.wait_changed()
            assert mapping.external is None and mapping.protocol is None
            lost_after = trio.current_time() - start
            # Renewals at 10, 16 and 19 s each fail after the 2 s budget; the last one's
            # failure at 21 s finds the 20 s lifetime over.
            assert lost_after == pytest.approx(21.0, abs=0.01)
            await trio.sleep(5)  # the fresh probe fails too: give up, retry in 60 s
            fake.silent = False
            await mapping.wait_changed()
            assert mapping.external == ("192.0.2.1", WG)
            retried_after = trio.current_time() - start - lost_after
            assert retried_after == pytest.approx(2 + 60, abs=0.01)  # probe budget + RETRY_AFTER_S
            assert mapping.statistics().remaps == 1


@pytest.mark.parametrize("kind", ["garbage", "silent"])
async def test_a_gateway_that_answers_garbage_or_nothing_gives_up_in_two_seconds(
        autojump_clock: trio.testing.MockClock, kind: str) -> None:
    fake = FakeGateway(garbage=kind == "garbage", silent=kind == "silent")
    async with trio.open_nursery() as nursery:
        port = await start_gateway(nursery, fake)
        igd_sock, igd_port = await bound_udp()  # an SSDP port that never answers either
        gateway = Gateway("127.0.0.1", port=port, ssdp_port=igd_port)
        start = trio.current_time()
        with pytest.raises(PortmapError, match="no port mapping") as info:
            async with open_port_mapping(WG, gateway=gateway):
                pytest.fail("mapped against a broken gateway")
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)
        assert "upnp: no SSDP answer after 4 searches" in str(info.value)
        assert len(fake.requests) == 8  # 4 NAT-PMP + 4 PCP (RFC 6886 §3.1 within 2 s)
        igd_sock.close()
        nursery.cancel_scope.cancel()


async def test_a_closed_port_fails_at_once(autojump_clock: trio.testing.MockClock) -> None:
    gateway = Gateway("127.0.0.1", port=closed_udp_port(), ssdp_port=closed_udp_port())
    start = trio.current_time()
    with pytest.raises(PortmapError, match="ICMP port unreachable"):
        async with open_port_mapping(WG, gateway=gateway, protocols=("pcp", "nat-pmp")):
            pytest.fail("mapped against a closed port")
    assert trio.current_time() - start < 0.1


async def test_refused_mapping_names_the_reason(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeGateway(speaks=("nat-pmp",), map_result=natpmp.Result.NOT_AUTHORIZED)
    async with trio.open_nursery() as nursery:
        port = await start_gateway(nursery, fake)
        gateway = Gateway("127.0.0.1", port=port)
        with pytest.raises(PortmapError, match="nat-pmp: NOT_AUTHORIZED"):
            async with open_port_mapping(WG, gateway=gateway, protocols=("nat-pmp", "pcp")):
                pass
        nursery.cancel_scope.cancel()


async def _with_igd(igd: FakeIgd) -> tuple[tuple[str, int] | None, str | None]:
    """Map through the fake IGD; its error is raised outside the servers' nursery."""
    failure: PortmapError | None = None
    external = protocol = None
    async with trio.open_nursery() as nursery:
        sock, ssdp_port = await bound_udp()
        nursery.start_soon(serve_ssdp, igd, sock)
        gateway = Gateway("127.0.0.1", port=closed_udp_port(), ssdp_port=ssdp_port)
        try:
            async with open_port_mapping(WG, gateway=gateway, http_transport=igd.transport(),
                                         lifetime=600) as mapping:
                external, protocol = mapping.external, mapping.protocol
                assert igd.mappings
        except PortmapError as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return external, protocol


async def test_upnp_maps_and_deletes(autojump_clock: trio.testing.MockClock) -> None:
    igd = FakeIgd()
    external, protocol = await _with_igd(igd)
    assert (external, protocol) == (("192.0.2.1", WG), "upnp")
    assert igd.calls == ["description", "GetExternalIPAddress", "AddPortMapping",
                         "DeletePortMapping"]
    assert igd.mappings == {}


async def test_upnp_conflict_moves_the_port_and_permanent_only_drops_the_lease(
        autojump_clock: trio.testing.MockClock) -> None:
    igd = FakeIgd(faults=[718, 725])
    added: list[tuple[int, tuple[str, int, int]]] = []
    original = igd._http

    def spy(request):  # type: ignore[no-untyped-def]
        response = original(request)
        if b"AddPortMapping" in request.headers.get("SOAPAction", "").encode() and \
                response.status_code == 200:
            added.extend(igd.mappings.items())
        return response

    igd._http = spy  # type: ignore[method-assign]
    external, _ = await _with_igd(igd)
    assert external is not None and external[1] != WG
    (ext_port, (client, internal, lease)), = added
    assert (ext_port, client, internal, lease) == (external[1], "127.0.0.1", WG, 0)


async def test_upnp_fault_that_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    igd = FakeIgd(faults=[606])
    with pytest.raises(PortmapError, match="upnp: AddPortMapping: UPnP error 606"):
        await _with_igd(igd)


async def test_ssdp_answer_pointing_elsewhere_is_not_followed(
        autojump_clock: trio.testing.MockClock) -> None:
    igd = FakeIgd(ssdp_answer=lambda _: b"HTTP/1.1 200 OK\r\nLOCATION: http://192.0.2.66/x\r\n\r\n")
    with pytest.raises(PortmapError, match=r"upnp: no SSDP answer after 4 searches \(4 malformed"):
        await _with_igd(igd)
    assert igd.calls == []


async def test_hostile_description_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    igd = FakeIgd(description=b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "a">]><r>&a;</r>')
    with pytest.raises(PortmapError, match="DTD or entities"):
        await _with_igd(igd)


def test_find_gateway_reads_the_route_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\n"
                     "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\n")
    assert find_gateway(route) == "192.168.0.1"
    route.write_text("Iface\tDestination\n")
    with pytest.raises(PortmapError, match="no IPv4 default gateway"):
        find_gateway(route)
    with pytest.raises(PortmapError, match="cannot read"):
        find_gateway(tmp_path / "missing")


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="not a UDP port"):
        async with open_port_mapping(0, gateway="127.0.0.1"):
            pass
    with pytest.raises(ValueError, match="protocols"):
        async with open_port_mapping(WG, gateway="127.0.0.1", protocols=("stun",)):  # type: ignore[arg-type]
            pass

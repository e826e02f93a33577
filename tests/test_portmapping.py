"""The daemon's port mapper: keeps a mapping for WireGuard's port and publishes it as a
``portmap`` candidate; on MockClock against the fake gateway on loopback."""

from __future__ import annotations

import trio
import trio.testing

from punchd.daemon import portmapping
from punchd.daemon.paths import host_candidates, with_portmap, with_srflx
from punchd.daemon.portmapping import PortMapper
from punchd.portmap.client import Gateway
from punchd.punch.candidates import TYPE_PREFERENCE

from .portmap_fake import FakeGateway
from .test_portmap_client import WG, closed_udp_port, fake_on_loopback


def test_a_mapped_port_ranks_between_peer_reflexive_and_server_reflexive() -> None:
    p = TYPE_PREFERENCE
    assert p["host"] > p["prflx"] > p["portmap"] > p["srflx"] > p["predicted"] > p["relay"]
    assert len(set(p.values())) == len(p)  # RFC 8445 §5.1.2.2: one preference per type


def test_the_mapped_endpoint_is_a_candidate_unless_it_is_one_already() -> None:
    host = host_candidates(["10.0.0.2/24"], WG)
    mapped = with_srflx(with_portmap(host, "192.0.2.1:51820"), "192.0.2.1:51820")
    assert [(c.kind, c.address) for c in mapped] == [
        ("host", "10.0.0.2:51820"), ("portmap", "192.0.2.1:51820")]
    assert mapped[1].priority > with_srflx(host, "192.0.2.1:51820")[1].priority
    assert with_portmap(host, None) == host
    assert with_portmap(host, "10.0.0.2:51820") == host


async def test_maps_reports_each_change_and_deletes_the_mapping_on_cancel(
        autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeGateway(speaks=("nat-pmp",))
    changes: list[str | None] = []
    mapped = trio.Event()

    def changed() -> None:
        changes.append(mapper.endpoint)
        mapped.set()

    async with fake_on_loopback(fake) as gateway:
        mapper = PortMapper(WG, changed, gateway=gateway)
        async with trio.open_nursery() as nursery:
            await nursery.start(mapper.run)
            with trio.fail_after(5):
                await mapped.wait()
            assert mapper.endpoint == "192.0.2.1:51820" and mapper.protocol == "nat-pmp"
            assert fake.mappings and mapper.error is None
            nursery.cancel_scope.cancel()
        assert not fake.mappings  # deleted at the gateway on the way out
    assert changes == ["192.0.2.1:51820"]


async def test_a_gateway_that_will_not_map_is_asked_again_later_and_on_a_network_change(
        autojump_clock: trio.testing.MockClock) -> None:
    gateway = Gateway("127.0.0.1", port=closed_udp_port(), ssdp_port=closed_udp_port())
    mapper = PortMapper(WG, lambda: None, gateway=gateway)
    attempts = 0
    real = portmapping.open_port_mapping

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal attempts
        attempts += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    portmapping.open_port_mapping = counting  # type: ignore[assignment]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mapper.run)
            await trio.sleep(5)
            assert attempts == 1 and mapper.endpoint is None
            assert mapper.error is not None and "closed" in mapper.error
            mapper.wake()
            await trio.sleep(5)
            assert attempts == 2  # at once on a network change, not after RETRY_S
            await trio.sleep(portmapping.RETRY_S)
            assert attempts == 3
            nursery.cancel_scope.cancel()
    finally:
        portmapping.open_port_mapping = real

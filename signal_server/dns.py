"""Keeps meshdns's zones equal to the store: rebuilt after every change, within ms."""

from __future__ import annotations

import trio

from meshdns.server import MeshDNSServer
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord

from .app import Service
from .store import Store


def build_zones(store: Store) -> list[NetworkZone]:
    zones = []
    for net in store.list_networks():
        nodes = tuple(NodeRecord(name=n.name, ipv4=n.ipv4, ipv6=n.ipv6)
                      for n in store.list_nodes(net.name) if n.approved)
        records = tuple(CustomRecord(name=r.name, rtype=r.rtype, value=r.value)
                        for r in store.list_dns_records(net.name))
        zones.append(NetworkZone(network=net.name, nodes=nodes, records=records))
    return zones


class ZonePusher:
    def __init__(self, service: Service, listen: tuple[str, int], *, domain: str) -> None:
        self.service = service
        self.dns = MeshDNSServer(listen[0], listen[1], domain=domain)
        self._dirty = trio.Event()
        service.on_change.append(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dns.run)
            self.dns.set_zones(await self.service.call(build_zones, self.service.store))
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                self.dns.set_zones(await self.service.call(build_zones, self.service.store))

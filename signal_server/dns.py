"""Keeps meshdns's zones equal to the store: rebuilt after every change, within ms.

A record the store holds but meshdns cannot serve (one written by an older version
that validated less) is skipped with one log line; the rest of the zone is served,
and a zone rebuild that fails keeps the previous zones answering.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from meshdns.server import MeshDNSServer
from meshdns.xfr import Secondaries
from meshdns.zone import CustomRecord, NetworkZone, NodeRecord, validate_record
from punchd.errors import AddrError, Invalid
from punchd.wire.addr import parse_host_port

from .service import Service
from .store import Store

log = logging.getLogger("meshdns")


def build_zones(store: Store) -> list[NetworkZone]:
    zones = []
    for net in store.list_networks():
        nodes = tuple(NodeRecord(name=n.name, ipv4=n.ipv4, ipv6=n.ipv6)
                      for n in store.list_nodes(net.name) if n.approved)
        records: list[CustomRecord] = []
        for r in store.list_dns_records(net.name):
            try:
                records.append(validate_record(r.rtype, r.name, r.value))
            except Invalid as exc:
                log.warning("meshdns: skipped a stored record: network %r name %r type %s: %s",
                            net.name, r.name, r.rtype, exc.reason)
        zones.append(NetworkZone(network=net.name, nodes=nodes, records=tuple(records)))
    return zones


def nameserver_host(address: str) -> str:
    """The host of an advertised ``ip:port`` / ``[ip6]:port`` / ``name:port``."""
    try:
        return parse_host_port(address, port_zero=True)[0]
    except AddrError:
        return address.strip("[]")  # a bare host


def read_serial(path: Path) -> int:
    """The last SOA serial served, kept across restarts; 0 when there is none. A file
    that does not hold one is logged and ignored: DNS starts anyway, and a secondary
    at worst waits for the clock to pass its serial."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("meshdns: cannot read the last serial from %s: %s", path, exc)
        return 0
    if not text.isascii() or not text.isdigit() or int(text) > 0xFFFFFFFF:
        log.warning("meshdns: %s does not hold a serial; starting from the clock", path)
        return 0
    return int(text)


def write_serial(path: Path, serial: int) -> None:
    """Atomically (rename), so a crash never leaves a half-written serial."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{serial}\n")
    os.replace(tmp, path)


class ZonePusher:
    def __init__(self, service: Service, listen: tuple[str, int], *, domain: str,
                 secondaries: Secondaries | None = None, serial_file: Path | None = None,
                 ) -> None:
        """``serial_file`` keeps the SOA serial across restarts, so a secondary never
        sees it go back (RFC 1982: it would ignore the zone until it passed the old)."""
        self.service = service
        # The NS target must resolve: serve the address nodes are told to use.
        nameserver = nameserver_host(service.dns.address) if service.dns is not None else None
        sec = secondaries or Secondaries()
        self.serial_file = serial_file
        last = read_serial(serial_file) if serial_file is not None else 0
        self.dns = MeshDNSServer(listen[0], listen[1], domain=domain,
                                 nameserver=nameserver or None, notify=sec.notify,
                                 transfer_allow=sec.transfer_allow, tsig_key=sec.tsig_key,
                                 last_serial=last)
        self._saved = last
        self._dirty = trio.Event()
        service.on_change.append(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._dirty.set()

    async def _push(self) -> None:
        zones = await self.service.call(build_zones, self.service.store)
        serial = self.dns.set_zones(zones).serial
        if self.serial_file is not None and serial != self._saved:
            try:
                await trio.to_thread.run_sync(write_serial, self.serial_file, serial)
                self._saved = serial
            except OSError as exc:  # DNS goes on; only a restart's serial is at risk
                log.warning("meshdns: cannot save the serial to %s: %s", self.serial_file, exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dns.run)
            await self._push()
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                try:
                    await self._push()
                except Exception as exc:  # the DNS server outlives one bad rebuild
                    log.error("meshdns: zone rebuild failed, serving the previous zones: %s: %s",
                              type(exc).__name__, exc)

"""What this node tells the server about itself: its candidates and its NAT.

An adapter. :class:`CandidatePublisher` gathers the host addresses (netlink), asks
discovery for the public endpoint on WireGuard's port, and sends the candidates to the
server when they change. A new public endpoint is published the moment the first STUN
answer gives it (peers start punching on it), the NAT's behaviour when classification
ends. The punch sessions and relay binds hear about every change first
(:meth:`PortServices.local_changed`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

import trio

from punchd.errors import PunchdError
from punchd.serverapi import ServerClient
from punchd.wire import api

from . import hostaddrs
from .paths import host_candidates, with_portmap, with_srflx
from .portservices import PortServices

LocalNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CandidatePublisher:
    def __init__(self, client: ServerClient, port: PortServices, *, listen_port: int,
                 exclude_ifnames: Iterable[str], on_error: Callable[[str], None]) -> None:
        self.client = client
        self.port = port
        self.listen_port = listen_port
        self.exclude = set(exclude_ifnames)
        self.published: tuple[api.Candidate, ...] | None = None
        self.nat: api.NatReport | None = None
        self.local_networks: list[LocalNetwork] = []
        self.local_only = False  # the network's "local only": host candidates alone
        self._on_error = on_error  # a netcheck failure, for the agent's status

    async def publish(self, stun: str | None, *, force: bool = False) -> None:
        """Host candidates, plus the server-reflexive one when discovery works (and the
        network is not local only)."""
        addresses = await hostaddrs.local_addresses(self.exclude)
        self.local_networks = [ipaddress.ip_interface(a).network for a in addresses]
        if self.local_only:  # no STUN (nor port-mapped) candidate is published at all
            await self._send(host_candidates(addresses, self.listen_port), None, force=force)
            return
        host = with_portmap(host_candidates(addresses, self.listen_port),
                            self.port.mapped_endpoint)
        early: list[str] = []
        endpoint_known = trio.Event()
        report: list[api.NatReport | None] = []

        def on_endpoint(endpoint: str) -> None:
            early.append(endpoint)
            endpoint_known.set()

        async def classify() -> None:
            report.append(await self.netcheck_quietly(stun, on_endpoint))
            endpoint_known.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(classify)
            await endpoint_known.wait()
            if early and (self.nat is None or self.nat.public_endpoint != early[0]):
                await self._send(with_srflx(host, early[0]),
                                 api.NatReport(public_endpoint=early[0]), force=False)
        nat = report[0]
        await self._send(with_srflx(host, nat.public_endpoint if nat else None), nat,
                         force=force)

    async def _send(self, candidates: tuple[api.Candidate, ...], nat: api.NatReport | None,
                    *, force: bool) -> None:
        self.port.local_changed(candidates, nat, moved=nat is not None and self.nat is not None
                                and nat.public_endpoint != self.nat.public_endpoint)
        if candidates != self.published or nat != self.nat or force:
            await self.client.update_self(api.NodeUpdate(candidates=candidates, nat=nat))
            self.published = candidates
            self.nat = nat

    async def netcheck_quietly(self, stun: str | None,
                               on_endpoint: Callable[[str], None] | None = None
                               ) -> api.NatReport | None:
        if stun is None or self.port.discovery is None:
            return None  # no STUN offered, or no raw sockets: host candidates only
        try:
            return await self.port.netcheck(stun, on_endpoint)
        except PunchdError as exc:
            self._on_error(str(exc))
            return None

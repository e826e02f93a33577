"""Keep a port mapping for WireGuard's port on the LAN gateway, while the agent runs.

An adapter around :func:`punchd.portmap.client.open_port_mapping` (NAT-PMP, PCP and
UPnP IGD raced, renewed at half the lifetime, deleted on exit). The mapped endpoint is
one more candidate (kind ``portmap``): a mapped port takes a first packet from any
peer, which a filtering NAT's server-reflexive address does not, so sym/sym and
prc/sym pairs can go direct when one side's gateway maps.

The task maps at start, again at once when the host's addresses change (:meth:`wake`),
and otherwise retries a gateway that would not map every :data:`RETRY_S`. Every
change of the mapped endpoint is reported through ``on_change`` (the agent publishes
its candidates again). On cancellation — ``punchctl leave``, daemon shutdown — the
context manager deletes the mapping at the gateway, shielded and bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from punchd.errors import PortmapError
from punchd.portmap.client import Gateway, open_port_mapping
from punchd.wire.addr import Addr, format_addr

from .tasks import Wakeup

log = logging.getLogger("punchd.portmap")

RETRY_S = 60.0  # a gateway that would not map: ask again this often (and on a network change)


class PortMapper:
    def __init__(self, port: int, on_change: Callable[[], None], *,
                 gateway: Gateway | None = None) -> None:
        """``gateway``: None asks the default route's (tests give one on loopback)."""
        self.port = port
        self.gateway = gateway
        self.external: Addr | None = None
        self.protocol: str | None = None
        self.error: str | None = None  # why there is no mapping (for netcheck and status)
        self._on_change = on_change
        self._due = Wakeup()

    @property
    def endpoint(self) -> str | None:
        return format_addr(self.external) if self.external else None

    def wake(self) -> None:
        """The host's addresses changed: the gateway may be another one now."""
        self._due.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            woken = self._due.round()
            try:
                async with open_port_mapping(self.port, gateway=self.gateway) as mapping:
                    self.error = None
                    while not woken.is_set():  # woken: a new network, map on its gateway
                        self._set(mapping.external, mapping.protocol)
                        await _first_of(mapping.wait_changed, woken.wait)
            except PortmapError as exc:
                self.error = str(exc)
                log.info("port %d: no port mapping: %s", self.port, exc)
            self._set(None, None)
            if not woken.is_set():
                with trio.move_on_after(RETRY_S):
                    await woken.wait()

    def _set(self, external: Addr | None, protocol: str | None) -> None:
        if (external, protocol) == (self.external, self.protocol):
            return
        if external is not None:
            log.info("port %d mapped to %s by %s", self.port, format_addr(external), protocol)
        elif self.external is not None:
            log.info("port %d: mapping %s lost", self.port, format_addr(self.external))
        self.external, self.protocol = external, protocol
        self._on_change()


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(one, wait)

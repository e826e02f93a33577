"""Port mapping on trio: ``async with open_port_mapping(port) as mapping``.

The thin adapter around :mod:`punchd.portmap.schedule`. One nursery holds three tasks:

* the driver: feeds trio's clock to the sans-IO :class:`~.schedule.UdpMapper` and
  :class:`~.schedule.PortmapSchedule`, sends what they say, sleeps until their next
  deadline or until something arrives, and carries out the schedule's actions;
* the receive loop of the NAT-PMP/PCP socket (connected to the gateway's port 5351, so
  the kernel drops datagrams from anyone else, RFC 6886 §3.1; an ICMP port unreachable
  arrives as ``ConnectionRefusedError`` and ends both protocols at once);
* the UPnP exchange: the SSDP search (retransmitted on the same schedule as NAT-PMP),
  and on the schedule's word the description, ``GetExternalIPAddress`` and
  ``AddPortMapping`` over httpx (``trust_env=False``: a proxy must not carry requests
  meant for the LAN gateway; no redirects; short timeouts; bodies capped).

The context manager's body runs once a mapping exists (``mapping.external``,
``mapping.protocol``); renewals happen behind it; on exit the mapping is deleted
(shielded, bounded by the request budget) before the nursery closes. If no protocol
maps within the budget, entering raises :class:`~punchd.errors.PortmapError` naming
what each protocol said.

The gateway is the IPv4 default route's (``/proc/net/route``) unless given; tests give a
:class:`Gateway` on loopback with their own ports.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import trio

from punchd.errors import PortmapError, PortmapParseError

from ..wire.addr import Addr, format_addr
from . import natpmp, upnp
from .schedule import (
    DEFAULT_LIFETIME_S,
    PROTOCOLS,
    REQUEST_BUDGET_S,
    Action,
    Answered,
    Event,
    GiveUp,
    Map,
    MapFailed,
    Mapped,
    PortmapSchedule,
    Probe,
    Protocol,
    Released,
    Request,
    UdpMapper,
    Unavailable,
    default_gateway,
)

log = logging.getLogger("punchd.portmap")

RETRY_AFTER_S = 60.0  # after giving up while running, probe again this much later
RECEIVE_BUFFER = 2048  # NAT-PMP answers are 16 bytes, PCP at most 1100 (RFC 6887 §7)


class Gateway(msgspec.Struct, frozen=True):
    ip: str
    port: int = natpmp.PORT  # NAT-PMP and PCP (RFC 6886 §3, RFC 6887 §19.1)
    ssdp_port: int = upnp.SSDP_PORT


class PortmapStatistics(msgspec.Struct, frozen=True):
    gateway: str
    protocol: str | None  # the one holding the mapping
    external: str | None  # "ip:port"
    lifetime: int
    answered: tuple[str, ...]  # protocols whose probe the gateway answered, in order
    unavailable: tuple[tuple[str, str], ...]  # (protocol, why)
    renewals: int
    remaps: int
    malformed: int  # datagrams from the gateway that did not parse


def find_gateway(route_file: Path = Path("/proc/net/route")) -> str:
    try:
        text = route_file.read_text()
    except OSError as exc:
        raise PortmapError(f"cannot read {route_file}: {exc.strerror}") from exc
    gateway = default_gateway(text)
    if gateway is None:
        raise PortmapError("no IPv4 default gateway to ask for a port mapping")
    return gateway


class PortMapping:
    """A live mapping; the value ``open_port_mapping`` yields."""

    def __init__(self, internal_port: int, gateway: Gateway, lifetime: int, budget: float,
                 http: httpx.AsyncClient, description: str,
                 protocols: tuple[Protocol, ...] = PROTOCOLS) -> None:
        self.internal_port = internal_port
        self.protocols = protocols
        self.gateway = gateway
        self._lifetime = lifetime
        self._budget = budget
        self._http = http
        self._description = description
        self._schedule = PortmapSchedule(0.0, budget=budget, protocols=protocols)
        self._udp: UdpMapper | None = None
        self._sock: trio.socket.SocketType | None = None
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._igd: upnp.IgdService | None = None
        self._ssdp_location: str | None = None
        self._upnp_port: int | None = None
        self._upnp_lease = lifetime
        self._upnp_events: list[Event] = []
        self._released = trio.Event()
        self._retry_at = math.inf
        self._started = False
        self._announced: Addr | None = None
        self._nursery: trio.Nursery | None = None
        self._tasks_scope = trio.CancelScope()

    # -- what callers see -----------------------------------------------------------

    @property
    def external(self) -> Addr | None:
        """The mapped endpoint (None between losing a mapping and getting a new one)."""
        return self._schedule.external

    @property
    def protocol(self) -> Protocol | None:
        return self._schedule.current if self._schedule.external is not None else None

    def statistics(self) -> PortmapStatistics:
        s = self._schedule
        external = None if s.external is None else format_addr(s.external)
        return PortmapStatistics(
            gateway=self.gateway.ip, protocol=self.protocol, external=external,
            lifetime=s.lifetime, answered=tuple(s.answered),
            unavailable=tuple(sorted({**s.unavailable, **s.failed}.items())),
            renewals=s.renewals, remaps=s.remaps,
            malformed=0 if self._udp is None else self._udp.malformed)

    async def wait_changed(self) -> None:
        """Return when ``external`` changes (renewed elsewhere, lost, mapped again)."""
        await self._changed.wait()

    # -- the tasks ------------------------------------------------------------------

    async def run_until_released(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """:meth:`run`, shielded from the caller's cancellation until :meth:`stop`: a
        cancelled caller (leave, shutdown) still needs these tasks to delete the mapping
        (:meth:`release` sends through them). Bounded: probing ends within the budget,
        and ``open_port_mapping`` stops them after the release."""
        with trio.CancelScope(shield=True) as self._tasks_scope:
            await self.run(task_status=task_status)

    def stop(self) -> None:
        self._tasks_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            try:
                await sock.connect((self.gateway.ip, self.gateway.port))
            except OSError as exc:
                raise PortmapError(f"cannot reach the gateway {self.gateway.ip}: "
                                   f"{exc.strerror}") from exc
            self._sock = sock
            client_ip = sock.getsockname()[0]
            now = trio.current_time()
            self._udp = UdpMapper(client_ip, self.internal_port, lifetime=self._lifetime,
                                  budget=self._budget)
            self._schedule = PortmapSchedule(now, budget=self._budget,
                                             protocols=self.protocols)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive, sock)
                self._probe(now)
                failure = await self._drive(sock, task_status)
                nursery.cancel_scope.cancel()
        # Raised outside the nursery, so the caller gets our error, not an ExceptionGroup.
        raise PortmapError(failure)

    def _probe(self, now: float) -> None:
        assert self._udp is not None and self._nursery is not None
        self._udp.probe(now, self.protocols)
        if "upnp" in self.protocols:
            self._nursery.start_soon(self._ssdp_search)

    async def _drive(self, sock: trio.socket.SocketType,
                     task_status: trio.TaskStatus[None]) -> str:
        """Runs until cancelled; returns why, when no mapping could be made at start."""
        udp = self._udp
        assert udp is not None
        while True:
            # A fresh event before looking at the state: whatever arrives from here on
            # (even during the sends below) wakes the wait at the end of this round.
            self._wake = trio.Event()
            now = trio.current_time()
            udp.handle_timer(now)
            events = udp.events() + self._upnp_events
            self._upnp_events = []
            actions = []
            for event in events:
                self._on_event(event)
                actions += self._schedule.handle(event, now)
            actions += self._schedule.handle_timer(now)
            if now >= self._retry_at:
                self._retry_at = math.inf
                actions += self._schedule.restart(now)
            failure = self._act(actions, now)
            if failure is not None:
                return failure
            for datagram in udp.datagrams_to_send(now):
                try:
                    await sock.send(datagram)
                except OSError as exc:  # e.g. ECONNREFUSED left by an earlier ICMP error
                    udp.unreachable(_why(exc))
            if self._schedule.state == "mapped" and not self._started:
                self._started = True
                task_status.started()
            if udp.has_events:
                continue  # a send just failed: act on it now, not at the next deadline
            deadlines = [d for d in (udp.next_deadline(), self._schedule.next_deadline(),
                                     self._retry_at) if d is not None]
            with trio.move_on_at(min(deadlines)):
                await self._wake.wait()

    def _on_event(self, event: Event) -> None:
        log.debug("portmap %s: %s", self.gateway.ip, event)
        if isinstance(event, Released):
            self._released.set()

    def _act(self, actions: list[Action], now: float) -> str | None:
        """Carry out the schedule's actions; the reason when giving up before any mapping."""
        for action in actions:
            if isinstance(action, Map):
                self._map(action.protocol, now)
            elif isinstance(action, Probe):
                self._probe(now)
            elif isinstance(action, GiveUp):
                if not self._started:
                    return action.reason
                log.info("portmap: %s; trying again in %.0f s", action.reason, RETRY_AFTER_S)
                self._retry_at = now + RETRY_AFTER_S
        if self._schedule.external != self._announced:
            self._announced = self._schedule.external
            self._changed.set()
            self._changed = trio.Event()
        return None

    def _map(self, protocol: Protocol, now: float) -> None:
        assert self._udp is not None and self._nursery is not None
        if protocol == "upnp":
            self._nursery.start_soon(self._upnp_map)
        else:
            self._udp.map(protocol, now)

    def _post(self, event: Event) -> None:
        self._upnp_events.append(event)
        self._wake.set()

    async def _receive(self, sock: trio.socket.SocketType) -> None:
        assert self._udp is not None
        refusals = 0
        while True:
            try:
                data = await sock.recv(RECEIVE_BUFFER)
            except OSError as exc:
                self._udp.unreachable(_why(exc))
                self._wake.set()
                refusals += 1
                await trio.sleep(min(0.05 * refusals, 1.0))  # no spinning on a repeated error
                continue
            self._udp.handle_datagram(data, trio.current_time())
            self._wake.set()

    # -- UPnP -----------------------------------------------------------------------

    async def _ssdp_search(self) -> None:
        try:
            self._ssdp_location = await self._search()
        except PortmapError as exc:
            self._post(Unavailable("upnp", str(exc)))
        else:
            self._igd = None  # a new search: the description is fetched again
            self._post(Answered("upnp"))

    async def _search(self) -> str:
        """M-SEARCH the gateway, retransmitting like NAT-PMP; its LOCATION."""
        gateway = (self.gateway.ip, self.gateway.ssdp_port)
        request = Request(upnp.msearch(self.gateway.ip), trio.current_time(),
                          budget=self._budget)
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("0.0.0.0", 0))
            bad = 0
            while not request.expired(now := trio.current_time()):
                if (datagram := request.datagram_to_send(now)) is not None:
                    try:
                        await sock.sendto(datagram, gateway)
                    except OSError as exc:
                        raise PortmapError(f"SSDP: {_why(exc)}") from exc
                with trio.move_on_at(request.next_deadline()):
                    try:
                        data, source = await sock.recvfrom(upnp.MAX_SSDP + 1)
                    except OSError as exc:
                        raise PortmapError(f"SSDP: {_why(exc)}") from exc
                    if source[0] != self.gateway.ip:
                        continue  # only the gateway's own answer counts
                    try:
                        return upnp.parse_ssdp_response(data, source_ip=self.gateway.ip).location
                    except PortmapParseError as exc:
                        bad += 1
                        log.debug("portmap: SSDP answer refused: %s", exc)
            raise PortmapError(f"no SSDP answer after {request.sent} searches"
                               + (f" ({bad} malformed)" if bad else ""))

    async def _upnp_map(self) -> None:
        try:
            with trio.fail_after(2 * self._budget):
                self._post(await self._upnp_add())
        except (PortmapError, PortmapParseError) as exc:
            self._post(MapFailed("upnp", str(exc)))
        except trio.TooSlowError:
            self._post(MapFailed("upnp", "the gateway's HTTP server did not answer in time"))

    async def _upnp_add(self) -> Mapped:
        assert self._udp is not None
        if self._igd is None:
            if self._ssdp_location is None:
                raise PortmapError("no SSDP location")
            status, body = await self._fetch("GET", self._ssdp_location)
            if status != 200:
                raise PortmapError(f"description {self._ssdp_location}: HTTP {status}")
            self._igd = upnp.parse_description(body, self._ssdp_location)
        service = self._igd
        answer = await self._soap(service, "GetExternalIPAddress",
                                  upnp.get_external_ip(service.service_type))
        if isinstance(answer, upnp.SoapFault):
            raise PortmapError(f"GetExternalIPAddress: UPnP error {answer.code} "
                               f"{answer.description}")
        external_ip = upnp.external_ip_from(answer)
        port = self._upnp_port or self.internal_port
        fault = upnp.SoapFault(code=0, description="")
        for _ in range(3):  # at most one retry for each fault below
            result = await self._soap(service, "AddPortMapping", upnp.add_port_mapping(
                service.service_type, external_port=port, internal_port=self.internal_port,
                internal_client=self._udp.client_ip, lease=self._upnp_lease,
                description=self._description))
            if not isinstance(result, upnp.SoapFault):
                self._upnp_port = port
                return Mapped("upnp", (external_ip, port), self._upnp_lease)
            fault = result
            if fault.code == upnp.ONLY_PERMANENT_LEASES and self._upnp_lease:
                self._upnp_lease = 0  # mapped without a lease; deleted on close
            elif fault.code == upnp.CONFLICT_IN_MAPPING and self._upnp_port is None:
                port = random.randint(1024, 65535)  # someone else holds it: another port
            else:
                break
        raise PortmapError(f"AddPortMapping: UPnP error {fault.code} {fault.description}")

    async def _soap(self, service: upnp.IgdService, action: str,
                    request: tuple[dict[str, str], bytes]) -> dict[str, str] | upnp.SoapFault:
        headers, body = request
        status, answer = await self._fetch("POST", service.control_url, headers, body)
        if status not in (200, 500):  # UDA §3.2.2: a fault comes with 500
            raise PortmapError(f"{action}: HTTP {status}")
        return upnp.parse_soap_response(answer, action)

    async def _fetch(self, method: str, url: str, headers: dict[str, str] | None = None,
                     content: bytes | None = None) -> tuple[int, bytes]:
        try:
            async with self._http.stream(method, url, headers=headers, content=content) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():  # decoded: a gzip bomb meets the cap too
                    body += chunk
                    if len(body) > upnp.MAX_BODY:
                        raise PortmapError(f"{method} {url}: more than {upnp.MAX_BODY} bytes")
                return resp.status_code, bytes(body)
        except httpx.HTTPError as exc:
            raise PortmapError(f"{method} {url}: {exc!r}") from exc

    # -- closing --------------------------------------------------------------------

    async def release(self) -> None:
        """Delete the mapping at the gateway; bounded by the request budget."""
        protocol = self.protocol
        self._schedule.stop()
        self._retry_at = math.inf
        if protocol is None or self._udp is None:
            return
        with trio.move_on_after(self._budget + 0.5):
            if protocol == "upnp":
                if self._igd is not None and self._upnp_port is not None:
                    try:
                        await self._soap(self._igd, "DeletePortMapping",
                                         upnp.delete_port_mapping(
                                             self._igd.service_type,
                                             external_port=self._upnp_port))
                    except (PortmapError, PortmapParseError) as exc:
                        log.info("portmap: deleting the UPnP mapping: %s", exc)
                return
            self._udp.release(protocol, trio.current_time())
            self._wake.set()
            while self._udp.releasing and not self._released.is_set():
                with trio.move_on_after(0.05):
                    await self._released.wait()


def _why(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "the gateway's port is closed (ICMP port unreachable)"
    return exc.strerror or str(exc)


@asynccontextmanager
async def open_port_mapping(
    internal_port: int, *, gateway: Gateway | str | None = None,
    lifetime: int = DEFAULT_LIFETIME_S, budget: float = REQUEST_BUDGET_S,
    description: str = "punchd", protocols: tuple[Protocol, ...] = PROTOCOLS,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[PortMapping]:
    """Map UDP ``internal_port`` on the gateway by whichever protocol answers first.

    ``protocols`` limits which of "pcp", "nat-pmp" and "upnp" are tried.

    Raises :class:`~punchd.errors.PortmapError` when none maps within ``budget``.
    """
    if not 1 <= internal_port <= 0xFFFF:
        raise ValueError(f"internal port {internal_port} is not a UDP port")
    if not protocols or not set(protocols) <= set(PROTOCOLS):
        raise ValueError(f"protocols {protocols!r}: some of {PROTOCOLS}")
    if gateway is None:
        gateway = Gateway(await trio.to_thread.run_sync(find_gateway))
    elif isinstance(gateway, str):
        gateway = Gateway(gateway)
    timeout = httpx.Timeout(budget)
    # verify=False: UPnP is plain http on the LAN (https URLs are refused), and loading the
    # CA bundle for a TLS context we never use costs ~0.1 s at every start.
    async with httpx.AsyncClient(timeout=timeout, transport=http_transport, trust_env=False,
                                 follow_redirects=False, verify=False) as http:
        mapping = PortMapping(internal_port, gateway, lifetime, budget, http, description,
                              protocols)
        failure: PortmapError | None = None
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(mapping.run_until_released)
            except PortmapError as exc:  # kept for after the nursery: no ExceptionGroup
                failure = exc
            else:
                try:
                    yield mapping
                finally:
                    with trio.CancelScope(shield=True):
                        await mapping.release()
                    mapping.stop()
                    nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

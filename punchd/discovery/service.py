"""The discovery service: the one reader of the shared WireGuard port.

One receive loop sorts what arrives, a batch per wake (every datagram waiting, see
:mod:`punchd.discovery.sharedsock`): punch probes go to ``on_probe`` (the punch
sessions), STUN answers to ``on_stun`` first (the relay binds claim theirs) and then
to the classification in progress. ``netcheck`` drives one
:class:`~punchd.discovery.classify.NatClassifier` with trio's clock and the shared
socket and returns the report; the public endpoint is handed to ``on_endpoint`` as
soon as the first answer gives it, so candidates can be published before the
slower filtering tests end.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio

from punchd.errors import NetworkDown
from punchd.wire import api
from punchd.wire.probe import is_probe

from ..wire.addr import Addr
from .classify import NatClassifier
from .sharedsock import SharedPortSocket

log = logging.getLogger("punchd.discovery")
RECEIVE_BACKOFF_MIN_S = 0.05
RECEIVE_BACKOFF_MAX_S = 2.0


class Discovery:
    def __init__(self, sock: SharedPortSocket, stun_server: Addr) -> None:
        self.sock = sock
        self.stun_server = stun_server
        self._current: NatClassifier | None = None
        self._arrived = trio.Event()
        self._lock = trio.Lock()
        self.on_probe: Callable[[bytes, Addr], None] | None = None
        self.on_stun: Callable[[bytes, Addr], bool] | None = None  # True: consumed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = RECEIVE_BACKOFF_MIN_S
        try:
            while True:
                try:
                    batch = await self.sock.receive_batch()
                except NetworkDown as exc:  # e.g. ENOBUFS, a vanished link: keep listening
                    log.debug("shared port receive: %s", exc)
                    # Back off so an error that repeats does not spin the CPU.
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, RECEIVE_BACKOFF_MAX_S)
                    continue
                backoff = RECEIVE_BACKOFF_MIN_S
                for data, source in batch:
                    self._dispatch(data, source)
        finally:
            self.sock.close()

    def caught_up(self, since: float) -> bool:
        """Everything that reached the port before ``since`` has been dispatched: a
        session may judge its path by what it has (see PunchDriver)."""
        return self.sock.caught_up(since)

    def _dispatch(self, data: bytes, source: Addr) -> None:
        """Probes to the punch sessions; STUN to the classification in progress."""
        if is_probe(data):
            if self.on_probe is not None:
                self.on_probe(data, source)
            return
        if self.on_stun is not None and self.on_stun(data, source):
            return
        clf = self._current
        if clf is not None:
            clf.handle_datagram(data, source, trio.current_time())
            self._arrived.set()

    async def netcheck(self, on_endpoint: Callable[[str], None] | None = None) -> api.NatReport:
        async with self._lock:  # one classification at a time on the port
            clf = NatClassifier(self.stun_server, self.sock.port, trio.current_time())
            self._current = clf
            family = socket.AF_INET6 if ":" in self.stun_server[0] else socket.AF_INET
            # The filtering tests' port (classify.py says why not WireGuard's).
            failure: NetworkDown | None = None
            try:
                with trio.socket.socket(family, socket.SOCK_DGRAM) as aux:
                    await aux.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._receive_aux, aux, clf)
                        try:
                            await self._classify(clf, aux, on_endpoint)
                        except NetworkDown as exc:  # raised after the nursery: no group
                            failure = exc
                        nursery.cancel_scope.cancel()
            except OSError as exc:
                raise NetworkDown(f"netcheck: {exc.strerror or exc}") from exc
            finally:
                self._current = None
            if failure is not None:
                raise failure
            if clf.error:
                log.warning("netcheck via %s: %s", self.stun_server, clf.error)
            return clf.report()

    async def _classify(self, clf: NatClassifier, aux: trio.socket.SocketType,
                        on_endpoint: Callable[[str], None] | None) -> None:
        while not clf.done:
            if on_endpoint is not None and clf.m1 is not None:
                endpoint = clf.report().public_endpoint
                assert endpoint is not None
                on_endpoint(endpoint)
                on_endpoint = None
            while (out := clf.datagram_to_send(trio.current_time())) is not None:
                try:
                    if clf.via == "aux":
                        await _send_aux(aux, *out)
                    else:
                        await self.sock.send(*out)
                except NetworkDown as exc:
                    # No route or address: waiting out RFC 8489 §6.2.1's retransmits
                    # (~40 s per test) would learn nothing. End this netcheck now;
                    # its caller's re-gather loop tries again later.
                    log.info("netcheck via %s: %s", self.stun_server, exc)
                    raise
            deadline = clf.next_deadline()
            self._arrived = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else trio.current_time()):
                await self._arrived.wait()
            clf.handle_timer(trio.current_time())

    async def _receive_aux(self, aux: trio.socket.SocketType, clf: NatClassifier) -> None:
        while True:
            try:
                data, source = await aux.recvfrom(2048)
            except OSError:  # e.g. ICMP port unreachable: the test's schedule times out
                await trio.sleep(0.05)
                continue
            clf.handle_datagram(data, (source[0], source[1]), trio.current_time())
            self._arrived.set()


async def _send_aux(aux: trio.socket.SocketType, data: bytes, dest: Addr) -> None:
    try:
        await aux.sendto(data, dest)
    except OSError as exc:
        raise NetworkDown(f"{exc.strerror or exc} (to {dest[0]})") from exc

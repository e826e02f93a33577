"""NOTIFY (RFC 1996): tell the secondaries a zone changed, until each says it heard.

Theory of operation. :class:`NotifySchedule` is sans-IO. :meth:`~NotifySchedule.changed`
(zones, serial, now) queues one NOTIFY per (secondary, zone), replacing any still
unacknowledged one for an older serial (the secondary only needs the newest).
:meth:`~NotifySchedule.due` (now) returns the datagrams to send now and reschedules
each with a doubling interval; after ``ATTEMPTS`` sends it is given up (counted: the
secondary's own SOA refresh will still find the change). :meth:`~NotifySchedule.
acknowledge` takes a datagram that came back: a NOTIFY response with the ID, source
and zone of a pending one (and, with a key, a valid TSIG over our request's MAC)
ends that one's retries (RFC 1996 §4.7). Everything else is ignored.

The trio adapter (:class:`Notifier`) owns one UDP socket per address family, one
receive loop per socket feeding :meth:`acknowledge`, and one sender waiting for the
next deadline or the next change.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from dnslib import QTYPE, RR, SOA, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from punchd.errors import TsigError
from punchd.wire.addr import Addr

from . import tsig
from .zone import TTL

OPCODE_NOTIFY = 4  # RFC 1996 §3.1
# RFC 1996 §3.6 leaves the interval and count to the operator; a secondary here
# should follow within about 2 s, so the first retry comes after 1 s.
INITIAL_S = 1.0
MAX_INTERVAL_S = 8.0
ATTEMPTS = 5


@dataclass
class _Pending:
    target: Addr
    zone: str
    serial: int
    msg_id: int
    attempts: int = 0
    due: float = 0.0
    mac: bytes = b""


@dataclass(frozen=True)
class NotifyStatistics:
    sent: int
    acknowledged: int
    given_up: int
    pending: int


class NotifySchedule:
    def __init__(self, targets: Sequence[Addr], *, key: tsig.TsigKey | None = None,
                 soa: Callable[[str, int], SOA] | None = None,
                 rng: random.Random | None = None) -> None:
        """``soa(zone, serial)`` gives the SOA to put in the answer section (RFC 1996
        §3.7: a hint of the new serial); None sends the question alone."""
        self.targets = tuple(targets)
        self.key = key
        self._soa = soa
        self._rng = rng or random.Random()
        self.pending: dict[tuple[Addr, str], _Pending] = {}
        self.sent = self.acknowledged = self.given_up = 0

    def changed(self, zones: Sequence[str], serial: int, now: float) -> None:
        for target in self.targets:
            for zone in zones:
                zone = zone.lower().rstrip(".")
                # A fresh random ID per NOTIFY: an answer must match the one in flight.
                self.pending[(target, zone)] = _Pending(
                    target, zone, serial, self._rng.randrange(0x10000), due=now)

    def next_deadline(self) -> float | None:
        return min((p.due for p in self.pending.values()), default=None)

    def due(self, now: float, wall: int) -> list[tuple[Addr, bytes]]:
        """Datagrams to send now; ``wall`` is the Unix time for TSIG."""
        out = []
        for key, p in list(self.pending.items()):
            if p.due > now:
                continue
            if p.attempts >= ATTEMPTS:
                del self.pending[key]
                self.given_up += 1
                continue
            p.attempts += 1
            p.due = now + min(MAX_INTERVAL_S, INITIAL_S * 2 ** (p.attempts - 1))
            wire = self._message(p)
            if self.key is not None:
                wire, p.mac = tsig.sign(wire, self.key, wall)
            self.sent += 1
            out.append((p.target, wire))
        return out

    def _message(self, p: _Pending) -> bytes:
        msg = DNSRecord(DNSHeader(id=p.msg_id, opcode=OPCODE_NOTIFY, aa=1, rd=0),
                        q=DNSQuestion(p.zone + ".", QTYPE.SOA))
        if self._soa is not None:
            msg.add_answer(RR(DNSLabel(p.zone), QTYPE.SOA, rdata=self._soa(p.zone, p.serial),
                              ttl=TTL))
        return bytes(msg.pack())

    def acknowledge(self, data: bytes, source: Addr, wall: int) -> bool:
        """Whether ``data`` from ``source`` acknowledged a pending NOTIFY (and ended it)."""
        if len(data) < 12:
            return False
        msg_id, flags = struct.unpack_from("!HH", data, 0)
        if not flags & 0x8000 or (flags >> 11) & 0xF != OPCODE_NOTIFY:
            return False
        for key, p in self.pending.items():
            if p.target != source or p.msg_id != msg_id or p.attempts == 0:
                continue
            body = data
            if self.key is not None:
                try:
                    body = tsig.verify(data, {self.key.name: self.key}, wall,
                                       request_mac=p.mac).message
                except TsigError:
                    return False
            try:
                question = DNSRecord.parse(body).questions
            except Exception:  # dnslib raises many kinds on hostile bytes
                return False
            if len(question) != 1 or str(question[0].qname).lower().rstrip(".") != p.zone:
                return False
            del self.pending[key]
            self.acknowledged += 1
            return True
        return False

    def statistics(self) -> NotifyStatistics:
        return NotifyStatistics(self.sent, self.acknowledged, self.given_up, len(self.pending))


class Notifier:
    """The trio adapter: sockets, a receive loop per socket, a sender."""

    def __init__(self, schedule: NotifySchedule, *, source: str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``source``: the address to send from (the DNS listener's, when it is not a
        wildcard), since secondaries check it against their ``allow-notify``."""
        self.schedule = schedule
        self.source = source
        self.wall_clock = wall_clock
        self._wake = trio.Event()
        self._sockets: dict[int, trio.socket.SocketType] = {}

    def changed(self, zones: Sequence[str], serial: int) -> None:
        """From the trio thread: the zones have a new serial."""
        self.schedule.changed(zones, serial, trio.current_time())
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        families = {socket.AF_INET6 if ":" in host else socket.AF_INET
                    for host, _ in self.schedule.targets}
        try:
            for family in families:
                sock = trio.socket.socket(family, socket.SOCK_DGRAM)
                self._sockets[family] = sock
                host = "::" if family == socket.AF_INET6 else "0.0.0.0"
                if self.source is not None and (":" in self.source) == (":" in host):
                    host = self.source
                await sock.bind((host, 0))
            async with trio.open_nursery() as nursery:
                for sock in self._sockets.values():
                    nursery.start_soon(self._receive, sock)
                task_status.started()
                await self._send_loop()
        finally:
            for sock in self._sockets.values():
                sock.close()

    async def _receive(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(4096)
            except OSError:  # an ICMP unreachable from a secondary not up yet
                continue
            self.schedule.acknowledge(data, (source[0], source[1]), int(self.wall_clock()))

    async def _send_loop(self) -> None:
        while True:
            for target, wire in self.schedule.due(trio.current_time(), int(self.wall_clock())):
                family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
                try:
                    await self._sockets[family].sendto(wire, target)
                except OSError:
                    pass  # retried on schedule; given up after ATTEMPTS
            deadline = self.schedule.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()

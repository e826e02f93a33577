"""STUN responder (RFC 8489 Binding) with RFC 5780 NAT behaviour discovery.

With an alternate address configured the responder binds the four combinations of
the two IPs and two ports — (IP1,P1), (IP1,P2), (IP2,P1), (IP2,P2) — answers with
OTHER-ADDRESS and RESPONSE-ORIGIN, and honours CHANGE-REQUEST by answering from the
socket with the other IP and/or port (RFC 5780 §6). The decision is sans-IO
(:meth:`StunCore.handle`); :class:`StunResponder` is the thin trio adapter.

Never an amplifier: only Binding *requests* get an answer, and the answer carries
only the attributes above (a few dozen bytes, about the size of the request).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import trio

from punchd.errors import StunParseError
from punchd.wire import stun

Addr = tuple[str, int]


@dataclass(frozen=True)
class StunStatistics:
    requests: int
    responses: int
    malformed: int
    ignored: int


class StunCore:
    """Sans-IO: (datagram, source, local address) -> (reply, local address to send from)."""

    def __init__(self, primary: Addr, alternate: Addr | None = None) -> None:
        self.primary = primary
        self.alternate = alternate
        self.requests = self.responses = self.malformed = self.ignored = 0

    def local_addresses(self) -> list[Addr]:
        if self.alternate is None:
            return [self.primary]
        (ip1, p1), (ip2, p2) = self.primary, self.alternate
        return [(ip1, p1), (ip1, p2), (ip2, p1), (ip2, p2)]

    def handle(self, datagram: bytes, source: Addr, local: Addr) -> tuple[bytes, Addr] | None:
        try:
            msg = stun.parse(datagram)
        except StunParseError:
            self.malformed += 1
            return None
        if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
            self.ignored += 1
            return None
        self.requests += 1
        change = int(msg.attributes.get("CHANGE-REQUEST", 0))
        if change and self.alternate is None:
            # RFC 5780 §6.1: no second address, so the request cannot be honoured.
            self.responses += 1
            return stun.binding_error(msg.transaction_id, 420, "Unknown Attribute"), local
        reply_from = local
        other: Addr | None = None
        if self.alternate is not None:
            (ip1, p1), (ip2, p2) = self.primary, self.alternate
            other_ip = ip2 if local[0] == ip1 else ip1
            other_port = p2 if local[1] == p1 else p1
            other = (other_ip, other_port)
            reply_from = (other_ip if change & stun.CHANGE_IP else local[0],
                          other_port if change & stun.CHANGE_PORT else local[1])
        reply = stun.binding_success(msg.transaction_id, source, response_origin=reply_from,
                                     other_address=other)
        self.responses += 1
        return reply, reply_from

    def statistics(self) -> StunStatistics:
        return StunStatistics(self.requests, self.responses, self.malformed, self.ignored)


class StunResponder:
    def __init__(self, primary: Addr, alternate: Addr | None = None) -> None:
        self.core = StunCore(primary, alternate)
        self._sockets: dict[Addr, trio.socket.SocketType] = {}

    def statistics(self) -> StunStatistics:
        return self.core.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for local in self.core.local_addresses():
            family = trio.socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 \
                else trio.socket.AF_INET
            sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
            await sock.bind(local)
            self._sockets[local] = sock
        try:
            async with trio.open_nursery() as nursery:
                for local, sock in self._sockets.items():
                    nursery.start_soon(self._serve, local, sock)
                task_status.started()
        finally:
            for sock in self._sockets.values():
                sock.close()

    async def _serve(self, local: Addr, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(2048)
            except OSError:
                continue  # ICMP-induced errors on UDP sockets are not ours to die of
            answer = self.core.handle(data, (source[0], source[1]), local)
            if answer is None:
                continue
            reply, reply_from = answer
            try:
                await self._sockets[reply_from].sendto(reply, source[:2])
            except OSError:
                pass
